"""The segmentation net: the balanced loss by hand, multi-scale + flip inference, export."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.metrics import IGNORE
from pipeline.nets.backbone import small_resnet
from pipeline.nets.deeplab import build_seg_net, load_seg_net, save_seg_net
from pipeline.params import BackboneSection
from pipeline.seg.evaluate import multiscale_probabilities
from pipeline.seg.train import balanced_cross_entropy, seg_step

BACKBONE = BackboneSection(name="small_resnet", strides=[1, 2, 1, 1], widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1], weights=None)


def _net():
    torch.manual_seed(0)
    return build_seg_net(small_resnet(BACKBONE.widths, BACKBONE.blocks, BACKBONE.strides), 3, [1, 2], 8)


def test_balanced_cross_entropy_by_hand():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, 1] = math.log(3.0)  # pixel 1: p(class 1) = 3/4
    labels = torch.tensor([[[0, 1, 0, IGNORE]]])
    bg = -math.log(0.5)  # pixels 0 and 2: p(background) = 1/2
    fg = -math.log(0.75)
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx(bg + fg)
    # the plain loss weighs pixels, so the one foreground pixel counts a third
    plain = F.cross_entropy(logits, labels, ignore_index=IGNORE).item()
    assert plain == pytest.approx((2 * bg + fg) / 3)


def test_seg_net_trains_a_step_and_round_trips(tmp_path):
    net = _net()
    images, labels = torch.rand(2, 3, 32, 40), torch.randint(0, 3, (2, 32, 40))
    assert net(images)["out"].shape == (2, 3, 32, 40)
    terms = seg_step(net.train(), images, labels, balanced=True)
    terms["loss"].backward()
    assert all(p.grad is not None for p in net.classifier.parameters())
    save_seg_net(tmp_path / "seg", net, BACKBONE, ["a", "b"], {"rates": [1, 2], "width": 8}, [])
    loaded, meta = load_seg_net(tmp_path / "seg")
    assert meta["class_names"] == ["a", "b"]
    assert torch.allclose(loaded(images)["out"], net.eval()(images)["out"], atol=1e-6)


def test_multiscale_probabilities_average_scales_and_mirrors():
    net = _net().eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        direct = F.softmax(net(images)["out"], 1)
        mirrored = F.softmax(net(images.flip(-1))["out"], 1).flip(-1)
    single = multiscale_probabilities(net, images, [1.0])
    assert torch.allclose(single, (direct + mirrored) / 2, atol=1e-6)
    assert torch.allclose(single.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    twice = multiscale_probabilities(net, images, [1.0, 1.0])
    assert torch.allclose(twice, single, atol=1e-6)  # a repeated scale changes nothing
    assert multiscale_probabilities(net, images, [1.0, 0.5]).shape == (2, 3, 32, 32)


def test_a_split_is_scored_from_a_stream_of_predictions(tmp_path):
    """eval_seg's totals from predictions one image at a time: the confusion by hand, and only the
    first `keep` label maps are held (for overlays)."""
    import numpy as np

    from pipeline.data.manifest import ImageRecord
    from pipeline.io import save_label_png
    from pipeline.seg.evaluate import score_predictions

    truth = np.array([[0, 1], [1, 2]], np.uint8)
    records = []
    for i in range(3):
        save_label_png(tmp_path / f"{i}.png", truth)
        records.append(ImageRecord(f"img{i}", tmp_path / f"{i}.png", tmp_path / f"{i}.png", (1, 2), 2, 2))
    predicted = np.array([[0, 1], [2, 2]], np.uint8)  # one class-1 pixel taken for class 2
    stream = ((record, predicted) for record in records)
    totals, shown = score_predictions(stream, 2, None, keep=2)
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]]) * 3
    np.testing.assert_array_equal(totals.confusion[0], expected)
    assert [record.image_id for record, _ in shown] == ["img0", "img1"]
