"""Random-walk propagation of CAMs over boundary-aware affinities (IRN), without a dense matrix.

On the stride-4 grid, a pixel i is linked to every j within `radius` (and to itself). Their
affinity is a_ij = 1 - max boundary along the straight path from i to j, W = a^beta, and the
transition matrix T = W / (column sums). IRN builds the dense (HW)^2 T and squares it `exp`
times; T is symmetric in W, so one step v -> v T is, per pixel j,
    (v T)[j] = sum_d v[j + d] * W_d[j] / deg[j],   deg[j] = sum_d W_d[j],
a sum over the |D| neighbourhood offsets of shifted maps (views of one padded copy, batched
over images): O(HW |D|) per step instead of O((HW)^3) per squaring. 2^exp steps of it
equal v T^(2^exp).
"""
from __future__ import annotations

import torch

from pipeline.irn.affinity import neighbour_offsets, path_affinities
from pipeline.ops.maps import shift, shifted_views
from pipeline.params import PathRule


def incoming_weights(boundary: torch.Tensor, radius: int, beta: float,
                     paths: PathRule = "touching") -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Offsets D and, per d, the column of T that reads pixel j + d into pixel j:
    W[j + d, j] / sum_d W[j + d, j], with W = a^beta."""
    offsets = [(0, 0), *neighbour_offsets(radius)]
    affinity = path_affinities(boundary, offsets, paths).pow(beta)
    index = {d: n for n, d in enumerate(offsets)}
    incoming = torch.stack([shift(affinity[index[(-dy, -dx)]], dy, dx) for dy, dx in offsets])
    return offsets, incoming / incoming.sum(0).clamp_min(1e-12)


def propagate(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0, exp: int = 8,
              paths: PathRule = "touching") -> torch.Tensor:
    """cams (..., K, H, W) -> cams T^(2^exp) on the grid (IRN's random walk), by 2^exp sparse steps;
    `boundary` (..., H, W) in [0, 1], one per image of the batch."""
    offsets, weights = incoming_weights(boundary, radius, beta, paths)
    weights = weights.unsqueeze(-3)  # (|D|, ..., 1, H, W): the same for every class
    v = cams
    for _ in range(2**exp):
        step = torch.zeros_like(v)
        for neighbour, w in zip(shifted_views(v, offsets), weights):
            step.addcmul_(neighbour, w)
        v = step
    return v


def dense_transition(boundary: torch.Tensor, radius: int, beta: float, paths: PathRule = "touching") -> torch.Tensor:
    """The reference's dense (HW, HW) column-normalised T, built pair by pair (small grids only):
    W[i, j] = a(i -> j)^beta."""
    height, width = boundary.shape
    offsets = [(0, 0), *neighbour_offsets(radius)]
    w = torch.zeros(height * width, height * width, dtype=torch.float64)
    for (dy, dx), a in zip(offsets, path_affinities(boundary.double(), offsets, paths)):
        for y in range(height):
            for x in range(width):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    w[y * width + x, (y + dy) * width + x + dx] = float(a[y, x]) ** beta
    return w / w.sum(0, keepdim=True)
