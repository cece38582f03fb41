"""Inter-pixel affinities from a boundary map (IRN): the stride-4 neighbourhood, the straight
paths between neighbours, a_ij = 1 - max boundary along the path, and the affinity loss that
trains the boundary net from IR labels.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from pipeline.metrics import IGNORE
from pipeline.ops.maps import shift
from pipeline.params import PathRule


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Every (dy, dx) with 0 < dy^2 + dx^2 < radius^2, both directions (IRN's neighbourhood)."""
    return [(dy, dx) for dy in range(-radius + 1, radius) for dx in range(-radius + 1, radius)
            if 0 < dy * dy + dx * dx < radius * radius]


def path_points(dy: int, dx: int, rule: PathRule = "touching") -> list[tuple[int, int]]:
    """Grid cells on the path from (0, 0) to (dy, dx), both ends included.

    "reference" (IRN's): every cell of the box spanned by the two ends whose distance to the
    line through them is below 1, i.e. (dy*x - dx*y)^2 < dy^2 + dx^2: a path two cells thick.
    "touching": every cell whose square (side 1, centred on it) the segment meets, corners
    included: a diagonal step passes between two cells and takes both, so a one-cell-thin
    diagonal boundary cannot be crossed without being seen. Its cells are a subset of the
    reference's (a strict one in 20 of the 34 directions at radius 5)."""
    if rule == "reference":
        return sorted((y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
                      if (dy * x - dx * y) ** 2 < dy * dy + dx * dx)
    samples = 8 * max(abs(dy), abs(dx), 1)
    cells = set()
    for t in range(samples + 1):
        y, x = dy * t / samples, dx * t / samples
        for cy in {math.floor(y + 0.5), math.ceil(y - 0.5)}:
            for cx in {math.floor(x + 0.5), math.ceil(x - 0.5)}:
                cells.add((cy, cx))
    return sorted(cells)


def path_affinities(boundary: torch.Tensor, offsets: list[tuple[int, int]], rule: PathRule = "touching") -> torch.Tensor:
    """(|D|, H, W): a_d[y, x] = 1 - max boundary on the path from (y, x) to (y, x) + d; 0 where
    (y, x) + d lies outside the grid; 1 for d = (0, 0) (a pixel is its own neighbour, as in IRN).
    `boundary` is (H, W) in [0, 1]."""
    out = []
    for dy, dx in offsets:
        if (dy, dx) == (0, 0):
            out.append(torch.ones_like(boundary))
            continue
        if boundary.requires_grad:  # training: the path's stack is rebuilt in the backward pass, not kept
            highest = checkpoint(path_maximum, boundary, dy, dx, rule, use_reentrant=False)
        else:
            highest = path_maximum(boundary, dy, dx, rule)
        out.append(1 - highest)
    return torch.stack(out)


def path_maximum(boundary: torch.Tensor, dy: int, dx: int, rule: PathRule) -> torch.Tensor:
    """The highest boundary on each cell's path to the cell (dy, dx) away (1 off the grid)."""
    return torch.stack([shift(boundary, py, px, fill=1.0) for py, px in path_points(dy, dx, rule)]).amax(0)


def forward_offsets(radius: int) -> list[tuple[int, int]]:
    """One of each pair of opposite neighbourhood offsets (a pair's affinity is symmetric)."""
    return [(dy, dx) for dy, dx in neighbour_offsets(radius) if dy > 0 or (dy == 0 and dx > 0)]


def pair_labels(labels: torch.Tensor, offsets: list[tuple[int, int]], margin: int = 0) -> dict[str, torch.Tensor]:
    """Which pairs (y, x) - (y, x) + d teach what, from a label map (..., H, W) with IGNORE:
    'bg_pos' both background, 'fg_pos' both the same class, 'neg' different labels; pairs that
    touch IGNORE or leave the grid are in none. Each is (|D|, ..., H, W) booleans.

    `margin` > 0 keeps only sources whose every forward neighbour lies inside the grid, as IRN's
    training crops them: rows below H - margin, columns from margin to W - margin (IRN: the
    radius minus 1)."""
    here = labels[None].expand(len(offsets), *labels.shape)
    there = torch.stack([shift(labels, dy, dx, fill=IGNORE) for dy, dx in offsets])
    valid = (here != IGNORE) & (there != IGNORE)
    if margin:
        height, width = labels.shape[-2:]
        inside = torch.zeros(height, width, dtype=torch.bool, device=labels.device)
        inside[: height - margin, margin : width - margin] = True
        valid = valid & inside
    same = valid & (here == there)
    return {"bg_pos": same & (here == 0), "fg_pos": same & (here > 0), "neg": valid & (here != there)}


def affinity_loss(affinity: torch.Tensor, pairs: dict[str, torch.Tensor], eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """IRN's loss: -log a on positive pairs (background and foreground averaged separately, then
    halved) and -log(1 - a) on negative pairs; loss = (positive + negative) / 2."""
    def mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return (values * where).sum() / where.sum().clamp_min(1)

    terms = {
        "bg_pos": mean(-torch.log(affinity + eps), pairs["bg_pos"]),
        "fg_pos": mean(-torch.log(affinity + eps), pairs["fg_pos"]),
        "neg": mean(-torch.log(1 + eps - affinity), pairs["neg"]),
    }
    terms["loss"] = ((terms["bg_pos"] + terms["fg_pos"]) / 2 + terms["neg"]) / 2
    return terms
