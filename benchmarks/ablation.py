"""The paper's ablation over seeds: which CLIMS term earns what, and what IRN's walk adds.

    python benchmarks/ablation.py [--seeds 0 1 2] [--variants otm otm_btm otm_btm_cbs full no_btm ...]
                                  [--source DIR] [--baselines RUNS] [--out ablation] [-S key=value ...]
    python benchmarks/ablation.py --reprint --out NAME     # the tables of a results file, nothing run
    python benchmarks/ablation.py --reprint NAME NAME ...  # one study run in parts (seeds, variants), pooled

For every seed (of the baseline's and CLIMS's training, and of the boundary net's) the baseline
CAM net is trained once; each CLIMS variant starts from it. Sequentially, the losses switched on
one by one: OTM; OTM+BTM; OTM+BTM+CBS; all four ("full"). Leave one out: all four but one
(`no_otm`, `no_btm`, `no_cbs`, `no_reg`), each term's share being full minus the run without it
(in the sequence L_BTM comes before L_CBS and L_REG, the terms that hold a mask off the context
and the rest of the image, so its row shows its pull into the context along with its coverage).
From the full variant's CAMs, IRN runs on: IR labels, the boundary net, pseudo labels by the
walk, then the same pseudo labels without the walk (`make_sem_seg.walk=false`: the CAMs straight
to the background score and the CRF). The stages run as their real commands in a scratch folder
per run that shares the rendered data and the CLIP of `--source` (default: this repository; run
`dvc repro prepare_data prepare_clip` there first); the folders stay in a temporary directory,
named at the start. `--baselines RUNS` takes each seed's baseline net and CAMs from the kept
folders of an earlier run (its `seed<N>-baseline`, trained with the same dataset and baseline
settings; the CLIP and the CLIMS settings may differ) instead of training it again.

Writes benchmarks/results/<out>.json (every run's figures) and prints the tables: CAM mIoU at
each net's best background threshold, the paired gain of each row over the row before it (and
each left-out term's paired share), context leak, pseudo-label mIoU; mean ± std and worst over
the seeds. Then each row's gain split by class: over the classes that kept their context state,
the background's (a mask grown over the ground), and the classes that moved onto or off their
context: where a row's swing from seed to seed comes from.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import (REPO, RESULTS, apply_overrides, cpu_model, get_key, kernel_environment, mean_std_worst,
                    results_name, set_key, write_results)

TERMS = ("otm", "btm", "cbs", "reg")
LOSS_OFF = {"otm": {"btm": 0.0, "cbs": 0.0, "reg": 0.0}, "otm_btm": {"cbs": 0.0, "reg": 0.0}, "otm_btm_cbs": {"reg": 0.0}}
VARIANTS = {
    **{name: {f"clims_loss.weights.{term}": 0.0 for term in off} for name, off in LOSS_OFF.items()},
    "full": {},
    **{f"no_{term}": {f"clims_loss.weights.{term}": 0.0} for term in TERMS},
    "camera_ready": {"clims_loss": yaml.safe_load((REPO / "conf" / "clims_loss" / "camera_ready.yaml").read_text())},
}
DEFAULT_VARIANTS = ["otm", "otm_btm", "otm_btm_cbs", "full"]
SHARED = ("data", "artifacts/clip", "metrics/clip.json")
CLIP_WEIGHTS = "artifacts/clip/weights.pt"
SEED_KEYS = ("train_cam.seed", "train_clims.seed", "train_irn.seed")


def stage(workdir: Path, name: str, *args: str) -> None:
    env = {**os.environ, "CLIMS_PIPELINE_RUN": f"ablation-{workdir.name}", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), *args], cwd=workdir, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{name} {' '.join(args)} failed in {workdir}:\n{result.stderr[-3000:]}")


def workspace(root: Path, name: str, params: dict, source: Path) -> Path:
    """A scratch run folder: its own params.yaml, metrics/ and artifacts/, the shared data and CLIP linked in."""
    folder = root / name
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    for link in SHARED:
        target = (source / link).resolve()
        (folder / link).symlink_to(target, target_is_directory=target.is_dir())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


FIGURES = ("miou", "best_threshold", "context_leak", "mask_miou")


def figures(folder: Path, record: str, keys: tuple[str, ...] = FIGURES) -> dict:
    data = json.loads((folder / "metrics" / f"{record}.json").read_text())
    return {k: data[k] for k in keys if k in data}


def cam_figures(folder: Path, cams: str) -> dict:
    """eval_cam's figures, each class's context leak and IoU (the mean hides which class takes its context)."""
    found = figures(folder, f"cam_{cams}", FIGURES + ("per_class_context_leak", "per_class_iou"))
    found["context_leak_by_class"] = found.pop("per_class_context_leak", {})
    found["iou_by_class"] = found.pop("per_class_iou", {})
    return found


BASELINE_STAGES = ("train_cam", "make_cam", "eval_cam")


def baseline_keys() -> list[str]:
    """The params the baseline's stages read (dvc.yaml), and the dataset its data is rendered from;
    a key inside another listed one (dataset.classes in dataset) is left to its parent."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    keys = {key for name in BASELINE_STAGES for key in stages[name].get("do", stages[name]).get("params", [])}
    keys.add("dataset")
    return sorted(key for key in keys if not any(key.startswith(f"{parent}.") for parent in keys))


def earlier_baseline(folder: Path, params: dict) -> Path:
    """An earlier run's baseline folder, checked to be what this run would train: the same
    params for the baseline's stages (a CLIP or CLIMS setting may differ; where Ray keeps
    checkpoints may too)."""
    if not (folder / "metrics" / "cam_baseline.json").is_file():
        raise SystemExit(f"{folder}: no finished baseline there (metrics/cam_baseline.json is missing)")
    earlier = yaml.safe_load((folder / "params.yaml").read_text())
    ours = json.loads(json.dumps(params))
    for tree in (earlier, ours):
        tree["distributed"].pop("storage", None)
    differing = [key for key in baseline_keys() if get_key(ours, key) != get_key(earlier, key)]
    if differing:
        raise SystemExit(f"{folder}/params.yaml: its baseline was trained with other params ({', '.join(differing)})")
    return folder


def pseudo_labels(folder: Path, params: dict, walk: bool) -> dict:
    """Pseudo labels of the folder's CLIMS CAMs and boundary net, with or without the walk."""
    params["make_sem_seg"]["walk"] = walk
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(folder / "artifacts" / "pseudo_labels", ignore_errors=True)
    stage(folder, "make_sem_seg")
    stage(folder, "eval_sem_seg")
    return figures(folder, "pseudo_labels")


def spread(values: list[float], lower_is_better: bool = False) -> str:
    mean, std, worst = mean_std_worst(values, lower_is_better)
    return f"{mean:.1f} ± {std:.1f} (worst {worst:.1f})"


def print_table(runs: dict, seeds: list[int], variants: list[str]) -> None:
    """The sequential rows (each paired with the row before), then each left-out term's share."""
    rows = [("baseline", "cam"), *((v, "cam") for v in [*DEFAULT_VARIANTS, "camera_ready"] if v in variants)]
    if "full" in variants and "walk" in runs[f"seed{seeds[0]}/full"]:
        rows += [("full", "no_walk"), ("full", "walk")]
    print("\n| row | mIoU | gain over the row before (paired) | context leak |\n|---|---|---|---|")
    previous = None
    for variant, kind in rows:
        per_seed = [runs[f"seed{s}/{variant}"][kind] for s in seeds]
        miou = [r["miou"] for r in per_seed]
        gain = "-"
        if previous is not None:
            gain = spread([m - p for m, p in zip(miou, previous)])
        label = {"cam": f"{variant} CAM", "no_walk": "full: pseudo labels, no walk", "walk": "full: pseudo labels, IRN walk"}[kind]
        print(f"| {label} | {spread(miou)} | {gain} | {leak(per_seed)} |")
        previous = miou
    print_context_split(runs, seeds, [variant for variant, kind in rows if kind == "cam"])
    left_out = [term for term in TERMS if f"no_{term}" in variants]
    if "full" not in variants or not left_out:
        return
    print("\n| left out | mIoU | the term's share: full minus this run (paired) | context leak |\n|---|---|---|---|")
    full = [runs[f"seed{s}/full"]["cam"]["miou"] for s in seeds]
    for term in left_out:
        per_seed = [runs[f"seed{s}/no_{term}"]["cam"] for s in seeds]
        miou = [r["miou"] for r in per_seed]
        share = spread([f - m for f, m in zip(full, miou)])
        print(f"| L_{term.upper()} | {spread(miou)} | {share} | {leak(per_seed)} |")


ON_CONTEXT = 50.0  # a class is on its context where its CAM covers at least half of it (most leaks are near 0 or 100)


def context_split(before: dict, after: dict) -> tuple[float, float, list[str]]:
    """One seed's change from one row to the next, split: the mean IoU gain over the object classes
    whose context state held (on it in both runs or off it in both), the background's IoU gain (a
    mask grown over the unrelated ground costs it, not the context leak), and the classes that moved."""
    held, moved = [], []
    for name, leak_after in after["context_leak_by_class"].items():
        on_before, on_after = before["context_leak_by_class"][name] >= ON_CONTEXT, leak_after >= ON_CONTEXT
        if on_before == on_after:
            held.append(after["iou_by_class"][name] - before["iou_by_class"][name])
        else:
            moved.append(f"{name} {'onto' if on_after else 'off'}")
    background = after["iou_by_class"]["background"] - before["iou_by_class"]["background"]
    return (sum(held) / len(held) if held else float("nan")), background, moved


def print_context_split(runs: dict, seeds: list[int], rows: list[str]) -> None:
    """Each sequential row's gain split by class: the mean alone hides whether a seed's swing comes
    from a class taking or leaving its context (a step of a whole class), from the ground or from
    the classes in between."""
    cams = {row: [runs[f"seed{s}/{row}"]["cam"] for s in seeds] for row in rows}
    if not all(cam.get("iou_by_class") for per_seed in cams.values() for cam in per_seed):
        return  # results files from before the per-class IoU was kept
    print(f"\n| row | IoU gain of the classes that kept their context state (paired) | background's IoU gain | "
          f"classes that moved onto or off their context (leak crossing {ON_CONTEXT:.0f} %) |\n|---|---|---|---|")
    for previous, row in zip(rows, rows[1:]):
        split = [context_split(b, a) for b, a in zip(cams[previous], cams[row])]
        moves = "; ".join(f"seed {s}: {', '.join(moved)}" for s, (*_, moved) in zip(seeds, split) if moved) or "none"
        print(f"| {row} CAM | {spread([held for held, _, _ in split])} | {spread([bg for _, bg, _ in split])} | {moves} |")


def leak(per_seed: list[dict]) -> str:
    if "context_leak" not in per_seed[0]:
        return ""
    return spread([r["context_leak"] for r in per_seed], lower_is_better=True) + " %"


WITHOUT_CBS = {"baseline"} | {name for name, changed in VARIANTS.items() if changed.get("clims_loss.weights.cbs") == 0.0}
TAU = "clims_loss.tau"


def same_clip(a: dict, b: dict) -> bool:
    """Whether two results files' runs shared one CLIP: the same training settings and final loss,
    and the same weights where both record them. Not its probe figures, which depend on the world
    it was probed on."""
    keys = ["train", "train_final_loss"] + (["weights_sha256"] if "weights_sha256" in a and "weights_sha256" in b else [])
    return all(a.get(k) == b.get(k) for k in keys)


def read_overrides(overrides: list[str], variant: str) -> tuple[str, ...]:
    """The overrides a run of `variant` reads: not a clip.* one (an earlier file's; the runs share
    --source's CLIP, compared apart), and tau only where L_CBS is on."""
    keys = [(o.split("=", 1)[0], o) for o in overrides]
    return tuple(sorted(o for key, o in keys if not key.startswith("clip.") and not (key == TAU and variant in WITHOUT_CBS)))


def reprint(names: list[str]) -> None:
    """The tables of benchmarks/results/<name>.json, pooled over the files of one study run in
    parts, from the seeds and variants they hold. The files must share their CLIP, and the runs
    the overrides they read: a run without L_CBS pools across files that differ only in tau."""
    runs, clip = {}, None
    with_cbs, any_run = {}, {}  # the overrides runs read -> the first file with such runs
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{path} does not exist")
        results = json.loads(path.read_text())
        if clip is not None and not same_clip(results.get("clip", {}), clip[1]):
            raise SystemExit(f"{path}: its CLIP differs from {clip[0]}'s; not one study")
        clip = clip or (path.name, results.get("clip"))
        for key, run in results["runs"].items():
            run = run if "cam" in run else {"cam": run}  # the oldest files hold the CAM figures at the top level
            if key in runs and runs[key] != run:
                raise SystemExit(f"{path}: its {key} differs from an earlier file's; not one study")
            runs[key] = run
            variant = key.split("/")[1]
            read = read_overrides(results["overrides"], variant)
            if variant not in WITHOUT_CBS:
                with_cbs.setdefault(read, path.name)
            any_run.setdefault(tuple(o for o in read if not o.startswith(f"{TAU}=")), path.name)
        for found in (with_cbs, any_run):
            if len(found) > 1:
                raise SystemExit(f"{path}: its runs read other overrides than {next(iter(found.values()))}'s "
                                 f"({' vs '.join(map(str, found))}); not one study")
    seeds = sorted({int(key.split("/")[0].removeprefix("seed")) for key in runs})
    variants = [v for v in VARIANTS if all(f"seed{s}/{v}" in runs for s in seeds)]
    print_table(runs, seeds, variants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--source", type=Path, default=REPO, help="the repository whose data and CLIP the runs share")
    parser.add_argument("--baselines", type=Path, help="an earlier run's folder: reuse its seeds' baseline nets and CAMs")
    parser.add_argument("--out", type=results_name, default="ablation", help="results name: benchmarks/results/<out>.json")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value (YAML value), applied to every run")
    parser.add_argument("--reprint", nargs="*", metavar="NAME",
                        help="print the tables of these results files pooled (none named: --out's); run nothing")
    args = parser.parse_args()
    if args.reprint is not None:
        return reprint(args.reprint or [args.out])
    source = args.source.resolve()
    for path in SHARED:
        if not (source / path).exists():
            raise SystemExit(f"{source / path} is missing: run `dvc repro prepare_data prepare_clip` there first")
    sourced = yaml.safe_load((source / "params.yaml").read_text())
    base = apply_overrides(json.loads(json.dumps(sourced)), args.overrides)  # a copy: applied in place
    if base["clip"] != sourced["clip"]:  # a clip.* override would change only what the results say
        raise SystemExit(f"-S clip.*: the runs share the CLIP of {source} (as its params.yaml says); train the CLIP you want there")
    # which CLIP the runs share: its training settings, its weights and its figures
    clip = {"train": base["clip"]["train"], "weights_sha256": hashlib.sha256((source / CLIP_WEIGHTS).read_bytes()).hexdigest(),
            **json.loads((source / "metrics" / "clip.json").read_text())}

    runs: dict[str, dict] = {}
    root = Path(tempfile.mkdtemp(prefix="ablation_"))
    print(f"run folders (kept; benchmarks/walk_diagnosis.py --source <one>): {root}", flush=True)
    for seed in args.seeds:
        params = json.loads(json.dumps(base))
        for key in SEED_KEYS:
            set_key(params, key, seed)
        params["distributed"]["storage"] = str(root / "ray")
        name = f"seed{seed}"
        if args.baselines:
            folder = earlier_baseline(args.baselines / f"{name}-baseline", params)
        else:
            folder = workspace(root, f"{name}-baseline", params, source)
            for step in (("train_cam",), ("make_cam", "baseline"), ("eval_cam", "baseline")):
                stage(folder, *step)
        runs[f"{name}/baseline"] = {"cam": cam_figures(folder, "baseline")}
        print(name, "baseline", runs[f"{name}/baseline"], flush=True)
        for variant in args.variants:
            changed = json.loads(json.dumps(params))
            for key, value in VARIANTS[variant].items():
                set_key(changed, key, value)
            run = workspace(root, f"{name}-{variant}", changed, source)
            (run / "artifacts" / "net_baseline").symlink_to(folder / "artifacts" / "net_baseline")
            for step in (("train_clims",), ("make_cam", "clims"), ("eval_cam", "clims")):
                stage(run, *step)
            runs[f"{name}/{variant}"] = {"cam": cam_figures(run, "clims")}
            if variant == "full":
                for step in (("make_ir_label",), ("train_irn",)):
                    stage(run, *step)
                runs[f"{name}/{variant}"]["walk"] = pseudo_labels(run, changed, walk=True)
                runs[f"{name}/{variant}"]["no_walk"] = pseudo_labels(run, changed, walk=False)
            print(name, variant, runs[f"{name}/{variant}"], flush=True)
            write_results(args.out, {"source": str(source), "clip": clip, "overrides": args.overrides, "cpu": cpu_model(),
                                     "environment": kernel_environment(), "seed_keys": SEED_KEYS, "runs": runs}, quiet=True)

    print_table(runs, args.seeds, args.variants)
    print(f"\nper-seed figures: benchmarks/results/{args.out}.json")


if __name__ == "__main__":
    main()
