"""IRN's random walk: path affinities on a hand-built case, sparse propagation against dense T^(2^k)."""
import numpy as np
import pytest
import torch

from pipeline.irn.affinity import forward_offsets, neighbour_offsets, path_affinities, path_points
from pipeline.irn.random_walk import dense_transition, propagate


def test_path_affinity_is_one_minus_the_highest_boundary_on_the_way():
    boundary = torch.zeros(5, 5)
    boundary[:, 2] = 0.9  # a wall down the middle column
    boundary[4, 0] = 0.5
    (along, across, down, outside) = path_affinities(boundary, [(1, 0), (0, 2), (2, 0), (0, -1)])
    assert along[0, 0] == 1 and along[0, 2].item() == pytest.approx(0.1)  # on the wall itself: 1 - 0.9
    assert across[0, 0].item() == pytest.approx(0.1) and across[0, 3] == 0  # across the wall / off the grid
    assert down[2, 0] == 0.5  # the path (2,0) -> (4,0) ends on a 0.5 boundary pixel
    assert outside[0, 0] == 0 and outside[0, 1] == 1
    # every cell the segment touches, so a diagonal step cannot slip between two boundary cells
    assert path_points(2, 4) == [(0, 0), (0, 1), (1, 1), (1, 2), (1, 3), (2, 3), (2, 4)]
    assert path_points(1, 1) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    wall = torch.zeros(3, 3)
    wall[0, 1] = wall[1, 0] = 1.0  # a one-cell-thin diagonal boundary
    assert path_affinities(wall, [(1, 1)])[0, 0, 0] == 0
    assert len(neighbour_offsets(5)) == 68  # IRN's radius-5 neighbourhood: 0 < dy^2 + dx^2 < 25


def test_reference_paths_are_irns_two_cell_thick_paths():
    """IRN's cells: the box of the two ends, within distance 1 of the line, (dy*x - dx*y)^2 < dy^2 + dx^2."""
    # (1, 2): (x - 2y)^2 < 5 -> every cell of the 2 x 3 box; (3, 1): (3x - y)^2 < 10 -> all 8 of 4 x 2
    assert path_points(1, 2, "reference") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert path_points(3, 1, "reference") == [(y, x) for y in range(4) for x in range(2)]
    # (2, 4): |x - 2y| < 2.24 -> 3 + 5 + 3 cells, where the segment touches 7
    assert path_points(2, 4, "reference") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4),
                                              (2, 2), (2, 3), (2, 4)]
    assert path_points(0, -3, "reference") == [(0, -3), (0, -2), (0, -1), (0, 0)]
    for radius, strict in ((5, 20), (10, 120)):
        forward = forward_offsets(radius)
        touching = [set(path_points(dy, dx)) for dy, dx in forward]
        reference = [set(path_points(dy, dx, "reference")) for dy, dx in forward]
        assert all(t <= r for t, r in zip(touching, reference))
        assert sum(t < r for t, r in zip(touching, reference)) == strict and len(forward) == {5: 34, 10: 152}[radius]


@pytest.mark.parametrize("paths", ["touching", "reference"])
def test_sparse_propagation_equals_the_dense_matrix_power(paths):
    torch.manual_seed(0)
    height, width, radius, beta, exp = 9, 11, 3, 10.0, 4
    boundary = torch.rand(height, width) * 0.3
    boundary[:, 5] = 0.95  # a strong edge
    cams = torch.rand(2, height, width)
    transition = dense_transition(boundary, radius, beta, paths)
    dense = (cams.reshape(2, -1).double() @ torch.linalg.matrix_power(transition, 2**exp)).reshape(2, height, width)
    sparse = propagate(cams, boundary, radius, beta, exp, paths)
    assert (sparse.double() - dense).abs().max() < 1e-4
    # the edge holds: mass seeded left of it stays on the left
    seed = torch.zeros(1, height, width)
    seed[0, 4, 1] = 1
    spread = propagate(seed, boundary, radius, beta, exp, paths)[0]
    assert spread[:, :5].sum() > 50 * spread[:, 6:].sum()


def test_a_batch_walks_like_its_images_one_by_one():
    torch.manual_seed(1)
    boundary = torch.rand(3, 7, 8) * 0.5
    cams = torch.rand(3, 2, 7, 8)
    batched = propagate(cams, boundary, radius=3, beta=5.0, exp=3)
    single = torch.stack([propagate(c, b, radius=3, beta=5.0, exp=3) for c, b in zip(cams, boundary)])
    assert torch.allclose(batched, single, atol=1e-6)


def test_no_walk_labels_the_cams_as_they_are_and_the_walk_spreads_them():
    """make_sem_seg.walk=false (the ablation's "no walk"): the x4-upsampled CAMs, each image over
    its maximum, against the background score; the walk moves the same CAMs' labels."""
    import torch.nn.functional as F

    from pipeline.irn.sem_seg import walk_labels
    from pipeline.nets.backbone import build_backbone
    from pipeline.nets.boundary import BoundaryNet
    from pipeline.params import MakeSemSeg
    from tiny_scenes import SMALL

    torch.manual_seed(0)
    net = BoundaryNet(build_backbone(SMALL), side_channels=8).eval()
    with torch.no_grad():  # no boundary anywhere: every neighbour within the radius is reachable
        net.fuse.weight.zero_()
        net.fuse.bias.fill_(-10.0)
    images, cams = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 8, 8) ** 4
    cfg = dict(radius=3, beta=10.0, exp_times=3, damp_boundary=False, bg_threshold=0.2, crf=False, batch_size=2, num_workers=0)
    unwalked = walk_labels(net, images, cams, MakeSemSeg(walk=False, **cfg))
    up = F.interpolate(cams, scale_factor=4, mode="bilinear", align_corners=False)
    up = up / up.flatten(1).amax(1)[:, None, None, None]
    expected = torch.cat([torch.full_like(up[:, :1], 0.2), up], 1).argmax(1)
    assert torch.equal(unwalked, expected)
    # one hot cell per class: the walk spreads each over its neighbourhood, the CAM keeps it to that cell
    cams = torch.zeros(2, 2, 8, 8)
    cams[:, 0, 2, 2] = cams[:, 1, 5, 5] = 1.0
    unwalked = walk_labels(net, images, cams, MakeSemSeg(walk=False, **cfg))
    walked = walk_labels(net, images, cams, MakeSemSeg(walk=True, **cfg))
    assert (unwalked > 0).sum() < 0.5 * (walked > 0).sum()


def test_walk_diagnosis_scores_the_crf_labels_make_sem_seg_writes():
    """benchmarks/walk_diagnosis.py --crf: at the params' background score, its CRF-refined labels
    of the trained net's boundary are make_sem_seg's, in class ids; at a higher score fewer pixels
    are an object's."""
    import sys

    from conftest import REPO
    from pipeline.irn.sem_seg import walk_labels, walked_scores
    from pipeline.nets.backbone import build_backbone
    from pipeline.nets.boundary import BoundaryNet, boundary_map
    from pipeline.params import MakeSemSeg
    from tiny_scenes import SMALL, crf_config

    sys.path.insert(0, str(REPO / "benchmarks"))
    from walk_diagnosis import crf_predictions

    torch.manual_seed(0)
    net = BoundaryNet(build_backbone(SMALL), side_channels=8).eval()
    images, cams = torch.rand(2, 3, 32, 32), torch.rand(2, 2, 8, 8) ** 2
    cfg = MakeSemSeg(walk=True, radius=2, beta=10.0, exp_times=2, damp_boundary=False, bg_threshold=0.3, crf=True,
                     batch_size=2, num_workers=0)
    crf = crf_config(kernel="lattice")
    written = walk_labels(net, images, cams, cfg, crf)
    class_ids = [[2, 5], [1, 6]]
    with torch.no_grad():
        scores = walked_scores(cams, boundary_map(net, images), cfg, images.shape[-2:])
    labels = crf_predictions(scores, images, class_ids, np.array([0.3, 0.6]), crf)
    assert labels.shape == (2, 2, 32, 32)
    for i, ids in enumerate(class_ids):
        assert np.array_equal(labels[i, 0], np.asarray([0, *ids])[written[i].numpy()])
    assert (labels[:, 1] > 0).sum() < (labels[:, 0] > 0).sum()
    assert set(np.unique(labels)) <= {0, 1, 2, 5, 6}


def test_the_unfolded_walk_candidate_takes_the_same_steps():
    """benchmarks/random_walk.py's GPU candidate (one product over an unfolded window a step)
    against propagate, on a grid with a wall and the window's corners outside the radius."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from random_walk import unfolded_walk

    torch.manual_seed(0)
    boundary = torch.rand(9, 7) * 0.3
    boundary[:, 3] = 0.95
    cams = torch.rand(2, 9, 7)
    torch.testing.assert_close(unfolded_walk(cams, boundary, 3, 10.0, 4), propagate(cams, boundary, 3, 10.0, 4))
