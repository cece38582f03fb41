"""The check_params stage's check of the files params name: it runs before every other stage,
because DVC removes a stage's outputs before running it."""
from __future__ import annotations

from pathlib import Path

from pipeline.data.real import dataset_root
from pipeline.errors import UserError
from pipeline.params import Params


def check_named_files(params: Params) -> None:
    """The files and folders params name exist: the dataset root (VOC, COCO), the CLIP and
    backbone weights. check_params runs this before any stage that writes, so that a wrong path
    stops `dvc repro` before DVC removes the outputs of the stage that would read it."""
    if params.dataset.name != "synthetic" and not dataset_root(params.dataset).is_dir():
        raise UserError(f"{dataset_root(params.dataset)}: dataset.root is not a folder (where {params.dataset.name} should be)")
    named = {"clip.weights": getattr(params.clip, "weights", None), "backbone.weights": params.backbone.weights}
    for key, path in named.items():
        if path and not Path(path).expanduser().is_file():
            raise UserError(f"{path}: {key} names no file")
