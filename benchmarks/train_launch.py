"""A training stage's wall time under each launcher, side by side: what Ray Train's start costs.

    python benchmarks/train_launch.py [--epochs 1] [--repeats 3] [--keep]

In one fresh clone of HEAD (its data rendered once), runs `stages/train_cam.py` of the synthetic
default in a new process (after one untimed run), with `distributed.launcher` ray and local in
turn, `--repeats` times each (which goes first alternating), `train_cam.epochs` lowered to
`--epochs`: each process timed as `dvc repro` sees a stage (start-up, imports, Ray's start and
its workers, the training, MLflow). Reports each run's seconds, the median of ray minus local's
(the fixed cost a one-worker run pays for Ray Train) and whether every run trained the same
weights. The default trains 4 nets (train_cam, train_clims, train_irn, train_seg). Writes
benchmarks/results/train_launch_<cpus>cpu.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from common import REPO, apply_overrides, cpu_model, write_results
from pipeline_wall import clone_env, timed_run

WEIGHTS = Path("artifacts/net_baseline/weights.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="clims-launch-")) / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    env, log = clone_env(clone), clone.parent / "train_launch.log"
    params = yaml.safe_load((clone / "params.yaml").read_text())

    def run_stage(script: str, *overrides: str) -> float:
        """Seconds of one stage's process, `overrides` applied to the clone's params first."""
        apply_overrides(params, list(overrides))
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return timed_run([sys.executable, script], clone, env, log, echo=False)[0]

    run_stage("stages/prepare_data.py", f"train_cam.epochs={args.epochs}")
    seconds: dict[str, list[float]] = {"ray": [], "local": []}
    first, same = None, True
    run_stage("stages/train_cam.py")  # untimed: the first process reads every file from disk
    for repeat in range(args.repeats):
        for launcher in sorted(seconds, reverse=repeat % 2 == 1):  # alternate which goes first
            seconds[launcher].append(round(run_stage("stages/train_cam.py", f"distributed.launcher={launcher}"), 1))
            weights = torch.load(clone / WEIGHTS, map_location="cpu", weights_only=True)
            first = first or weights
            same = same and first.keys() == weights.keys() and all(torch.equal(first[k], weights[k]) for k in first)
            print(f"{launcher}: {seconds[launcher][-1]} s", flush=True)
    ray, local = statistics.median(seconds["ray"]), statistics.median(seconds["local"])
    report = {"commit": commit, "cpu": cpu_model(), "cpus": os.cpu_count(), "stage": "train_cam", "epochs": args.epochs,
              "seconds": seconds, "ray_minus_local_seconds": round(ray - local, 1),
              "ray_over_local": round(ray / local, 2), "same_weights": same}
    write_results(f"train_launch_{os.cpu_count()}cpu", report)
    if not args.keep:
        shutil.rmtree(clone.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
