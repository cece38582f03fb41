"""The whole pipeline over several seeds: does every claim of the default hold on every run?

    python benchmarks/seeds.py [--runs 5] [--vary clip|nets|world|all] [--first-seed 0]
                               [--workdir DIR] [--out seeds] [-S key=value ...]
    python benchmarks/seeds.py --summarize NAME [NAME ...] [--with-committed]

Clones the repository's HEAD once into a fresh folder (or reuses the clone in --workdir, with
its DVC cache) and runs `dvc repro` there once per seed,
with this environment's packages: run i sets seed first_seed + i on what --vary names (clip: the
tiny CLIP's training; nets: the baseline, CLIMS, IRN and segmentation nets; world: the rendered
data; all: every one of them). Stages whose settings a run shares with an earlier one come from
DVC's run cache. Writes benchmarks/results/<out>.json after every run (each run's seeds,
seconds in all and per stage, headline figures, pipeline/headline.py) and prints mean, std and worst of each
figure and how many runs satisfy each claim. Started again with the same commit, --vary and
overrides, it keeps the runs already in the results file and does the rest.

--summarize prints the same table over the runs of several results files (studies run in parts,
on several machines), with --with-committed the repository's own metrics/ as one more run; each
run is listed with its file, commit and processor.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import REPO, RESULTS, apply_overrides, cpu_model, mean_std_worst, results_name, set_key, write_results
from pipeline_wall import clone_env, stage_seconds, timed_run

sys.path.insert(0, str(REPO))
from pipeline.headline import check_claims, read_headlines  # noqa: E402

SEED_KEYS = {
    "clip": ("clip.train.seed",),
    "nets": ("train_cam.seed", "train_clims.seed", "train_irn.seed", "train_seg.seed"),
    "world": ("dataset.seed",),
}
SEED_KEYS["all"] = sum(SEED_KEYS.values(), ())
# a higher figure is better except for these; "worst" is the other end
LOWER_IS_BETTER = ("context_leak",)


def summary(runs: list[dict]) -> dict[str, dict]:
    """Mean, population std and worst of every headline figure over the runs."""
    keys = sorted({key for run in runs for key in run["figures"]})
    table = {}
    for key in keys:
        values = [run["figures"][key] for run in runs if key in run["figures"]]
        mean, std, worst = mean_std_worst(values, lower_is_better=key.endswith(LOWER_IS_BETTER))
        table[key] = {"mean": mean, "std": std, "worst": worst, "runs": len(values)}
    return table


def study_summary(runs: list[dict]) -> dict:
    """Mean, std and worst of every figure, and on how many runs each claim holds."""
    return {"summary": summary(runs),
            "claims_held": {claim: sum(bool(run["claims"][claim]) for run in runs) for claim in runs[0]["claims"]}}


def study(commit: str, args, runs: list[dict]) -> dict:
    """The results file: every run, the summary over them and how many runs hold each claim."""
    return {"commit": commit, "vary": args.vary, "overrides": args.overrides, "runs": runs, **study_summary(runs)}


def print_summary(report: dict, runs: list[dict]) -> None:
    print(f"\n{'figure':32s} {'mean':>7s} {'std':>6s} {'worst':>7s}   over {len(runs)} runs varying {report['vary']} seeds")
    for key, row in report["summary"].items():
        fewer = f"   on {row['runs']} of them" if row.get("runs", len(runs)) < len(runs) else ""  # a figure older runs lack
        print(f"{key:32s} {row['mean']:7.2f} {row['std']:6.2f} {row['worst']:7.2f}{fewer}")
    for claim, held in report["claims_held"].items():
        print(f"{claim:50s} held on {held} of {len(runs)} runs")


def committed_run(metrics_dir: Path) -> dict:
    """A committed metrics/ folder as a run of seed 0 (the default's seeds)."""
    figures = read_headlines(metrics_dir)
    if not figures:
        raise SystemExit(f"{metrics_dir}: no headline metrics here")
    return {"seed": 0, "figures": figures, "claims": check_claims(figures), "source": f"{metrics_dir.name}/ (committed)"}


def summarize(paths: list[Path], committed: Path | None = None) -> dict:
    """The summary over the runs of several results files, which must vary the same seeds under
    the same overrides (and of a committed metrics folder, if given); printed and returned."""
    runs, settings = ([committed_run(committed)] if committed else []), {}
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: no such results file")
        report = json.loads(path.read_text())
        settings[path.name] = (report["vary"], report["overrides"])
        runs += [{**run, "source": f"{path.name} @ {report['commit'][:8]}"} for run in report["runs"]]
    if len({json.dumps(setting) for setting in settings.values()}) > 1:
        raise SystemExit("not one study: " + "; ".join(f"{name} varies {vary} seeds with overrides {overrides}"
                                                      for name, (vary, overrides) in settings.items()))
    for run in runs:
        print(f"seed {run['seed']}: {run['source']}, {run.get('cpu', 'processor not recorded')}")
    report = {"vary": next(iter(settings.values()))[0], **study_summary(runs)}
    print_summary(report, runs)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--vary", choices=list(SEED_KEYS), default="all")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first run (0: the committed default)")
    parser.add_argument("--workdir", type=Path, help="where to clone (default: a new temporary folder)")
    parser.add_argument("--out", type=results_name, default="seeds", help="results name: benchmarks/results/<out>.json")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value (YAML value), every run")
    parser.add_argument("--summarize", nargs="+", metavar="NAME", help="summarize these results files; run nothing")
    parser.add_argument("--with-committed", action="store_true", help="with --summarize: the committed metrics/ as a run")
    args = parser.parse_args()
    if args.summarize:
        summarize([RESULTS / f"{name}.json" for name in args.summarize], REPO / "metrics" if args.with_committed else None)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clims-seeds-")) / "clone"
    if not (workdir / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=workdir, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True).stdout.strip()
    env, log = clone_env(workdir), workdir.parent / "dvc_repro.log"
    base = apply_overrides(yaml.safe_load((workdir / "params.yaml").read_text()), args.overrides)
    print(f"{args.runs} runs varying {args.vary} seeds, clone of {commit[:8]} in {workdir}; output in {log}", flush=True)

    runs: list[dict] = []
    earlier = RESULTS / f"{args.out}.json"
    if earlier.is_file():  # an interrupted study of the same commit, seeds and overrides goes on
        report = json.loads(earlier.read_text())
        if (report["commit"], report["vary"], report["overrides"]) == (commit, args.vary, args.overrides):
            runs = [run for run in report["runs"] if args.first_seed <= run["seed"] < args.first_seed + args.runs]
    for seed in range(args.first_seed, args.first_seed + args.runs):
        if any(run["seed"] == seed for run in runs):
            continue
        params = json.loads(json.dumps(base))
        for key in SEED_KEYS[args.vary]:
            set_key(params, key, seed)
        (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        seconds, lines = timed_run(["dvc", "repro"], workdir, env, log, echo=False)
        figures = read_headlines(workdir / "metrics")
        runs.append({"seed": seed, "seeds": {key: seed for key in SEED_KEYS[args.vary]}, "cpu": cpu_model(),
                     "seconds": round(seconds, 1), "stage_seconds": stage_seconds(lines, seconds), "figures": figures,
                     "claims": check_claims(figures)})
        print(f"seed {seed}: {runs[-1]['seconds']:.0f} s, " + ", ".join(
            f"{k} {v:.1f}" for k, v in figures.items() if k.endswith(("miou", "context_leak"))), flush=True)
        write_results(args.out, study(commit, args, runs), quiet=True)

    print_summary(study(commit, args, runs), runs)


if __name__ == "__main__":
    main()
