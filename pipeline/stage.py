"""What every stage does around its work: validate params first, turn user errors into one line;
and the check_params stage's check, which runs before every other stage."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from pipeline.errors import UserError
from pipeline.params import Params, load_params


def run_stage(work: Callable[[Params], None]) -> None:
    """Run `work(params)`; bad params, bad input and the OS's refusals (disk full, permission
    denied) exit with status 2 and one line on stderr."""
    try:
        params = load_params()
        work(params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def stage_argument(choices: tuple[str, ...]) -> str:
    """The one command-line argument of a `foreach` stage (which net it works on)."""
    if len(sys.argv) != 2 or sys.argv[1] not in choices:
        raise UserError(f"usage: {sys.argv[0]} {{{','.join(choices)}}}")
    return sys.argv[1]


def check_named_files(params: Params) -> None:
    """The files and folders params name exist: the dataset root (VOC, COCO), the CLIP and
    backbone weights. check_params runs this before any stage that writes, so that a wrong path
    stops `dvc repro` before DVC removes the outputs of the stage that would read it."""
    from pipeline.data.real import dataset_root

    if params.dataset.name != "synthetic" and not dataset_root(params.dataset).is_dir():
        raise UserError(f"{dataset_root(params.dataset)}: dataset.root is not a folder (where {params.dataset.name} should be)")
    named = {"clip.weights": getattr(params.clip, "weights", None), "backbone.weights": params.backbone.weights}
    for key, path in named.items():
        if path and not Path(path).expanduser().is_file():
            raise UserError(f"{path}: {key} names no file")
