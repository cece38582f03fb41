"""CLIMS against the baseline CAM over several seeds, with the ablations (no CBS, no BTM).

For every seed the baseline is trained once; each CLIMS variant starts from it. The stages run
as their real commands in a scratch folder per run that shares this repository's rendered data
and CLIP (run `dvc repro prepare_clip` first), so the workspace is left as it was.

    python benchmarks/cam_seeds.py [--seeds 0 1 2] [--variants full no_cbs no_btm camera_ready] [-S key=value ...]

Writes benchmarks/results/cam_seeds.json (or --out) and prints a table (CAM mIoU at each net's best
background threshold, P's mIoU, context leak).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full": {},
    "no_cbs": {"clims_loss.weights.cbs": 0.0},
    "no_btm": {"clims_loss.weights.btm": 0.0},
    "camera_ready": {"clims_loss": yaml.safe_load((REPO / "conf" / "clims_loss" / "camera_ready.yaml").read_text())},
}
DEFAULT_VARIANTS = ["full", "no_cbs", "no_btm"]
SHARED = ("data", "artifacts/clip", "metrics/clip.json")


def set_key(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def stage(workdir: Path, name: str, *args: str) -> None:
    env = {**os.environ, "CLIMS_PIPELINE_RUN": f"bench-{workdir.name}"}
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), *args], cwd=workdir, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{name} {' '.join(args)} failed in {workdir}:\n{result.stderr[-3000:]}")


def workspace(root: Path, name: str, params: dict, links: tuple[str, ...]) -> Path:
    folder = root / name
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    for link in links:
        target = REPO / link if link in SHARED else root / link
        (folder / link).symlink_to(target.resolve(), target_is_directory=target.is_dir())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def scores(folder: Path, net: str) -> dict:
    data = json.loads((folder / "metrics" / f"cam_{net}.json").read_text())
    return {k: data[k] for k in ("miou", "best_threshold", "context_leak", "mask_miou")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/cam_seeds.json", help="results file (relative to the repository)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value (YAML value), applied to every run")
    args = parser.parse_args()
    for path in SHARED:
        if not (REPO / path).exists():
            raise SystemExit(f"{path} is missing: run `dvc repro prepare_clip` first")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for override in args.overrides:
        key, value = override.split("=", 1)
        set_key(base, key, yaml.safe_load(value))

    results: dict[str, dict] = {}
    root = Path(tempfile.mkdtemp(prefix="cam_seeds_"))
    for seed in args.seeds:
        params = json.loads(json.dumps(base))
        params["train_cam"]["seed"] = params["train_clims"]["seed"] = seed
        params["distributed"]["storage"] = str(root / "ray")
        name = f"seed{seed}"
        folder = workspace(root, f"{name}-baseline", params, ("data", "artifacts/clip", "metrics/clip.json"))
        for step in (("train_cam",), ("make_cam", "baseline"), ("eval_cam", "baseline")):
            stage(folder, *step)
        results[f"{name}/baseline"] = scores(folder, "baseline")
        print(name, "baseline", results[f"{name}/baseline"], flush=True)
        for variant in args.variants:
            changed = json.loads(json.dumps(params))
            for key, value in VARIANTS[variant].items():
                set_key(changed, key, value)
            run = workspace(root, f"{name}-{variant}", changed, ("data", "artifacts/clip", "metrics/clip.json"))
            (run / "artifacts" / "net_baseline").symlink_to(folder / "artifacts" / "net_baseline")
            for step in (("train_clims",), ("make_cam", "clims"), ("eval_cam", "clims")):
                stage(run, *step)
            results[f"{name}/{variant}"] = scores(run, "clims")
            print(name, variant, results[f"{name}/{variant}"], flush=True)

    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": args.overrides, "runs": results}, indent=2) + "\n")
    print("\n| run | CAM mIoU (best t) | gain over baseline | P mIoU | context leak |\n|---|---|---|---|---|")
    for kind in ["baseline", *args.variants]:
        rows = [results[f"seed{s}/{kind}"] for s in args.seeds]
        gains = [results[f"seed{s}/{kind}"]["miou"] - results[f"seed{s}/baseline"]["miou"] for s in args.seeds]
        mean = lambda xs: f"{statistics.mean(xs):.1f} ± {statistics.pstdev(xs):.1f}"
        print(f"| {kind} | {mean([r['miou'] for r in rows])} | {mean(gains) if kind != 'baseline' else '-'} | "
              f"{mean([r['mask_miou'] for r in rows])} | {mean([r['context_leak'] for r in rows])} % |")
    print(f"\nper-seed figures: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
