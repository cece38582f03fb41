"""The fully connected CRF: the permutohedral lattice against a brute-force Gaussian filter and
against pydensecrf (when installed), batching, and the CRF's behaviour with each kernel."""
import math

import numpy as np
import pytest
import torch

from pipeline.ops.crf import LatticeKernel, WindowKernel, crf_labels, mean_field, unary_from_labels
from pipeline.ops.lattice import LatticeStack, PermutohedralLattice
from tiny_scenes import crf_config


def _grid(size: int, spacing: float) -> torch.Tensor:
    """(size^2, 2) points of a square grid, `spacing` standard deviations apart."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1) * spacing


def test_lattice_filter_is_a_gaussian_of_unit_standard_deviation():
    """The impulse response of a point in a dense grid, in 2-D and with the grid lying in a 5-D
    feature space: its second moment is within 5 % of the exact Gaussian's (measured 3 % below
    and 0.2 % below), and it falls off with distance as the Gaussian does."""
    points = _grid(41, 0.25)
    centre = 20 * 41 + 20
    impulse = torch.zeros(len(points), 1)
    impulse[centre] = 1
    for features in (points, torch.cat([points, points @ torch.tensor([[0.3, 0.1, -0.2], [0.2, -0.4, 0.1]])], 1)):
        response = PermutohedralLattice(features).filter(impulse)[:, 0]
        dist2 = ((features - features[centre]) ** 2).sum(1)
        exact = torch.exp(-dist2 / 2)
        moment, exact_moment = (float((dist2 * k).sum() / k.sum()) for k in (response, exact))
        assert moment == pytest.approx(exact_moment, rel=0.05)
        near, far = response[dist2 < 1].mean(), response[(dist2 > 9) & (dist2 < 16)].mean()
        assert far < 0.02 * near  # exp(-4.5) ~ 0.011 of the centre at 3-4 standard deviations


def test_normalised_lattice_filter_matches_brute_force_on_smooth_values():
    """Normalised by its response to ones (as the CRF uses it), the lattice filter matches the
    all-pairs Gaussian within 1e-3 relative on a field whose wavelength is 32 standard
    deviations or more (2-D, away from the border); its variance 1.04 instead of 1 costs about
    0.02 |f''| / |f|, so shorter wavelengths differ more (3e-3 at 16)."""
    points = _grid(32, 0.5)
    values = (1 + 0.5 * torch.cos(2 * math.pi * points[:, 0] / 32) + 0.1 * points[:, 1])[:, None]
    lattice = PermutohedralLattice(points)
    ours = lattice.filter(values) / lattice.filter(torch.ones_like(values))
    kernel = torch.exp(-((points[:, None] - points[None]) ** 2).sum(-1) / 2)
    exact = kernel @ values / kernel.sum(1, keepdim=True)
    inner = ((points >= 4) & (points < 12)).all(1)
    assert (((ours - exact).abs() / exact)[inner]).max() < 1e-3
    assert (((ours - exact).abs() / exact)[inner]).max() > 1e-5  # an approximation, measured: not the exact filter


def test_lattices_of_several_images_filter_as_one_batch():
    torch.manual_seed(0)
    features = [torch.rand(300, 5) * 6, torch.rand(200, 5) * 6]
    values = [torch.rand(300, 3), torch.rand(200, 3)]
    lattices = [PermutohedralLattice(f) for f in features]
    batched = LatticeStack(lattices).filter(torch.cat(values))
    torch.testing.assert_close(batched, torch.cat([lat.filter(v) for lat, v in zip(lattices, values)]), rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [LatticeKernel, WindowKernel])
def test_grouped_crfs_equal_the_crfs_one_by_one(kernel):
    """Two label maps of the same image refined in one grouped CRF (as the IR labels' foreground
    and background are) give what two separate CRFs give."""
    torch.manual_seed(0)
    image = torch.full((1, 3, 12, 16), 40.0)
    image[..., 8:] = 220.0
    halves = torch.zeros(1, 12, 16, dtype=torch.long)
    halves[..., 8:] = 1
    labels = [torch.where(torch.rand(1, 12, 16) < 0.3, torch.randint(0, 3, (1, 12, 16)), halves + shift) for shift in (0, 1)]
    cfg = crf_config(kernel="lattice" if kernel is LatticeKernel else "window", window=3)
    grouped = crf_labels(kernel(image, cfg), labels, 3, cfg)
    one_by_one = [crf_labels(kernel(image, cfg), [label], 3, cfg)[0] for label in labels]
    unary = torch.cat([unary_from_labels(label, 3, cfg.gt_prob) for label in labels], 1)
    q = mean_field(unary, kernel(image, cfg), cfg, groups=2)
    single = mean_field(unary[:, 3:], kernel(image, cfg), cfg)
    torch.testing.assert_close(q[:, 3:], single, atol=1e-5, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(grouped, one_by_one))
    assert not torch.equal(grouped[0], labels[0])  # the CRF did change something


def test_fully_connected_messages_reach_across_the_image():
    """A bright strip at each end of a dark image, 40 pixels apart, beyond any window: the left
    one sure of label 1, the right one unsure, the middle sure of 0. The lattice CRF carries the
    left strip's label to its look-alike on the right; the window CRF only sees the dark middle."""
    image = torch.full((1, 3, 16, 64), 30.0)
    image[..., :16], image[..., 60:] = 200.0, 200.0
    prob = torch.full((1, 2, 16, 64), 0.5)
    prob[:, 1, :, :16], prob[:, 1, :, 16:60] = 0.95, 0.05
    prob[:, 0] = 1 - prob[:, 1]
    unary = -prob.log()
    right = {}
    for name, kernel in (("lattice", LatticeKernel), ("window", WindowKernel)):
        cfg = crf_config(kernel=name, window=5, iterations=5)
        right[name] = float(mean_field(unary, kernel(image, cfg), cfg)[0, 1, :, 60:].mean())
    assert right["lattice"] > 0.9 and right["window"] < 0.5


def test_lattice_crf_agrees_with_pydensecrf():
    """pydensecrf (pip install pydensecrf2, optional) on the same image and unaries: the same
    marginals to float rounding."""
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(0)
    image = np.ascontiguousarray((rng.random((2, 3, 1, 1)) * 255).repeat(20, 2).repeat(24, 3)[0].transpose(1, 2, 0).astype(np.uint8))
    image = np.ascontiguousarray(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    labels = torch.from_numpy(rng.integers(0, 3, (1, 20, 24)))
    cfg = crf_config(kernel="lattice")
    unary = unary_from_labels(labels, 3, cfg.gt_prob)
    crf = dcrf.DenseCRF2D(24, 20, 3)
    crf.setUnaryEnergy(np.ascontiguousarray(unary[0].reshape(3, -1).numpy()))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=image, compat=cfg.bilateral_compat)
    reference = np.array(crf.inference(cfg.iterations)).reshape(3, 20, 24)
    ours = mean_field(unary, LatticeKernel(torch.from_numpy(image).permute(2, 0, 1)[None].float(), cfg), cfg)[0].numpy()
    assert np.abs(ours - reference).max() < 1e-3
