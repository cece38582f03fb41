"""The real datasets' path through every stage, driven by the real `dvc exp run` on a miniature VOC
tree in the tiny project (tests/tiny_project.py): the files fit together for VOC's 21 classes and
its image sizes (by default with the plumbing check's tiny nets; `-m slow`: the camera-ready
losses, and the voc12 group's real architectures)."""
import csv
import io
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO
from miniature_data import voc_tree
from pipeline.data.manifest import read_manifest
from tiny_project import run as _run


def test_plumbing_check_on_a_miniature_voc_tree(project, tmp_path):
    """The whole pipeline on a miniature VOCdevkit through the real `dvc exp run`, with a randomly
    initialised tiny CLIP (check=plumbing): the files fit together; the figures mean nothing."""
    root, env = project
    voc, classes = voc_tree(tmp_path)
    _run(["dvc", "exp", "run", "-n", "voc-plumbing", "-S", "dataset=voc12", "-S", f"dataset.root={voc}",
          "-S", "check=plumbing"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert (params["dataset"]["name"], params["clip"]["source"], params["clip"]["train"]["steps"]) == ("voc12", "tiny", 0)
    assert (params["distributed"]["launcher"], params["distributed"]["precision"]) == ("local", "bf16")  # no Ray; bf16 on CPU
    assert (root / "ray_results").is_dir() and any((root / "ray_results").glob("train_seg-*/state.pt"))
    metrics = lambda name: json.loads((root / "metrics" / f"{name}.json").read_text())  # noqa: E731
    assert {k: metrics("data")[f"{k}_images"] for k in ("train", "train_eval", "val")} == {"train": 12, "train_eval": 4, "val": 2}
    assert {r.image_id: list(r.class_ids) for r in read_manifest(root / "data/train.parquet")} == \
        {i: sorted(set(c)) for i, c in classes.items()}
    assert metrics("clip")["eval_images"] == 4
    scored = set().union(*(classes[i] for i in list(classes)[:4]))
    for name in ("cam_baseline", "cam_clims", "pseudo_labels"):
        figures = metrics(name)
        assert figures["images"] == 4 and 0 <= figures["miou"] <= 100 and "context_leak" not in figures
        names = ["background", *(c["name"] for c in params["dataset"]["classes"])]
        assert set(figures["per_class_iou"]) == set(names)  # VOC's 21, scored where the 4 images show them:
        assert {n for n, v in figures["per_class_iou"].items() if v == v} == {names[0]} | {names[c] for c in scored}
    assert metrics("ir_labels")["images"] == 4
    assert metrics("segmentation")["images"] == 2
    assert len(list((root / "artifacts/pseudo_labels").glob("*.png"))) == 12  # every training image
    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env))))
    assert any(row["Experiment"] == "voc-plumbing" and row["dataset.name"] == "voc12" for row in rows)


@pytest.mark.slow
def test_camera_ready_plumbing_on_a_miniature_voc_tree(project, tmp_path):
    """The camera-ready variant with its VOC words through the whole pipeline (`-m slow`: another
    3-4 minutes; tests/test_cam_losses.py checks the same wiring in-process by default)."""
    root, env = project
    voc, _ = voc_tree(tmp_path)
    _run(["dvc", "exp", "run", "-n", "voc-camera-ready", "-S", "dataset=voc12", "-S", f"dataset.root={voc}",
          "-S", "check=plumbing", "-S", "clims_loss=camera_ready"], root, env)
    texts = torch.load(root / "artifacts/clip/text_embeddings.pt", weights_only=True)
    assert texts["class_prompts"][10] == "a photo of diningtable" and texts["class_prompts"][14] == "a photo of person"
    assert texts["background_prompts"][4] == "a photo of building"
    trained = json.loads((root / "metrics/train_clims.json").read_text())
    assert trained["epoch"] == 1 and all(math.isfinite(trained[term]) for term in ("otm", "btm", "cbs", "reg", "loss"))
    assert json.loads((root / "metrics/segmentation.json").read_text())["images"] == 2


@pytest.mark.slow
def test_real_architectures_on_a_voc_sized_tree(project, tmp_path):
    """The voc12 group's nets (ResNet-50, ViT-B/32; random weights from benchmarks/stand_ins.py)
    through every stage on 44 synthetic images of VOC's sizes, at the group's crops and batch
    sizes, one epoch each, one CAM scale (`-m slow`: about six and a half minutes on 2 CPU cores)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from stand_ins import overrides, write_voc_tree, write_weights

    root, env = project
    settings = overrides(write_weights(tmp_path, ["ViT-B-32-quickgelu"]), write_voc_tree(tmp_path, 44))
    settings += ["distributed.use_gpu=false", "distributed.launcher=local", "distributed.precision=fp32",
                 "distributed.activation_checkpointing=true", "distributed.cpus_per_worker=2",  # under 8 GiB
                 "make_cam.num_workers=0", "make_cam.scales=[1.0]", "eval_seg.scales=[1.0]",
                 *(f"{s}.epochs=1" for s in ("train_cam", "train_clims", "train_irn", "train_seg")),
                 *(f"{s}.loader_workers=1" for s in ("train_cam", "train_clims", "train_irn", "train_seg"))]
    _run(["dvc", "exp", "run", "-n", "voc-real-size", *(a for setting in settings for a in ("-S", setting))], root, env)
    metrics = lambda name: json.loads((root / "metrics" / f"{name}.json").read_text())  # noqa: E731
    assert {k: metrics("data")[f"{k}_images"] for k in ("train", "train_eval", "val")} == {"train": 33, "train_eval": 11, "val": 11}
    assert metrics("train_cam")["steps"] == 2 and metrics("train_irn")["steps"] == 1  # 33 images, batches of 16 and 32
    assert metrics("pseudo_labels")["images"] == 11 and metrics("segmentation")["images"] == 11
    label = np.asarray(Image.open(next((root / "artifacts/pseudo_labels").glob("*.png"))))
    assert label.shape in ((333, 500), (375, 500), (400, 500), (500, 500), (500, 333), (500, 375), (500, 400))


def test_real_scale_extrapolates_with_each_dataset_groups_own_epochs():
    """benchmarks/real_scale.py times two epochs; its VOC and COCO hours take each group's epochs
    (DeepLab: 57 on VOC's 10582 images, 8 on COCO's 82783, batches of 20) and make_cam's two nets."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_scale import extrapolate

    wall = extrapolate({"train_seg": {"seconds_per_step": 3.6}, "make_cam": {"seconds_per_image": 0.36},
                        "eval_seg": {"seconds_per_image": 9.0, "steady_seconds_per_image": 0.9}})  # the steady pace counts
    assert wall["voc12"]["hours"]["train_seg"] == pytest.approx(57 * 529 * 3.6 / 3600)
    assert wall["coco14"]["hours"]["train_seg"] == pytest.approx(8 * 4139 * 3.6 / 3600)
    assert wall["voc12"]["hours"]["make_cam"] == pytest.approx(2 * 10582 * 0.36 / 3600)
    assert wall["voc12"]["hours"]["eval_seg"] == pytest.approx(1449 * 0.9 / 3600)
    assert wall["voc12"]["total_hours"] == pytest.approx((57 * 529 * 3.6 + 2 * 10582 * 0.36 + 1449 * 0.9) / 3600)


def test_real_scale_repeats_a_per_image_stage_over_its_images_with_its_output_removed(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_scale import timed_passes

    out, passes = tmp_path / "cams", []

    def one_pass() -> int:  # a stage that resumes: images already written are skipped
        out.mkdir(exist_ok=True)
        todo = [i for i in range(5) if not (out / f"{i}.npz").exists()]
        for i in todo:
            (out / f"{i}.npz").touch()
        passes.append(len(todo))
        return len(todo)

    assert "steady_seconds_per_image" not in timed_passes(one_pass, out, 1, 0.0) and passes == [5]
    shutil.rmtree(out)
    figures = timed_passes(one_pass, out, 3, 0.0)
    assert passes == [5, 5, 5, 5] and figures["images"] == 5 and figures["steady_seconds_per_image"] > 0
    assert len(list(out.iterdir())) == 5  # the last pass's output stays for the next stage


def test_real_scale_profiles_a_pass_in_a_folder_of_its_own_and_ranks_its_ops(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_scale import profiled_pass

    aside, written = tmp_path / "profiled", []

    def one_pass() -> int:  # a stage with one heavy op, writing its files
        aside.mkdir()
        for i in range(3):
            torch.linalg.inv(torch.eye(64) * 2)
            (aside / f"{i}.png").touch()
        written.append(len(list(aside.iterdir())))
        return 3

    aside.mkdir()
    (aside / "stale.png").touch()  # left by an earlier run: removed first
    figures = profiled_pass(one_pass, aside, top=50)
    assert written == [3] and not aside.exists()  # the profiled output is removed after too
    assert figures["images"] == 3 and figures["seconds_per_image"] > 0
    ops = dict(figures["top_host_ops"])
    assert any(name.startswith("aten::linalg_inv") for name in ops) and all(seconds >= 0 for seconds in ops.values())
    assert ("gpu_busy_share" in figures) == torch.cuda.is_available()
