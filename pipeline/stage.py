"""What every stage does around its work: validate params first, turn user errors into one line."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from pipeline.allocator import keep_freed_memory
from pipeline.errors import UserError
from pipeline.params import load_params


def run_stage(work: Callable[..., None], choices: tuple[str, ...] = (), argv: list[str] | None = None) -> None:
    """Run `work(params)`, or `work(params, choice)` for a `foreach` stage whose one command-line
    argument is one of `choices`. Its settings come from params.yaml, so anything else on the
    command line (`--help` too) prints the stage's usage and runs nothing: a stage left running by
    a flag it ignores would retrain and overwrite its outputs. Bad params, bad input and the OS's
    refusals (disk full, permission denied) exit with status 2 and one line on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != (1 if choices else 0) or (choices and argv[0] not in choices):
        _usage(choices, asked=argv in (["-h"], ["--help"]))
    keep_freed_memory()
    try:
        params = load_params()
        work(params, *argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _usage(choices: tuple[str, ...], asked: bool) -> NoReturn:
    usage = f"usage: python {sys.argv[0]}" + (f" {{{','.join(choices)}}}" if choices else "")
    if asked:
        about = (sys.modules["__main__"].__doc__ or "").strip()
        print(f"{usage}\n\n{about}\nIts settings: params.yaml. `dvc repro` runs every stage that is out of date.")
        sys.exit(0)
    print(f"error: {usage} (the settings come from params.yaml; --help says more)", file=sys.stderr)
    sys.exit(2)
