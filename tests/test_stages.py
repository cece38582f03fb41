"""The real stage commands on a tiny world: each writes what the next one reads."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_stage, tiny_cam, tiny_world
from pipeline.clip.model import load_clip
from pipeline.data.manifest import read_manifest

SMALL_CLIP = {
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 1},
}


STAGES = ["prepare_data", "prepare_clip", "train_cam", "train_clims",
          *[(stage, net) for net in ("baseline", "clims") for stage in ("make_cam", "eval_cam")],
          "make_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg", "train_seg", "eval_seg"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mlflow_uri):
    import copy

    from conftest import REPO

    raw = tiny_cam(tiny_world(yaml.safe_load((REPO / "params.yaml").read_text())))
    raw["clip"]["architecture"] = copy.deepcopy(SMALL_CLIP)
    raw["clip"]["train"].update(steps=5, batch_size=8, pool_size=16, eval_scenes=12, warmup_steps=2)
    raw["tracking"]["experiment"] = "stage-test"
    path = tmp_path_factory.mktemp("stages")
    raw["distributed"]["storage"] = str(path / "ray")
    (path / "params.yaml").write_text(yaml.safe_dump(raw))
    for stage in STAGES:
        name, *args = (stage,) if isinstance(stage, str) else stage
        result = run_stage(name, path, mlflow_uri, *args)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
    return path


def test_prepare_data_writes_manifests_that_match_the_masks(workdir):
    for split, count in (("train", 6), ("val", 3)):
        records = read_manifest(workdir / "data" / f"{split}.parquet")
        assert len(records) == count
        for r in records:
            image = np.asarray(Image.open(r.image_path))
            mask = np.asarray(Image.open(r.label_path))
            background = np.asarray(Image.open(r.background_path))
            assert image.shape == (r.height, r.width, 3) and mask.shape == background.shape == (r.height, r.width)
            assert tuple(sorted(set(np.unique(mask).tolist()) - {0})) == r.class_ids
    metrics = json.loads((workdir / "metrics" / "data.json").read_text())
    assert metrics["train_images"] == 6 and 0 < metrics["train_object_pixel_fraction"] < 0.5
    assert Image.open(workdir / "data" / "preview.png").size[0] > 0
    assert not list(workdir.glob("data/.*")), "a temporary folder was left behind"


def test_prepare_clip_writes_a_clip_later_stages_can_load(workdir):
    clip, texts = load_clip(workdir / "artifacts" / "clip")
    assert texts["class_names"] == ["boat", "train", "plane", "car", "cow", "bird"]
    assert texts["class_embeddings"].shape == (6, 32) and texts["background_embeddings"].shape == (9, 32)
    assert texts["class_prompts"][0] == "a photo of boat."
    assert clip.encode_images(torch.rand(2, 3, 64, 64)).shape == (2, 32)
    metrics = json.loads((workdir / "metrics" / "clip.json").read_text())
    for key in ("object_top1", "object_top1_masked", "background_top1", "background_top1_masked", "context_margin", "hole_margin"):
        assert key in metrics and np.isfinite(metrics[key])


def test_stage_runs_are_tracked_under_one_parent(workdir, mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("stage-test").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"prepare_data", "prepare_clip", "train_cam", "train_clims", "make_cam_baseline",
                             "make_cam_clims", "eval_cam_baseline", "eval_cam_clims", "make_ir_label", "train_irn",
                             "make_sem_seg", "eval_sem_seg", "train_seg", "eval_seg"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in children.values()}) == 1
    assert "object_top1" in children["prepare_clip"].data.metrics
    assert "train_object_pixel_fraction" in children["prepare_data"].data.metrics
    artifacts = [a.path for a in client.list_artifacts(children["prepare_data"].info.run_id)]
    assert "preview.png" in artifacts



def test_cam_stages_chain_nets_cams_and_scores(workdir):
    from pipeline.cam.infer import load_cam
    from pipeline.cam.ray_train import load_net

    baseline, meta = load_net(workdir / "artifacts" / "net_baseline")
    clims, clims_meta = load_net(workdir / "artifacts" / "net_clims")
    assert meta["kind"] == "baseline" and clims_meta["kind"] == "clims" and clims.classifier.bias is not None
    trained = json.loads((workdir / "metrics" / "train_clims.json").read_text())
    clip = json.loads((workdir / "metrics" / "clip.json").read_text())
    assert trained["tau"] == pytest.approx((clip["cos_object_vs_background_p99"] + clip["cos_context_together_mean"]) / 2)
    assert {"otm", "btm", "cbs", "reg", "loss"} <= set(trained)
    for record in read_manifest(workdir / "data" / "train.parquet"):
        cam = load_cam(workdir / "artifacts" / "cams_clims" / f"{record.image_id}.npz")
        assert cam["class_ids"].tolist() == list(record.class_ids) and cam["high_res"].shape[-2:] == (64, 64)
    for net in ("baseline", "clims"):
        scores = json.loads((workdir / "metrics" / f"cam_{net}.json").read_text())
        assert 0 <= scores["miou"] <= 100 and 0.05 <= scores["best_threshold"] <= 0.95
        assert {"context_leak", "mask_miou", "mask_miou_at_0.5", "per_class_iou"} <= set(scores)
        curve = (workdir / "plots" / f"cam_{net}_thresholds.csv").read_text().splitlines()
        assert curve[0].startswith("threshold,miou") and len(curve) == 1 + 19


def test_irn_stages_chain_ir_labels_boundary_net_and_pseudo_labels(workdir, mlflow_uri):
    from mlflow import MlflowClient

    from pipeline.io import read_label
    from pipeline.irn.net import load_boundary_net

    records = read_manifest(workdir / "data" / "train.parquet")
    for record in records:
        ir_label = read_label(workdir / "artifacts" / "ir_labels" / f"{record.image_id}.png")
        pseudo = read_label(workdir / "artifacts" / "pseudo_labels" / f"{record.image_id}.png")
        assert ir_label.shape == pseudo.shape == (record.height, record.width)
        assert set(np.unique(ir_label).tolist()) <= {0, 255, *record.class_ids}
        assert set(np.unique(pseudo).tolist()) <= {0, *record.class_ids}
    net, meta = load_boundary_net(workdir / "artifacts" / "net_irn")
    assert len(meta["history"]) == 1 and {"bg_pos", "fg_pos", "neg", "loss"} <= set(meta["history"][0])
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1, 16, 16)
    quality = json.loads((workdir / "metrics" / "ir_labels.json").read_text())
    assert 0 < quality["coverage"] <= 100 and 0 <= quality["miou"] <= 100
    scores = json.loads((workdir / "metrics" / "pseudo_labels.json").read_text())
    assert 0 <= scores["miou"] <= 100 and {"per_class_iou", "context_leak"} <= set(scores)
    per_class = (workdir / "plots" / "pseudo_labels_per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,cam,pseudo_label" and per_class[1].startswith("background,")
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("stage-test").experiment_id], "attributes.run_name = 'eval_sem_seg'")[0]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "overlays")}, "no overlays logged"


def test_segmentation_stages_train_on_pseudo_labels_and_score_val(workdir):
    from pipeline.seg.net import load_seg_net

    net, meta = load_seg_net(workdir / "artifacts" / "net_seg")
    assert len(meta["history"]) == 1 and meta["class_names"][0] == "boat"
    assert net(torch.rand(1, 3, 64, 64))["out"].shape == (1, 7, 64, 64)
    scores = json.loads((workdir / "metrics" / "segmentation.json").read_text())
    assert scores["images"] == 3 and 0 <= scores["miou"] <= 100 and "per_class_iou" in scores
    rows = (workdir / "plots" / "segmentation_confusion.csv").read_text().splitlines()
    assert rows[0].startswith("actual,background,boat") and len(rows) == 8
    pixels = sum(int(v) for row in rows[1:] for v in row.split(",")[1:])
    assert pixels == 3 * 64 * 64  # every val pixel counted once
    assert Image.open(workdir / "plots" / "segmentation_confusion.png").size[0] > 100


def test_a_missing_net_is_one_clear_error(workdir, tmp_path, mlflow_uri):
    import shutil

    shutil.copy(workdir / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(workdir / "data", tmp_path / "data")
    result = run_stage("make_cam", tmp_path, mlflow_uri, "clims")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: artifacts/net_clims/net.json: no trained CAM net here (run its training stage first)"
    assert not (tmp_path / "artifacts").exists()
    result = run_stage("make_sem_seg", tmp_path, mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: artifacts/net_irn/net.json: no trained IRN here (run train_irn first)"
    assert not (tmp_path / "artifacts").exists()
