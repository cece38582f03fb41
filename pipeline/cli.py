"""The `clims` command."""
from __future__ import annotations

import argparse
import os
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


def _sweep(args) -> None:
    import yaml

    from pipeline.params import load_params, validate
    from pipeline.sweep import run_sweep, sweep_dir

    params = load_params()
    given = {"name": args.name, "num_samples": args.num_samples, "search": args.search, "epochs": args.epochs}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides:  # validated like params.yaml itself
        raw = params.model_dump()
        raw["sweep"].update(overrides)
        params = validate(raw, "params.yaml + command line")
    report = run_sweep(params)
    print(f"\nbest of {report['trials']} trials ({sweep_dir(params.sweep.name) / 'best.yaml'}):")
    print(yaml.safe_dump(report, sort_keys=False, width=1000).rstrip())


def _report(args) -> None:
    from pipeline.headline import format_report, read_headlines

    figures = read_headlines(args.metrics)
    if not figures:
        raise UserError(f"{args.metrics}/: no metrics yet; run `dvc repro`")
    print(format_report(figures))


def _ui(args) -> None:
    from pipeline.distributed import bindable_port
    from pipeline.params import load_params
    from pipeline.tracking import is_server, tracking_uri

    uri = tracking_uri(load_params().tracking.uri)
    if is_server(uri):  # a tracking server serves its own UI
        print(f"MLflow UI: {uri} (the tracking server's)")
        return
    port = bindable_port(args.host, args.port)
    print(f"MLflow UI on {uri}: http://{args.host}:{port}", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(port)]
    os.execv(sys.executable, command)  # the server replaces this process: Ctrl-C stops it


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
    p = sub.add_parser("sweep", help="Ray Tune over the CLIMS loss weights and tau (params: sweep); resumes by name")
    p.add_argument("--name", help="sweep.name: its folder sweeps/<name>/ and its MLflow parent run")
    p.add_argument("--num-samples", type=int, help="sweep.num_samples: trials")
    p.add_argument("--search", help="sweep.search: random | grid | optuna")
    p.add_argument("--epochs", type=int, help="sweep.epochs: CLIMS epochs per trial")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("report", help="the headline figures and the default's claims, from metrics/")
    p.add_argument("--metrics", type=Path, default=Path("metrics"), help="the metrics folder (default: metrics)")
    p.set_defaults(func=_report)
    p = sub.add_parser("ui", help="the MLflow UI on the project's tracking store")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
