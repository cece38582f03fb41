"""A dense CRF in torch: mean-field inference with a Gaussian (position) and a bilateral
(position + colour) kernel, as in Kraehenbuehl & Koltun / pydensecrf, without C extensions.

Kernel evaluation is local (ConvCRF-style, Teichmann & Cipolla 2018): each pixel exchanges
messages with the pixels of a (2w+1)^2 window, and the kernel is computed exactly there. Why
not a permutohedral lattice: the window form is plain tensor ops (shift, multiply, add) that
run the same on CPU and GPU and batch over images, and its error is a truncation we can
measure, not a lattice-splatting blur. Its cost: the bilateral kernel's long spatial reach
(sxy 50) is cut at the window; `downsample` > 1 passes the messages at a coarser resolution
(avg-pooled image and marginals, messages upsampled back) so a window reaches further on large
images.

As in pydensecrf's defaults, each kernel is normalised symmetrically (k_ij / sqrt(n_i n_j),
n_i = sum_j k_ij), Potts compatibilities weight the kernels, and the unary comes from a hard
label map with probability `gt_prob` on the given label. Its settings are the params section
`crf` (pipeline.params.CrfSection).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.ops.maps import shifted_views
from pipeline.params import CrfSection


def unary_from_labels(labels: torch.Tensor, num_labels: int, gt_prob: float) -> torch.Tensor:
    """(N, H, W) labels in [0, num_labels) -> energies (N, L, H, W) = -log p, with p = gt_prob on
    the label and the rest shared evenly by the other labels."""
    other = (1 - gt_prob) / max(1, num_labels - 1)
    prob = torch.full((labels.shape[0], num_labels, *labels.shape[1:]), other, device=labels.device)
    prob.scatter_(1, labels[:, None].long(), gt_prob)
    return -prob.log()


def _window(w: int) -> list[tuple[int, int]]:
    """The offsets of a (2w+1)^2 window, row by row."""
    return [(dy, dx) for dy in range(-w, w + 1) for dx in range(-w, w + 1)]


def pairwise_kernel(image: torch.Tensor, cfg: CrfSection) -> torch.Tensor:
    """(N, 3, H, W) image in 0..255 -> (N, (2w+1)^2, h, w): compat-weighted, symmetrically
    normalised Gaussian + bilateral kernel between each pixel and each window position (0 at the
    centre and outside the image), at the message resolution (H, W) / cfg.downsample."""
    d, w = cfg.downsample, cfg.window
    image = F.avg_pool2d(image, d, ceil_mode=True) if d > 1 else image
    valid = torch.ones_like(image[:, :1])

    def raw_kernels():  # (gaussian, bilateral) for each window position, zero outside the image
        for (dy, dx), neighbour, inside in zip(_window(w), shifted_views(image, _window(w)), shifted_views(valid, _window(w))):
            dist2 = float(dy * dy + dx * dx) * d**2
            colour2 = (neighbour - image).pow(2).sum(1, keepdim=True)
            yield (inside * math.exp(-dist2 / (2 * cfg.gaussian_sxy**2)),
                   inside * torch.exp(-dist2 / (2 * cfg.bilateral_sxy**2) - colour2 / (2 * cfg.bilateral_srgb**2)))

    # normalisers include the centre (k = 1), as the lattice filter does
    norm_g, norm_b = (sum(k) for k in zip(*raw_kernels()))
    kernel = torch.empty(image.shape[0], (2 * w + 1) ** 2, *image.shape[-2:], device=image.device)
    pairs = zip(raw_kernels(), shifted_views(norm_g, _window(w)), shifted_views(norm_b, _window(w)))
    for s, ((g, b), g_there, b_there) in enumerate(pairs):
        kernel[:, s : s + 1] = (cfg.gaussian_compat * g / (norm_g * g_there).sqrt().clamp_min(1e-12)
                                + cfg.bilateral_compat * b / (norm_b * b_there).sqrt().clamp_min(1e-12))
    kernel[:, (2 * w + 1) ** 2 // 2] = 0  # no message from a pixel to itself
    return kernel


def mean_field(unary: torch.Tensor, kernel: torch.Tensor, cfg: CrfSection) -> torch.Tensor:
    """Marginals Q (N, L, H, W) after `cfg.iterations` mean-field updates
    Q = softmax(-unary + sum_j k_ij Q_j) (Potts model), with the image's `pairwise_kernel`."""
    d = cfg.downsample
    q = torch.softmax(-unary, 1)
    for _ in range(cfg.iterations):
        q_small = F.avg_pool2d(q, d, ceil_mode=True) if d > 1 else q
        message = torch.zeros_like(q_small)
        for s, neighbour in enumerate(shifted_views(q_small, _window(cfg.window))):
            message.addcmul_(neighbour, kernel[:, s : s + 1])
        if d > 1:
            message = F.interpolate(message, size=q.shape[-2:], mode="bilinear", align_corners=False)
        q = torch.softmax(message - unary, 1)
    return q


def crf_labels(kernel: torch.Tensor, labels: torch.Tensor, num_labels: int, cfg: CrfSection) -> torch.Tensor:
    """Refine hard label maps (N, H, W) in [0, num_labels) with their images' `pairwise_kernel`."""
    if num_labels < 2:
        return labels.clone()
    return mean_field(unary_from_labels(labels, num_labels, cfg.gt_prob), kernel, cfg).argmax(1)
