"""A dense CRF in torch: mean-field inference with a Gaussian (position) and a bilateral
(position + colour) kernel, as in Kraehenbuehl & Koltun and pydensecrf, without C extensions;
CPU and CUDA run the same code, several same-size images at once.

Two ways to pass the messages (`crf.kernel`):
- "lattice" (the fully connected CRF): every pixel messages every pixel. Both kernels are
  filtered on a permutohedral lattice (pipeline.ops.lattice), pydensecrf's filter to float
  rounding: the bilateral one over (x, y, r, g, b), the Gaussian one over (x, y), whose lattice
  is the same for every image of a size and built once. Each pixel's message includes its own
  term (k_ii), as pydensecrf's does.
- "window" (ConvCRF-style, Teichmann & Cipolla 2018): each pixel exchanges messages with the
  pixels of a (2w+1)^2 window only, the kernel computed exactly there and no message to itself;
  `downsample` > 1 passes the messages at a coarser resolution (avg-pooled image and marginals,
  messages upsampled back) so the window reaches further. It cuts the bilateral kernel's reach
  (sxy 50) at the window.

As in pydensecrf's defaults, each kernel is normalised symmetrically (k_ij / sqrt(n_i n_j),
n_i = sum_j k_ij), Potts compatibilities weight the kernels, and the unary comes from a hard
label map with probability `gt_prob` on the given label. Its settings are the params section
`crf` (pipeline.params.CrfSection).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from pipeline.ops.lattice import LatticeStack, PermutohedralLattice
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


class WindowKernel:
    """Messages within a window (module doc) for images (N, 3, H, W) in 0..255."""

    def __init__(self, image: torch.Tensor, cfg: CrfSection):
        self.cfg = cfg
        self.weights = self._weights(image, cfg)

    @staticmethod
    def _weights(image: torch.Tensor, cfg: CrfSection) -> torch.Tensor:
        """(N, (2w+1)^2, h, w): compat-weighted, symmetrically normalised Gaussian + bilateral
        kernel between each pixel and each window position (0 at the centre and outside the
        image), at the message resolution (H, W) / cfg.downsample."""
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

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """sum_j k_ij Q_j (N, L, H, W) for marginals Q (N, L, H, W)."""
        d = self.cfg.downsample
        q_small = F.avg_pool2d(q, d, ceil_mode=True) if d > 1 else q
        message = torch.zeros_like(q_small)
        for s, neighbour in enumerate(shifted_views(q_small, _window(self.cfg.window))):
            message.addcmul_(neighbour, self.weights[:, s : s + 1])
        if d > 1:
            message = F.interpolate(message, size=q.shape[-2:], mode="bilinear", align_corners=False)
        return message


def _pixel_positions(height: int, width: int, device) -> torch.Tensor:
    """(H * W, 2): each pixel's (x, y), row by row, as pydensecrf's features."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2).float()


@functools.lru_cache(maxsize=4)
def _position_lattice(height: int, width: int, sxy: float, compat: float, device: str) -> PermutohedralLattice:
    """The Gaussian kernel's normalised lattice over the pixel grid: the same for every image of
    a size, so built once."""
    lattice = PermutohedralLattice(_pixel_positions(height, width, device) / sxy)
    lattice.normalise(compat)
    return lattice


class LatticeKernel:
    """Fully connected messages (module doc) for images (N, 3, H, W) in 0..255."""

    def __init__(self, image: torch.Tensor, cfg: CrfSection):
        n, _, height, width = image.shape
        self.gaussian = _position_lattice(height, width, cfg.gaussian_sxy, cfg.gaussian_compat, str(image.device))
        position = _pixel_positions(height, width, image.device) / cfg.bilateral_sxy
        # colours as pydensecrf reads them: 8-bit RGB
        colours = image.round().clamp(0, 255).permute(0, 2, 3, 1).reshape(n, -1, 3) / cfg.bilateral_srgb
        self.bilateral = LatticeStack([PermutohedralLattice(torch.cat([position, c], 1)) for c in colours])
        self.bilateral.normalise(cfg.bilateral_compat)

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """sum_j k_ij Q_j (N, L, H, W) for marginals Q (N, L, H, W)."""
        n, labels, height, width = q.shape
        by_image = q.permute(0, 2, 3, 1).reshape(n, height * width, labels)  # each pixel's labels side by side
        # the images share the Gaussian's lattice: one filter of their labels side by side per pixel
        by_pixel = by_image.transpose(0, 1).reshape(height * width, n * labels)
        gaussian = self.gaussian.filter(by_pixel).reshape(height * width, n, labels).transpose(0, 1)
        message = self.bilateral.filter(by_image.reshape(-1, labels)).reshape(by_image.shape).add_(gaussian)
        return message.reshape(n, height, width, labels).permute(0, 3, 1, 2)


def pairwise_kernel(image: torch.Tensor, cfg: CrfSection) -> WindowKernel | LatticeKernel:
    """The messages of the CRF `cfg` over images (N, 3, H, W) in 0..255 (one size)."""
    return (LatticeKernel if cfg.kernel == "lattice" else WindowKernel)(image, cfg)


def mean_field(unary: torch.Tensor, kernel: WindowKernel | LatticeKernel, cfg: CrfSection, groups: int = 1) -> torch.Tensor:
    """Marginals Q (N, L, H, W) after `cfg.iterations` mean-field updates
    Q = softmax(-unary + sum_j k_ij Q_j) (Potts model), with the images' `pairwise_kernel`.
    With `groups` G, the L channels are G independent CRFs of L / G labels over the same images,
    whose messages pass together (one lattice filter of L channels costs far less than G)."""
    shape = unary.shape
    unary = unary.reshape(shape[0], groups, shape[1] // groups, *shape[2:])
    q = torch.softmax(-unary, 2)
    for _ in range(cfg.iterations):
        q = torch.softmax(kernel.message(q.reshape(shape)).reshape(unary.shape) - unary, 2)
    return q.reshape(shape)


def crf_labels(kernel: WindowKernel | LatticeKernel, labels: list[torch.Tensor], num_labels: int, cfg: CrfSection) -> list[torch.Tensor]:
    """Refine hard label maps, each (N, H, W) in [0, num_labels), with their images'
    `pairwise_kernel`; several maps of the same images run as one grouped CRF."""
    if num_labels < 2:
        return [label.clone() for label in labels]
    unary = torch.cat([unary_from_labels(label, num_labels, cfg.gt_prob) for label in labels], 1)
    q = mean_field(unary, kernel, cfg, groups=len(labels))
    return list(q.reshape(len(q), len(labels), num_labels, *q.shape[-2:]).max(2).indices.unbind(1))  # max(): argmax over a middle dim is ~10x slower on CPU
