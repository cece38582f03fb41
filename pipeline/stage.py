"""What every stage does around its work: validate params first, turn user errors into one line."""
from __future__ import annotations

import sys
from typing import Callable

from pipeline.allocator import keep_freed_memory
from pipeline.errors import UserError
from pipeline.params import Params, load_params


def run_stage(work: Callable[[Params], None]) -> None:
    """Run `work(params)`; bad params, bad input and the OS's refusals (disk full, permission
    denied) exit with status 2 and one line on stderr."""
    keep_freed_memory()
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

