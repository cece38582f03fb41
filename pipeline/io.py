"""Atomic file writing: a killed stage never leaves a half-written file or folder behind."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.errors import UserError


@contextmanager
def _parents_of(path: Path) -> Iterator[None]:
    """Create `path`'s missing parent folders; if the block fails, remove those left empty."""
    made = [p for p in path.parents if not p.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for parent in made:
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; it becomes `path` only if the block succeeds.

    On failure nothing is left: neither the temporary file nor parents made for it."""
    path = Path(path)
    with _parents_of(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it in whole when the block succeeds.

    On failure nothing is left: neither the temporary folder nor parents made for it."""
    path = Path(path)
    with _parents_of(path):
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


NET_WEIGHTS, NET_META = "weights.pt", "net.json"


def save_net_folder(folder: str | Path, net, meta: dict) -> None:
    """A trained net as a folder: `weights.pt` (a plain state dict of CPU tensors, loadable with
    weights_only=True) and `net.json` (`meta`: what builds the architecture, plus its history)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / NET_WEIGHTS) as tmp:
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp)
    write_json(folder / NET_META, meta)


def read_net_folder(folder: str | Path, missing: str) -> tuple[dict, dict]:
    """(state dict, meta) of a net folder; a folder without net.json stops with `missing`."""
    import torch

    meta_path = Path(folder) / NET_META
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: {missing}")
    meta = json.loads(meta_path.read_text())
    return torch.load(Path(folder) / NET_WEIGHTS, map_location="cpu", weights_only=True), meta


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


SOURCE_FILE = "source.json"


def resume_folder(out: Path, stamp: dict) -> None:
    """Prepare the output folder of a per-image stage: keep the files of an interrupted run made
    from the same inputs (`stamp`, recorded in source.json), clear anything else."""
    source = out / SOURCE_FILE
    if out.exists() and (not source.is_file() or json.loads(source.read_text()) != stamp):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not source.is_file():
        write_json(source, stamp)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (class c's colour from the bits of c), 255 -> cream (ignore)."""
    palette = []
    for c in range(256):
        r = g = b = 0
        for shift in range(8):
            r |= ((c >> 0) & 1) << (7 - shift)
            g |= ((c >> 1) & 1) << (7 - shift)
            b |= ((c >> 2) & 1) << (7 - shift)
            c >>= 3
        palette += [r, g, b]
    palette[255 * 3 : 256 * 3] = [224, 224, 192]
    return palette


def save_label_png(path: str | Path, label: np.ndarray) -> None:
    """An indexed PNG with the VOC palette: pixel value = class id, 255 = ignore."""
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def label_png_path(folder: str | Path, image_id: str) -> Path:
    """Where a per-image label map lives (IR labels, pseudo labels, predictions)."""
    return Path(folder) / f"{image_id}.png"


def read_label(path: str | Path) -> np.ndarray:
    """A label map (H, W) of class ids from an indexed PNG."""
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except OSError as exc:
        raise UserError(f"{path}: unreadable label map ({exc})") from None


def colorize(label: np.ndarray) -> np.ndarray:
    """RGB rendering of a label map with the VOC palette."""
    return np.asarray(voc_palette(), np.uint8).reshape(256, 3)[label]
