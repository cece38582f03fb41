"""Wall time of the whole `dvc repro` on the synthetic default, per stage, from a fresh clone.

    python benchmarks/pipeline_wall.py [--workdir DIR] [--keep] [--out NAME]

Clones the repository's HEAD into a fresh folder, runs `dvc repro` there as a new user would
(with this environment's packages), stamps every line of its output with the time it arrived,
and splits the run at DVC's "Running stage" lines: a stage's wall time includes its process
start-up and DVC's hashing. Then runs `dvc repro` a second time, which must run nothing.
Writes benchmarks/results/<NAME>.json (default pipeline_wall_<cpus>cpu): per-stage seconds, the
total, the second run's seconds and what it ran, and `dvc metrics show`'s figures of the run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_model, results_name, write_results

RUNNING = re.compile(r"Running stage '([^']+)'")


def clone_env(workdir: Path) -> dict:
    """This environment's packages with the clone's code (ahead of an editable install of another
    checkout), and the clone's own MLflow store."""
    env = {**os.environ, "PYTHONPATH": str(workdir), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def timed_run(command: list[str], cwd: Path, env: dict, log: Path, echo: bool = True) -> tuple[float, list[tuple[float, str]]]:
    """Run `command`, keep (and echo) its output with each line's arrival time; fail on a non-zero exit."""
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
            log.open("a", buffering=1) as sink:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
            sink.write(line)
            if echo:
                sys.stdout.write(line)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit {proc.returncode}; output in {log}")
    return time.perf_counter() - start, lines


def stage_seconds(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds from each "Running stage" line to the next one (the last one to the end)."""
    starts = [(t, m.group(1)) for t, line in lines if (m := RUNNING.search(line))]
    ends = [t for t, _ in starts[1:]] + [total]
    return {name: round(end - t, 1) for (t, name), end in zip(starts, ends)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to clone (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    parser.add_argument("--out", type=results_name, default=f"pipeline_wall_{os.cpu_count()}cpu",
                        help="results name: a machine kind's figures beside another's")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clims-wall-")) / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True).stdout.strip()
    env = clone_env(workdir)
    log = workdir.parent / "dvc_repro.log"
    print(f"fresh clone of {commit[:8]} in {workdir}; output also in {log}")

    total, lines = timed_run(["dvc", "repro"], workdir, env, log)
    again, again_lines = timed_run(["dvc", "repro"], workdir, env, log)
    metrics = json.loads(subprocess.run(["dvc", "metrics", "show", "--json"], cwd=workdir, env=env, check=True,
                                        capture_output=True, text=True).stdout)
    figures = {Path(path).stem: {k: v for k, v in data["data"].items() if k in ("miou", "context_leak", "best_threshold")}
               for path, data in next(iter(metrics.values()))["data"].items() if "miou" in data.get("data", {})}
    report = {
        "commit": commit,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "total_seconds": round(total, 1),
        "stage_seconds": stage_seconds(lines, total),
        "second_repro_seconds": round(again, 1),
        "second_repro_ran": [name for _, line in again_lines if (m := RUNNING.search(line)) for name in [m.group(1)]],
        "miou": figures,
    }
    write_results(args.out, report)
    if not args.keep:
        shutil.rmtree(workdir.parent if args.workdir is None else workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
