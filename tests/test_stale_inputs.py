"""Nothing made from other inputs survives: each per-image stage's resume stamp and each Ray
Train run's name change when any input changes (the images, the nets, the CAMs, the params),
so a rerun rewrites everything instead of keeping or resuming what older inputs made."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO
from pipeline.cam import infer
from pipeline.cam.infer import make_cams
from pipeline.cam.ray_train import train_worker
from pipeline.data.manifest import write_manifest
from pipeline.io import save_label_png
from pipeline.irn import ir_label, sem_seg
from pipeline.irn.ir_label import make_ir_labels
from pipeline.irn.sem_seg import make_sem_seg
from pipeline.nets.backbone import small_resnet
from pipeline.nets.boundary import BoundaryNet, save_boundary_net
from pipeline.nets.cam_net import save_cam_net
from pipeline.params import Distributed, MakeCam, MakeIrLabel, MakeSemSeg, validate
from pipeline.train_loop import TrainJob, run_name
from tiny_scenes import SMALL, cam_net, crf_config, scene

DIST = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
MAKE_CAM = MakeCam(scales=[1.0, 0.5], batch_size=2, num_workers=0)
IR_LABEL = MakeIrLabel(cams="clims", fg_threshold=0.3, bg_threshold=0.1, batch_size=2, num_workers=0)
WALK = MakeSemSeg(radius=4, beta=10.0, exp_times=3, damp_boundary=True, bg_threshold=0.2, crf=True, batch_size=2, num_workers=0)
CRF = crf_config(iterations=3)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Three scenes, a CAM net and its CAMs, a boundary net."""
    records = []
    for i in range(3):
        label = np.zeros((32, 32), np.uint8)
        label[4 + 2 * i : 20, 6:22] = 1 + i % 2
        records.append(scene(tmp_path, f"img{i}", label, seed=i))
    save_cam_net(tmp_path / "net", cam_net(0), SMALL, ["a", "b", "c"], "clims", [])
    make_cams(records, tmp_path / "net", tmp_path / "cams", MAKE_CAM, DIST)
    save_boundary_net(tmp_path / "irn", boundary_net(), SMALL, 8, [])
    return SimpleNamespace(root=tmp_path, records=records, monkeypatch=monkeypatch)


def rewrite_image(record) -> None:
    """The image file rewritten in place (other pixels, a later modification time); the manifest
    stays as it was."""
    pixels = np.asarray(Image.open(record.image_path))
    Image.fromarray(255 - pixels).save(record.image_path)
    stat = os.stat(record.image_path)
    os.utime(record.image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def other_code(world, module) -> None:
    """As if the stage's code (or a module it imports) had changed since its files were made."""
    world.monkeypatch.setattr(module, "code_digest", lambda name: f"changed {name}")


def other_net(world) -> None:
    save_cam_net(world.root / "net", cam_net(1), SMALL, ["a", "b", "c"], "clims", [])


def other_cams(world) -> None:
    other_net(world)
    make_cams(world.records, world.root / "net", world.root / "cams", MAKE_CAM, DIST)


def boundary_net() -> BoundaryNet:
    return BoundaryNet(small_resnet(SMALL.widths, SMALL.blocks, SMALL.strides), 8)


def other_irn(world) -> None:
    net = boundary_net()
    next(net.fuse.parameters()).data += 1
    save_boundary_net(world.root / "irn", net, SMALL, 8, [])


# change -> (what changes on disk, what changes in each settings section)
CAM_CHANGES = {
    "net": (other_net, {}),
    "data": (lambda w: rewrite_image(w.records[0]), {}),
    "params": (None, {"make_cam": {"scales": [1.0]}}),
    "code": (lambda w: other_code(w, infer), {}),
}
IR_LABEL_CHANGES = {
    "cams": (other_cams, {}),
    "data": (lambda w: rewrite_image(w.records[1]), {}),
    "params": (None, {"make_ir_label": {"fg_threshold": 0.35}}),
    "crf": (None, {"crf": {"iterations": 4}}),
    "code": (lambda w: other_code(w, ir_label), {}),
}
SEM_SEG_CHANGES = {
    **IR_LABEL_CHANGES,
    "irn": (other_irn, {}),
    "params": (None, {"make_sem_seg": {"beta": 8.0}}),
    "code": (lambda w: other_code(w, sem_seg), {}),
}


def apply(change, world, **sections):
    """Make `change` (an entry of the tables above) and return the sections with its settings."""
    on_disk, settings = change
    if on_disk is not None:
        on_disk(world)
    return [cfg.model_copy(update=settings.get(name, {})) for name, cfg in sections.items()]


@pytest.mark.parametrize("change", CAM_CHANGES)
def test_make_cam_keeps_no_cam_made_from_other_inputs(world, change):
    out = world.root / "cams"  # made by the fixture
    assert make_cams(world.records, world.root / "net", out, MAKE_CAM, DIST) == 0  # unchanged: all kept
    [cfg] = apply(CAM_CHANGES[change], world, make_cam=MAKE_CAM)
    assert make_cams(world.records, world.root / "net", out, cfg, DIST) == 3


@pytest.mark.parametrize("change", IR_LABEL_CHANGES)
def test_make_ir_label_keeps_no_label_made_from_other_inputs(world, change):
    out = world.root / "ir_labels"
    assert make_ir_labels(world.records, world.root / "cams", out, IR_LABEL, CRF, DIST) == 3
    assert make_ir_labels(world.records, world.root / "cams", out, IR_LABEL, CRF, DIST) == 0
    cfg, crf = apply(IR_LABEL_CHANGES[change], world, make_ir_label=IR_LABEL, crf=CRF)
    assert make_ir_labels(world.records, world.root / "cams", out, cfg, crf, DIST) == 3


@pytest.mark.parametrize("change", SEM_SEG_CHANGES)
def test_make_sem_seg_keeps_no_label_made_from_other_inputs(world, change):
    out, cams, irn = world.root / "pseudo_labels", world.root / "cams", world.root / "irn"
    assert make_sem_seg(world.records, irn, cams, out, WALK, CRF, DIST) == 3
    assert make_sem_seg(world.records, irn, cams, out, WALK, CRF, DIST) == 0
    cfg, crf = apply(SEM_SEG_CHANGES[change], world, make_sem_seg=WALK, crf=CRF)
    assert make_sem_seg(world.records, irn, cams, out, cfg, crf, DIST) == 3


def test_a_ray_run_is_renamed_when_an_image_or_label_changes_under_the_same_manifest(world):
    params = validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    manifest, labels = world.root / "train.parquet", world.root / "labels"
    write_manifest(manifest, world.records)
    labels.mkdir()
    for record in world.records:
        save_label_png(labels / f"{record.image_id}.png", np.zeros((32, 32), np.uint8))
    job = TrainJob(params=params, section="train_irn", manifest=str(manifest), labels=str(labels))
    written = manifest.read_bytes()
    names = [run_name(train_worker, job, [manifest])]
    rewrite_image(world.records[2])
    names.append(run_name(train_worker, job, [manifest]))
    label = labels / f"{world.records[0].image_id}.png"
    save_label_png(label, np.ones((32, 32), np.uint8))
    os.utime(label, ns=(0, os.stat(label).st_mtime_ns + 10**9))
    names.append(run_name(train_worker, job, [manifest]))
    assert len(set(names)) == 3 and manifest.read_bytes() == written
