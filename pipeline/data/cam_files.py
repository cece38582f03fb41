"""The CAM files between the stages: one .npz per image, made by make_cam, read by eval_cam,
make_ir_label and make_sem_seg.

Each holds `class_ids` (the image's classes, ids 1..C), `cam` (K, ceil(H/4), ceil(W/4)) at the
stride-4 grid where IRN's walk runs, `high_res` (K, H, W) and `mask` (K, H, W, the CLIMS mask
P), in float16.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import atomic_path, per_image_path

CAM_STRIDE = 4  # the grid of `cam`, of IRN's boundary map and of its random walk


def stride_size(height: int, width: int) -> tuple[int, int]:
    """The stride-4 grid of an image of this size."""
    return math.ceil(height / CAM_STRIDE), math.ceil(width / CAM_STRIDE)


def cam_path(folder: str | Path, image_id: str) -> Path:
    return per_image_path(folder, image_id, ".npz")


def save_cam(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_cam(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UserError(f"{path}: CAM file missing (run make_cam first)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: unreadable CAM file ({type(exc).__name__}: {exc}); run make_cam again") from None


def readable_cam(path: Path) -> bool:
    """Whether a CAM file exists and is a whole archive (a resume keeps only those): a truncated
    .npz has lost the directory at its end, which opening reads without decompressing anything."""
    try:
        zipfile.ZipFile(path).close()
        return True
    except (OSError, zipfile.BadZipFile):
        return False
