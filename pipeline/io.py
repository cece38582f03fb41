"""Atomic file writing: a killed stage never leaves a half-written file or folder behind."""
from __future__ import annotations

import hashlib
import io
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


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set back at once
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create 0600 files and 0700 folders; what the stages write gets the modes
# any other file or folder gets under the user's umask.
_UMASK = _current_umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


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
        os.fchmod(fd, FILE_MODE)
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
        tmp.chmod(DIR_MODE)
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


def as_trained(history: list[dict]) -> list[dict]:
    """A training history as any run that trains the same weights repeats it: without the
    per-epoch wall times and the epoch a resumed run started from (MLflow keeps both)."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "start_epoch")} for row in history]


def save_net_folder(folder: str | Path, net, meta: dict) -> None:
    """A trained net as a folder: `weights.pt` (a plain state dict of CPU tensors, loadable with
    weights_only=True) and `net.json` (`meta`: what builds the architecture, plus its history as
    trained), so that a rerun, or a run resumed after a kill, that trains the same weights writes
    the same folder byte for byte and DVC does not rerun the stages after it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_torch(folder / NET_WEIGHTS, {k: v.cpu() for k, v in net.state_dict().items()})
    if "history" in meta:
        meta = {**meta, "history": as_trained(meta["history"])}
    write_json(folder / NET_META, meta)


def save_torch(path: str | Path, obj) -> None:
    """torch.save `obj` to `path`, atomically. Through a buffer: saved to a file, torch records the
    file's (temporary) name in the archive, and identical weights would differ byte for byte."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def read_net_folder(folder: str | Path, missing: str) -> tuple[dict, dict]:
    """(state dict, meta) of a net folder; a folder without net.json stops with `missing`."""
    import torch

    meta_path = Path(folder) / NET_META
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: {missing}")
    weights = Path(folder) / NET_WEIGHTS
    try:
        meta = json.loads(meta_path.read_text())
        return torch.load(weights, map_location="cpu", weights_only=True), meta
    except Exception as exc:  # truncated, corrupt or not ours: rerun the stage that wrote it
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{Path(folder)}: unreadable net ({type(exc).__name__}: {reason}); run its training stage again") from None


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_fingerprint(paths) -> str:
    """sha256 over each file's path, size and modification time: it changes when any of the
    files is rewritten, without reading them (a VOC-sized split stats in well under a second)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


SOURCE_FILE = "source.json"


def resume_folder(out: Path, stamp: dict) -> None:
    """Prepare the output folder of a per-image stage: keep the files of an interrupted run made
    from the same inputs (`stamp`, recorded in source.json), clear anything else. A stamp has
    two parts, `inputs` (digests of the files read) and `params` (the settings used), so that no
    setting can overwrite an input's digest."""
    if set(stamp) != {"inputs", "params"}:
        raise ValueError(f"a resume stamp has 'inputs' and 'params', not {sorted(stamp)}")
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


def per_image_path(folder: str | Path, image_id: str, suffix: str) -> Path:
    """`folder`/<image_id><suffix>, refused when the id would lead out of `folder` (a manifest
    is data, and an id such as '../../x' must not choose where a stage writes)."""
    folder = Path(folder)
    path = folder / f"{image_id}{suffix}"
    # lexically, not resolved: a folder of symlinks (a DVC cache checked out as links) is fine
    if bad_image_id(image_id) or Path(os.path.normpath(path)).parent != Path(os.path.normpath(folder)):
        raise UserError(f"{folder}: image id {image_id!r} is not a plain file name")
    return path


def bad_image_id(image_id: str) -> bool:
    """An id that is not a plain file name: empty, '.' or '..', a path (/ or \\) or a NUL."""
    return image_id in ("", ".", "..") or any(part in image_id for part in ("/", "\\", "\0"))


def label_png_path(folder: str | Path, image_id: str) -> Path:
    """Where a per-image label map lives (IR labels, pseudo labels, predictions)."""
    return per_image_path(folder, image_id, ".png")


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
