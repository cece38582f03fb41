"""The `clims` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import UserError


def _compose(args) -> None:
    from hydra.errors import HydraException

    from pipeline.config import compose, to_yaml
    from pipeline.io import atomic_path
    from pipeline.params import PARAMS_FILE, validate

    try:
        composed = compose(args.overrides)
        validate(composed, "conf/")
        text = to_yaml(composed)
    except HydraException as exc:
        raise UserError(f"conf/: {str(exc).splitlines()[0]}") from None
    if args.check:
        if Path(PARAMS_FILE).read_text() != text:
            raise UserError(f"{PARAMS_FILE} differs from conf/ composed; run `clims compose`")
        print(f"{PARAMS_FILE} matches conf/")
        return
    with atomic_path(PARAMS_FILE) as tmp:
        tmp.write_text(text)
    print(f"wrote {PARAMS_FILE} from conf/ {' '.join(args.overrides)}".rstrip())


def _check(args) -> None:
    from pipeline.params import load_params

    load_params(args.params)
    print(f"{args.params}: ok")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clims", description="CLIMS weakly supervised segmentation pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compose", help="compose conf/ (+ Hydra overrides) into params.yaml for `dvc repro`")
    p.add_argument("overrides", nargs="*", help="e.g. dataset.cooccurrence=0.5 clip=vit_b32")
    p.add_argument("--check", action="store_true", help="only check that params.yaml matches conf/")
    p.set_defaults(func=_compose)
    p = sub.add_parser("check", help="validate params.yaml against the schema")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_check)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
