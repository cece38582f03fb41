"""CAM networks, multi-scale inference, CAM files and the threshold-sweep evaluation."""
import numpy as np
import pytest
import torch

from pipeline.cam.evaluate import cam_predictions
from pipeline.cam.infer import make_cams, multiscale_maps, normalise, select_classes
from pipeline.data.cam_files import cam_path, load_cam
from pipeline.errors import UserError
from pipeline.metrics import confusion, miou
from pipeline.nets.cam_net import build_cam_net, save_cam_net
from pipeline.params import BackboneSection, Distributed, MakeCam
from pipeline.scoring import ScoreTotals, predict, summarise, threshold_totals, thresholds
from tiny_scenes import SMALL, cam_net, scene


def test_output_strides():
    assert cam_net()(torch.rand(1, 3, 64, 64)).shape == (1, 3, 16, 16)  # small_resnet: stride 4
    r50 = BackboneSection(name="resnet50", strides=[2, 2, 2, 1], widths=None, blocks=None, weights=None)
    assert build_cam_net(r50, 20)(torch.rand(1, 3, 128, 96)).shape == (1, 20, 8, 6)  # the reference's stride 16


def test_missing_backbone_weights_is_one_clear_error(tmp_path):
    cfg = BackboneSection(name="resnet18", strides=[2, 2, 2, 1], widths=None, blocks=None, weights=str(tmp_path / "r18.pth"))
    with pytest.raises(UserError, match="r18.pth: backbone weights file not found"):
        build_cam_net(cfg, 3)


def test_wrong_backbone_weights_are_one_clear_error(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    for name in ("r18.pth", "notes.pth"):
        cfg = BackboneSection(name="resnet50", strides=[2, 2, 2, 1], widths=None, blocks=None, weights=str(tmp_path / name))
        with pytest.raises(UserError) as error:
            build_cam_net(cfg, 3)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name}: not a resnet50 state dict (backbone.weights: a torchvision resnet50 state dict; ")
        assert "\n" not in message


def test_single_scale_maps_are_the_relu_of_the_logits_and_their_mirror():
    net, images = cam_net(), torch.rand(2, 3, 64, 64)
    maps = multiscale_maps(net, images, [1.0])
    with torch.no_grad():
        direct, mirrored = net(images), net(images.flip(-1)).flip(-1)
    expected_cam = torch.relu(direct) + torch.relu(mirrored)  # already at stride 4
    torch.testing.assert_close(maps["cam"], expected_cam)
    up = lambda x: torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps["mask"], (torch.sigmoid(up(direct)) + torch.sigmoid(up(mirrored))) / 2)


def test_full_resolution_maps_keep_each_cell_in_place_as_the_reference():
    """An image of 58 x 50 at stride 4 gives a 15 x 13 map: the reference resizes it to 60 x 52
    (4 pixels a cell, as the net saw them) and crops, rather than stretching it over 58 x 50."""
    net, images = cam_net(), torch.rand(1, 3, 58, 50)
    maps = multiscale_maps(net, images, [1.0])
    with torch.no_grad():
        direct, mirrored = torch.relu(net(images)), torch.relu(net(images.flip(-1)).flip(-1))
    assert direct.shape[-2:] == (15, 13)
    up = lambda x, size: torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(maps["high_res"], (up(direct, (60, 52)) + up(mirrored, (60, 52)))[..., :58, :50])
    stretched = up(direct, (58, 50)) + up(mirrored, (58, 50))
    assert (maps["high_res"] - stretched).abs().max() > 1e-3


def test_repeating_a_scale_changes_nothing_after_normalisation():
    net, images = cam_net(), torch.rand(1, 3, 60, 52)
    once, twice = multiscale_maps(net, images, [1.0]), multiscale_maps(net, images, [1.0, 1.0])
    for key in ("cam", "high_res"):
        torch.testing.assert_close(normalise(twice[key]), normalise(once[key]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(twice["mask"], once["mask"])
    assert once["cam"].shape[-2:] == (15, 13) and once["high_res"].shape[-2:] == (60, 52)  # ceil(H/4)


def test_multi_scale_maps_are_normalised_per_class_and_keep_the_image_classes():
    maps = multiscale_maps(cam_net(), torch.rand(1, 3, 64, 64), [1.0, 0.5, 1.5])
    arrays = select_classes({k: v[0] for k, v in maps.items()}, (1, 3))
    assert arrays["class_ids"].tolist() == [1, 3] and arrays["cam"].shape == (2, 16, 16)
    peaks = arrays["high_res"].reshape(2, -1).max(1).astype(np.float32)
    assert np.all((peaks > 0.99) & (peaks <= 1.0)) or np.all(peaks == 0)


def test_select_classes_keeps_the_image_classes_each_divided_by_its_peak_in_float16():
    values = torch.tensor([[[1.0, 2.0], [0.0, 4.0]], [[9.0, 9.0], [9.0, 9.0]], [[0.5, 0.25], [0.0, 0.0]]])
    maps = {"cam": values, "high_res": 2 * values, "mask": values / 10}
    arrays = select_classes(maps, (1, 3))  # class 2 (the 9s) is not in the image
    assert arrays["class_ids"].tolist() == [1, 3] and all(arrays[k].dtype == np.float16 for k in ("cam", "high_res", "mask"))
    expected = np.array([[[0.25, 0.5], [0.0, 1.0]], [[1.0, 0.5], [0.0, 0.0]]]) * (1 - 1e-5 / np.array([4.0, 0.5]))[:, None, None]
    np.testing.assert_array_equal(arrays["cam"], expected.astype(np.float16))
    np.testing.assert_array_equal(arrays["high_res"], expected.astype(np.float16))  # the scale divides out
    np.testing.assert_array_equal(arrays["mask"], np.array([[[0.1, 0.2], [0.0, 0.4]], [[0.05, 0.025], [0.0, 0.0]]], np.float16))


def test_make_cams_writes_every_image_then_skips_them_and_restarts_for_another_net(tmp_path):
    label = np.zeros((32, 32), np.uint8)
    label[4:12, 4:12] = 1
    records = [scene(tmp_path, f"img{i}", label) for i in range(3)]
    net_dir, out = tmp_path / "net", tmp_path / "cams"
    save_cam_net(net_dir, cam_net(), SMALL, ["a", "b", "c"], "baseline", [])
    cfg = MakeCam(scales=[1.0, 0.5], batch_size=2, num_workers=0)
    dist = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
    assert make_cams(records, net_dir, out, cfg, dist) == 3
    data = load_cam(cam_path(out, "img0"))
    assert data["class_ids"].tolist() == [1] and data["cam"].shape == (1, 8, 8) and data["high_res"].dtype == np.float16
    cam_path(out, "img1").unlink()  # as if the run had been killed before this image
    assert make_cams(records, net_dir, out, cfg, dist) == 1
    save_cam_net(net_dir, cam_net(seed=1), SMALL, ["a", "b", "c"], "baseline", [])  # another net: stale CAMs go
    assert make_cams(records, net_dir, out, cfg, dist) == 3
    assert not list(out.glob(".*")), "a temporary file was left behind"


def test_predict_and_miou_by_hand():
    scores = np.array([[[0.9, 0.2], [0.4, 0.0]], [[0.1, 0.6], [0.3, 0.0]]], np.float32)
    pred = predict(scores, np.array([2, 5]), np.array([0.3, 0.5]))
    assert pred.tolist() == [[[2, 5], [2, 0]], [[2, 5], [0, 0]]]
    gt = np.array([[2, 5], [255, 0]])
    conf = confusion(gt, pred[1], 6)
    # classes present: 0 (1 px right), 2 (1 px right), 5 (1 px right); the 255 pixel is ignored
    assert conf.sum() == 3 and miou(conf) == pytest.approx(100.0)
    conf = confusion(gt, pred[0], 6)  # bottom-left is 255: ignored, so still perfect
    assert miou(conf) == pytest.approx(100.0)
    conf = confusion(np.array([[2, 2], [0, 0]]), np.array([[2, 0], [0, 0]]), 3)
    assert miou(conf) == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)  # bg: 2 of 3, class 2: 1 of 2


def test_sweep_finds_the_best_threshold_and_the_context_leak(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[2:4, 2:4] = 1
    ground = np.zeros((8, 8), np.uint8)
    ground[4:8] = 3  # the class's context: the lower half (16 free pixels)
    record = scene(tmp_path, "s", label, ground)
    cam = np.zeros((1, 8, 8), np.float16)
    cam[0, 2:4, 2:4] = 1.0
    cam[0, 4:6] = 0.4  # half the context at 0.4: leaks below threshold 0.4
    from pipeline.data.cam_files import save_cam

    save_cam(cam_path(tmp_path / "cams", "s"), {"class_ids": np.array([1], np.int16), "high_res": cam, "mask": cam, "cam": cam})
    ts = thresholds(0.05, 0.95, 0.05)
    totals = threshold_totals([record], cam_predictions(tmp_path / "cams", "high_res", ts), len(ts), 2, context_ids=[3, 0])
    metrics, rows = summarise(totals, ts, ["a", "b"])
    assert metrics["miou"] == pytest.approx(100.0) and metrics["best_threshold"] >= 0.4
    assert metrics["context_leak"] == 0
    low = rows[0]  # threshold 0.05: the 16 pixels at 0.4 are marked as the class
    assert low["context_leak"] == pytest.approx(100 * 16 / 32)
    assert low["miou"] == pytest.approx(100 * (44 / 60 + 4 / 20) / 2)
    # Per class, at the best threshold and at 0.05 alone; class b, with no context pixel, has no figure.
    assert metrics["per_class_context_leak"] == {"a": 0.0}
    at_low, _ = summarise(ScoreTotals(totals.confusion[:1], totals.leaked[:1], totals.context), ts[:1], ["a", "b"])
    assert at_low["per_class_context_leak"] == {"a": pytest.approx(50.0)}


def _four_scenes(folder, seed: int) -> list:
    """Four 32 x 40 scenes, each with one 10 x 12 object of class 1, 2 or 3 somewhere."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(4):
        label = np.zeros((32, 40), np.uint8)
        label[rng.integers(0, 16):, rng.integers(0, 20):][:10, :12] = 1 + i % 3
        records.append(scene(folder, f"img{i}", label))
    return records


def test_scoring_a_net_in_memory_equals_make_cam_then_the_sweep(tmp_path):
    """A sweep trial's held-out score (no files) is what make_cam + the threshold sweep give."""
    from types import SimpleNamespace

    from pipeline.cam.held_out import held_out_scorer, score_net
    records = _four_scenes(tmp_path, seed=1)
    net = cam_net()
    save_cam_net(tmp_path / "net", net, SMALL, ["a", "b", "c"], "baseline", [])
    cfg = MakeCam(scales=[1.0, 0.5], batch_size=3, num_workers=0)
    dist = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
    make_cams(records, tmp_path / "net", tmp_path / "cams", cfg, dist)
    ts = thresholds(0.05, 0.95, 0.05)
    from_files = threshold_totals(records, cam_predictions(tmp_path / "cams", "high_res", ts), len(ts), 3)
    net.train()
    in_memory, cams = score_net(net, records, SimpleNamespace(name="voc12", class_names=["a", "b", "c"]), [1.0, 0.5], ts,
                                batch_size=3, keep=2)
    assert net.training, "the net goes back to training mode"
    np.testing.assert_array_equal(in_memory.confusion, from_files.confusion)
    assert sorted(cams) == [r.image_id for r in records[:2]]  # only the overlays' maps are kept

    dataset = SimpleNamespace(name="voc12", class_names=["a", "b", "c"])
    figures = held_out_scorer(records, dataset, [1.0, 0.5], ts, overlays=2)(net, tmp_path / "checkpoint")
    expected, _ = summarise(from_files, ts, ["a", "b", "c"], "cam_")
    assert figures["cam_miou"] == pytest.approx(expected["cam_miou"])
    assert {k for k, v in expected.items() if isinstance(v, dict)} and all(isinstance(v, float) for v in figures.values())
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "overlays").iterdir()) == ["img0.png", "img1.png"]


def test_cams_are_also_scored_at_the_papers_fixed_threshold(tmp_path):
    """eval_cam reports the best threshold's mIoU and, beside it, the mIoU at a fixed background
    threshold (0.15 in the papers): the curve's value there."""
    from types import SimpleNamespace

    from pipeline.cam.evaluate import evaluate_cams
    from pipeline.params import EvalCam

    records = _four_scenes(tmp_path, seed=2)
    save_cam_net(tmp_path / "net", cam_net(), SMALL, ["a", "b", "c"], "baseline", [])
    dist = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
    make_cams(records, tmp_path / "net", tmp_path / "cams", MakeCam(scales=[1.0], batch_size=4, num_workers=0), dist)
    dataset = SimpleNamespace(name="voc12", class_names=["a", "b", "c"])
    sweep = {"start": 0.05, "stop": 0.95, "step": 0.05}
    cfg = EvalCam(thresholds=sweep, fixed_threshold=0.15, overlays=0)
    metrics, curve = evaluate_cams(records, tmp_path / "cams", dataset, cfg)
    at = {round(row["threshold"], 2): row["miou"] for row in curve}
    assert metrics["fixed_threshold"] == 0.15 and metrics["miou_at_fixed_threshold"] == at[0.15]
    assert metrics["miou"] == max(at.values()) and at[0.15] != at[0.5]
    with pytest.raises(ValueError, match="fixed_threshold: 0.17 is not one of the swept thresholds"):
        EvalCam(thresholds=sweep, fixed_threshold=0.17, overlays=0)


def test_cams_over_ray_tasks_equal_the_ones_made_in_process(tmp_path, ray_session):
    """make_cam's images split over two Ray tasks give the CAM files one in-process pass gives."""
    records = _four_scenes(tmp_path, seed=3)
    save_cam_net(tmp_path / "net", cam_net(), SMALL, ["a", "b", "c"], "baseline", [])
    dist = Distributed(num_workers=1, cpus_per_worker=1, use_gpu=False, max_failures=0, storage="unused")
    for workers in (0, 2):
        cfg = MakeCam(scales=[1.0, 0.5], batch_size=3, num_workers=workers)
        assert make_cams(records, tmp_path / "net", tmp_path / f"cams{workers}", cfg, dist) == len(records)
    for record in records:
        here, there = (load_cam(cam_path(tmp_path / f"cams{w}", record.image_id)) for w in (0, 2))
        assert sorted(here) == sorted(there)
        for key in here:
            np.testing.assert_allclose(there[key], here[key], rtol=0, atol=1e-6, err_msg=f"{record.image_id}: {key}")
