"""Random-walk propagation of CAMs over boundary-aware affinities (IRN), without a dense matrix.

On the stride-4 grid, a pixel i is linked to every j within `radius` (and to itself). Their
affinity is a_ij = 1 - max boundary along the straight path from i to j, W = a^beta, and the
transition matrix T = W / (column sums). IRN builds the dense (HW)^2 T and squares it `exp`
times; T is symmetric in W, so one step v -> v T is, per pixel j,
    (v T)[j] = sum_d v[j + d] * W_d[j] / deg[j],   deg[j] = sum_d W_d[j],
a sum over the |D| neighbourhood offsets of shifted maps: O(HW |D|) per step instead of
O((HW)^3) per squaring. 2^exp steps of it equal v T^(2^exp).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Every (dy, dx) with 0 < dy^2 + dx^2 < radius^2, both directions (IRN's neighbourhood)."""
    return [(dy, dx) for dy in range(-radius + 1, radius) for dx in range(-radius + 1, radius)
            if 0 < dy * dy + dx * dx < radius * radius]


def path_points(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid points on the straight path from (0, 0) to (dy, dx), both ends included."""
    steps = max(abs(dy), abs(dx))
    return sorted({(round(dy * t / steps), round(dx * t / steps)) for t in range(steps + 1)})


def shift(maps: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """out[..., y, x] = maps[..., y + dy, x + dx] (fill outside the grid)."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (abs(dx), abs(dx), abs(dy), abs(dy)), value=fill)
    return padded[..., abs(dy) + dy : abs(dy) + dy + height, abs(dx) + dx : abs(dx) + dx + width]


def path_affinities(boundary: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """(|D|, H, W): a_d[y, x] = 1 - max boundary on the path from (y, x) to (y, x) + d; 0 where
    (y, x) + d lies outside the grid; 1 for d = (0, 0) (a pixel is its own neighbour, as in IRN).
    `boundary` is (H, W) in [0, 1]."""
    out = []
    for dy, dx in offsets:
        if (dy, dx) == (0, 0):
            out.append(torch.ones_like(boundary))
            continue
        highest = torch.stack([shift(boundary, py, px, fill=1.0) for py, px in path_points(dy, dx)]).amax(0)
        out.append(1 - highest)
    return torch.stack(out)


def incoming_weights(boundary: torch.Tensor, radius: int, beta: float) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Offsets D and, per d, the column of T that reads pixel j + d into pixel j:
    W[j + d, j] / sum_d W[j + d, j], with W = a^beta."""
    offsets = [(0, 0), *neighbour_offsets(radius)]
    affinity = path_affinities(boundary, offsets).pow(beta)
    index = {d: n for n, d in enumerate(offsets)}
    incoming = torch.stack([shift(affinity[index[(-dy, -dx)]], dy, dx) for dy, dx in offsets])
    return offsets, incoming / incoming.sum(0).clamp_min(1e-12)


def propagate(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0, exp: int = 8) -> torch.Tensor:
    """cams (K, H, W) -> cams T^(2^exp) on the grid (IRN's random walk), by 2^exp sparse steps."""
    offsets, weights = incoming_weights(boundary, radius, beta)
    v = cams
    for _ in range(2**exp):
        v = sum(shift(v, dy, dx) * w for (dy, dx), w in zip(offsets, weights))
    return v


def dense_transition(boundary: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """The reference's dense (HW, HW) column-normalised T, built pair by pair (small grids only):
    W[i, j] = a(i -> j)^beta."""
    height, width = boundary.shape
    offsets = [(0, 0), *neighbour_offsets(radius)]
    w = torch.zeros(height * width, height * width, dtype=torch.float64)
    for (dy, dx), a in zip(offsets, path_affinities(boundary.double(), offsets)):
        for y in range(height):
            for x in range(width):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    w[y * width + x, (y + dy) * width + x + dx] = float(a[y, x]) ** beta
    return w / w.sum(0, keepdim=True)
