"""IRN refinement: the CRF, IR labels, pair labels and the affinity loss, the boundary net."""
import math

import numpy as np

import pytest
import torch

from pipeline.irn.affinity import affinity_loss, forward_offsets, pair_labels, path_affinities
from pipeline.irn.ir_label import ir_labels
from pipeline.metrics import IGNORE
from pipeline.ops.crf import crf_labels, pairwise_kernel
from tiny_scenes import crf_config


def _two_region_image(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured 48x48 image: a disc of one colour on a background of another, and its mask."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    disc = ((ys - 22) ** 2 + (xs - 26) ** 2 < 13**2).long()
    colour = torch.where(disc.bool()[None], torch.tensor([200.0, 60, 40])[:, None, None], torch.tensor([40.0, 110, 190])[:, None, None])
    return (colour + 3 * torch.randn(3, 48, 48, generator=gen)).clamp(0, 255), disc


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a == 1) & (b == 1)).sum() / ((a == 1) | (b == 1)).sum())


@pytest.mark.parametrize("kernel", ["lattice", "window"])
def test_crf_pulls_a_noisy_mask_onto_the_object_edges(kernel):
    image, truth = _two_region_image()
    gen = torch.Generator().manual_seed(1)
    noisy = truth.clone()
    noisy[:, 30:] = torch.roll(truth, 3, dims=1)[:, 30:]  # the right edge drawn 3 pixels too far out
    flips = torch.rand(48, 48, generator=gen) < 0.15
    noisy[flips] = 1 - noisy[flips]  # and 15 % of the pixels wrong
    cfg = crf_config(kernel=kernel)
    refined = crf_labels(pairwise_kernel(image[None], cfg), [noisy[None]], 2, cfg)[0][0]
    assert _iou(noisy, truth) < 0.75
    assert _iou(refined, truth) > 0.95
    # without the bilateral (colour) term, the edge cannot be found
    blind = crf_config(kernel=kernel, bilateral_compat=0.0)
    assert _iou(crf_labels(pairwise_kernel(image[None], blind), [noisy[None]], 2, blind)[0][0], truth) < _iou(refined, truth)


def test_crf_kernel_is_symmetric_normalised_and_local():
    image, _ = _two_region_image()
    cfg = crf_config(window=2, gaussian_compat=1.0, bilateral_compat=0.0)  # the Gaussian alone
    kernel = pairwise_kernel(image[None], cfg).weights[0]  # (25, H, W)
    centre = kernel[:, 20, 20]
    raw = torch.tensor([math.exp(-(dy * dy + dx * dx) / 18) for dy in range(-2, 3) for dx in range(-2, 3)])
    expected = raw / raw.sum()  # inside the image every pixel has the same normaliser
    expected[12] = 0  # no message to itself
    assert torch.allclose(centre, expected, atol=1e-6)
    # k(i, i + d) = k(i + d, i): the weight (0, 0) -> (1, 2) equals (1, 2) -> (0, 0) at the corner
    assert kernel[(1 + 2) * 5 + 2 + 2, 0, 0] == pytest.approx(kernel[(-1 + 2) * 5 - 2 + 2, 1, 2].item())
    assert kernel[:, 0, 0].reshape(5, 5)[:2].sum() == 0  # nothing from outside the image


def test_ir_label_keeps_confident_parts_and_ignores_the_disagreement():
    image, truth = _two_region_image()
    cam = torch.zeros(1, 1, 48, 48)
    cam[0, 0][truth.bool()] = 0.9  # strong on the object
    cam[0, 0, :, :8] = 0.2  # faint on a strip of background: object for bg 0.10, not for fg 0.30
    cfg = crf_config(bilateral_compat=0.0, gaussian_compat=0.0)  # no smoothing: the thresholds alone
    label = ir_labels(image[None], cam, 0.30, 0.10, cfg)[0]
    assert torch.equal(label[truth.bool()], torch.ones(int(truth.sum()), dtype=label.dtype))
    assert (label[:, :8][~truth[:, :8].bool()] == IGNORE).all()
    assert (label[:, 8:][~truth[:, 8:].bool()] == 0).all()


def test_pair_labels_and_affinity_loss_on_a_hand_built_case():
    labels = torch.tensor([[0, 0, 1], [0, IGNORE, 1]])
    pairs = pair_labels(labels, [(0, 1), (1, 0)])
    right, down = 0, 1
    # (0,0)-(0,1): background pair; (0,1)-(0,2): 0 vs 1, negative; (1,0)-(1,1): touches IGNORE
    assert pairs["bg_pos"][right].tolist() == [[True, False, False], [False, False, False]]
    assert pairs["neg"][right].tolist() == [[False, True, False], [False, False, False]]
    assert pairs["fg_pos"][down].tolist() == [[False, False, True], [False, False, False]]  # (0,2)-(1,2): class 1 twice
    assert not pairs["bg_pos"][down][0, 1] and not pairs["neg"][down][0, 1]  # (0,1)-(1,1) is IGNORE
    assert pairs["bg_pos"][down][0, 0]

    affinity = torch.full((2, 2, 3), 0.5)
    affinity[right, 0, 0] = 0.8  # the bg pair
    affinity[right, 0, 1] = 0.3  # the only negative pair
    affinity[down, 0, 2] = 0.9  # the fg pair
    terms = affinity_loss(affinity, pairs, eps=0.0)
    bg = (-math.log(0.8) + -math.log(0.5)) / 2  # (0,0)-(0,1) and (0,0)-(1,0)
    fg, neg = -math.log(0.9), -math.log(1 - 0.3)
    assert terms["bg_pos"].item() == pytest.approx(bg)
    assert terms["fg_pos"].item() == pytest.approx(fg)
    assert terms["neg"].item() == pytest.approx(neg)
    assert terms["loss"].item() == pytest.approx(((bg + fg) / 2 + neg) / 2)


def test_reference_training_pairs_start_only_where_the_whole_neighbourhood_is_inside():
    """IRN trains on sources in rows [0, H - m) and columns [m, W - m), m = radius - 1."""
    labels = torch.zeros(1, 6, 7, dtype=torch.long)
    offsets = forward_offsets(3)  # reach 2 down and 2 to either side
    every = pair_labels(labels, offsets)["bg_pos"].any(0)[0]
    window = pair_labels(labels, offsets, margin=2)["bg_pos"]
    assert every.sum() == 6 * 7 - 1 and not every[5, 6]  # without a margin: any source with a neighbour inside
    sources = window.any(0)[0]
    assert sources.nonzero().tolist() == [[y, x] for y in range(4) for x in range(2, 5)]
    assert window.all(0)[0].sum() == 12  # and from each of them every pair counts


def test_the_affinity_loss_teaches_a_boundary_between_different_labels():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[:, :, 3:] = 1
    boundary = torch.full((1, 6, 6), 0.5, requires_grad=True)
    offsets = forward_offsets(3)
    loss = affinity_loss(path_affinities(boundary, offsets), pair_labels(labels, offsets))["loss"]
    loss.backward()
    grad = boundary.grad[0]
    assert (grad[:, 2:4] < 0).all(), "the loss should raise the boundary where the labels change"
    assert (grad[:, [0, 5]] > 0).all(), "and lower it inside the regions"
    assert len(offsets) == len(set(offsets)) and all((-dy, -dx) not in offsets for dy, dx in offsets)


def test_boundary_net_gives_a_stride4_map_from_a_frozen_backbone(tmp_path):
    from pipeline.nets.backbone import small_resnet
    from pipeline.nets.boundary import BoundaryNet, boundary_map, load_boundary_net, save_boundary_net
    from pipeline.params import BackboneSection

    cfg = BackboneSection(name="small_resnet", strides=[1, 2, 1, 1], widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1], weights=None)
    torch.manual_seed(0)
    net = BoundaryNet(small_resnet(cfg.widths, cfg.blocks, cfg.strides), side_channels=8)
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    net.train()
    net(torch.rand(2, 3, 40, 52)).mean().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items()), "backbone or BN statistics moved"
    assert net(torch.rand(1, 3, 40, 52)).shape == (1, 1, 10, 13)
    save_boundary_net(tmp_path / "irn", net, cfg, 8, [])
    loaded, _ = load_boundary_net(tmp_path / "irn")
    image = torch.rand(1, 3, 40, 52)
    assert torch.allclose(boundary_map(loaded, image), boundary_map(net.eval(), image))
    mirrored = boundary_map(net, image.flip(-1))
    assert torch.allclose(mirrored, boundary_map(net, image).flip(-1), atol=1e-6)  # image + flip is flip-symmetric


def test_irn_training_can_rescale_each_image_by_its_own_size():
    """IRN rescales a training image by 0.5-1.5 of its own size; with scale_range (0.5, 0.5) a
    40 x 60 image and its label become 20 x 30 inside the crop, the rest IGNORE."""
    from pipeline.data.images import augment

    image, label = torch.rand(3, 40, 60), torch.ones(40, 60, dtype=torch.long)
    out, out_label = augment(image, 64, (500, 500), label, scale_range=(0.5, 0.5))
    assert out.shape == (3, 64, 64) and (out_label == 1).sum() == 20 * 30 and (out_label == IGNORE).sum() == 64 * 64 - 600
    _, by_long_side = augment(image, 64, (30, 30), label)  # the long side to 30: 20 x 30 too
    assert (by_long_side == 1).sum() == 600
    torch.manual_seed(0)
    sizes = {int((augment(image, 128, (1, 1), label, scale_range=(0.5, 1.5))[1] == 1).sum()) for _ in range(20)}
    assert len(sizes) > 10 and min(sizes) >= 20 * 30 and max(sizes) <= 60 * 90


def test_a_crop_outside_the_image_is_black_or_the_references_mean_colour():
    """The reference pads a crop with 0 after ImageNet normalisation: ImageNet's mean colour, which
    the nets (normalising themselves) then see as 0; black is the synthetic default's padding."""
    from pipeline.data.images import augment
    from pipeline.nets.backbone import ImageNetNormalise

    image = torch.full((3, 10, 10), 0.9)
    black, mean = (torch.manual_seed(0) and augment(image, 16, (10, 10), fill=fill) for fill in ("black", "mean"))  # the same crop
    outside = (black == 0).all(0)
    assert outside.sum() == 16 * 16 - 100 and (black[:, ~outside] == 0.9).all()
    torch.testing.assert_close(ImageNetNormalise()(mean[None])[0][:, outside], torch.zeros(3, int(outside.sum())))
    _, label = augment(image, 16, (10, 10), torch.ones(10, 10, dtype=torch.long), fill="mean")
    assert (label == IGNORE).sum() == 16 * 16 - 100


@pytest.mark.parametrize("sampling, offset", [("nearest", 0), ("nearest-exact", 2)])
def test_ir_labels_reach_the_grid_from_the_pixel_each_cell_samples(tmp_path, sampling, offset):
    """Cell i of the stride-4 grid takes the IR label's pixel 4i (torch's nearest) or 4i+2 (PIL's
    nearest, IRN's): on a label that counts its columns, cell i reads 4i + offset."""
    from pipeline.io import save_label_png
    from pipeline.irn.train import IrnTrainSet
    from tiny_scenes import scene

    columns = np.tile(np.arange(32, dtype=np.uint8), (32, 1))
    record = scene(tmp_path, "img", np.zeros((32, 32), np.uint8))
    (tmp_path / "ir").mkdir()
    save_label_png(tmp_path / "ir" / "img.png", columns)
    dataset = IrnTrainSet([record], tmp_path / "ir", 32, (32, 32), grid_sampling=sampling)
    torch.manual_seed(0)
    _, grid = dataset[0]
    expected = torch.arange(8) * 4 + offset
    assert torch.equal(grid[0], expected) or torch.equal(grid[0], (31 - expected).flip(0))  # a flip mirrors the columns


def test_pure_cells_keep_a_label_only_where_all_sixteen_pixels_hold_it():
    """A 6 x 6 square of class 2 at rows 2-7, columns 3-8 of a 9 x 10 map: of the 3 x 3 grid only
    the cell of rows 4-7, columns 4-7 lies inside it; cells it straddles and cells the map ends
    in are IGNORE; an all-background cell stays 0."""
    from pipeline.irn.train import pure_cells

    label = torch.zeros(9, 10, dtype=torch.long)
    label[2:8, 3:9] = 2
    assert pure_cells(label).tolist() == [[IGNORE] * 3, [IGNORE, 2, IGNORE], [IGNORE] * 3]
    label = torch.zeros(12, 12, dtype=torch.long)
    label[4:8, 4:8] = 1
    label[0, 11] = IGNORE
    assert pure_cells(label).tolist() == [[0, 0, IGNORE], [0, 1, 0], [0, 0, 0]]


def test_reference_side_outputs_are_upsampled_by_whole_factors_before_their_relu(tmp_path):
    """IRN's side output of a stage at stride 16 on a 36 x 36 image (a 3 x 3 map, the grid 9 x 9):
    conv, GroupNorm, x4 bilinear (12 x 12), cropped to 9 x 9, then ReLU; the project's default
    resizes the ReLU'd map to 9 x 9."""
    from pipeline.nets.backbone import build_backbone
    from pipeline.nets.boundary import BoundaryNet, backbone_stages, load_boundary_net, save_boundary_net
    from pipeline.params import BackboneSection

    cfg = BackboneSection(name="resnet18", strides=[2, 2, 2, 1], widths=None, blocks=None, weights=None)
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone(cfg), side_channels=8, side_upsampling="reference").eval()
    image = torch.rand(1, 3, 36, 36)
    with torch.no_grad():
        features = backbone_stages(net.backbone, net.normalise(image))
        deepest, side = features[-1], net.sides[-1]
        assert deepest.shape[-2:] == (3, 3) and net.side_factors == [1, 1, 2, 4, 4]
        up = torch.nn.functional.interpolate(side[1](side[0](deepest)), scale_factor=4, mode="bilinear", align_corners=False)
        torch.testing.assert_close(net.side_output(4, deepest, (9, 9)), torch.relu(up[..., :9, :9]))
        resized = torch.nn.functional.interpolate(side(deepest), size=(9, 9), mode="bilinear", align_corners=False)
        assert (net.side_output(4, deepest, (9, 9)) - resized).abs().max() > 1e-3
        assert net(image).shape == (1, 1, 9, 9)
    save_boundary_net(tmp_path / "irn", net, cfg, 8, [])
    loaded, meta = load_boundary_net(tmp_path / "irn")
    assert meta["side_upsampling"] == "reference" and torch.equal(loaded(image), net(image))
