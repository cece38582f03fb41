"""The per-image stages' reading and writing, beside the device's work.

On a GPU a per-image stage would otherwise wait while the host decodes the next batch's files
and writes the last batch's results (a third of make_cam's time at VOC size:
benchmarks/results/cam_transfer_cuda.json). One thread reads a few batches ahead and one writes
behind; the arithmetic, and so every file written, is the same as one after the other.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from pipeline.data.cam_files import cam_path, load_cam
from pipeline.data.images import load_image
from pipeline.data.manifest import ImageRecord
from pipeline.io import atomic_path, save_label_png

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def load_images(records: list[ImageRecord]) -> torch.Tensor:
    """The records' images (N, 3, H, W) in [0, 1]; they share a size (same_shape_batches)."""
    return torch.stack([load_image(r.image_path) for r in records])


def images_and_cams(records: list[ImageRecord], cam_folder) -> tuple[torch.Tensor, list[dict[str, np.ndarray]]]:
    """The records' images and their CAM files (pipeline.data.cam_files) in `cam_folder`."""
    return load_images(records), [load_cam(cam_path(cam_folder, r.image_id)) for r in records]


def save_label(path, label: np.ndarray) -> None:
    """A label PNG (pipeline.io.save_label_png), whole or absent."""
    with atomic_path(path) as tmp:
        save_label_png(tmp, label)


def read_ahead(items: Iterable[Item], load: Callable[[Item], Loaded], depth: int = 2) -> Iterator[tuple[Item, Loaded]]:
    """(item, load(item)) for each item in order, `load` running in a thread up to `depth` items
    ahead of the consumer. An error of `load` is raised where its item would have been."""
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending: deque[tuple[Item, Future]] = deque()
        for item in items:
            pending.append((item, pool.submit(load, item)))
            if len(pending) > depth:
                first, loaded = pending.popleft()
                yield first, loaded.result()
        while pending:
            first, loaded = pending.popleft()
            yield first, loaded.result()


@contextmanager
def written_behind(depth: int = 64) -> Iterator[Callable[..., None]]:
    """A `write(function, *args)` that runs the write in a thread; at most `depth` wait at once
    (their arrays stay in memory until written). Leaving the block waits for every write and
    raises the first error; each write is whole or absent (pipeline.io.atomic_path), so a stage
    stopped half-way leaves only whole files."""
    with ThreadPoolExecutor(1, thread_name_prefix="write-behind") as pool:
        pending: deque[Future] = deque()

        def write(function: Callable[..., None], *args) -> None:
            pending.append(pool.submit(function, *args))
            while len(pending) > depth or (pending and pending[0].done()):
                pending.popleft().result()

        yield write
        while pending:
            pending.popleft().result()
