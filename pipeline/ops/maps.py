"""Tensor ops on maps (..., H, W) that the CAMs, the CRF, IRN and segmentation share: shifted
copies of a map (the CRF's windows, IRN's pixel pairs and paths) and bilinear resizing."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) maps to `size` (align_corners=False)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def shift(maps: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """out[..., y, x] = maps[..., y + dy, x + dx] (fill outside the grid)."""
    height, width = maps.shape[-2:]
    padded = F.pad(maps, (abs(dx), abs(dx), abs(dy), abs(dy)), value=fill)
    return padded[..., abs(dy) + dy : abs(dy) + dy + height, abs(dx) + dx : abs(dx) + dx + width]


def shifted_views(maps: torch.Tensor, offsets: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """shift(maps, dy, dx) for each offset, as views of one zero-padded copy. Accumulating
    these one by one is several times faster than one unfolded (..., |D|, H, W) tensor."""
    height, width = maps.shape[-2:]
    pad = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    padded = F.pad(maps, (pad, pad, pad, pad))
    for dy, dx in offsets:
        yield padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def threshold_labels(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, H, W) labels in 0..K (0 = background, k = the k-th map) from class maps (N, K, H, W)
    padded with `threshold` as the background score."""
    padded = torch.cat([torch.full_like(maps[:, :1], threshold), maps], 1)
    return padded.max(1).indices  # max(): CPU argmax over dim 1 is ~10x slower
