"""Each class's context leak of a run's CAMs, at the net's own best background threshold.

    python benchmarks/leak_by_class.py RUN [RUN ...] [--cams clims]

RUN is a folder where eval_cam ran on the synthetic world (this repository after `dvc repro`, or
a run folder of benchmarks/ablation.py). eval_cam's context_leak is the mean of these over the
classes, so one class that takes its whole context moves it by a sixth of that class's share.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import chdir
from pathlib import Path

import numpy as np

from common import REPO

sys.path.insert(0, str(REPO))
from pipeline import layout  # noqa: E402
from pipeline.cam.evaluate import cam_predictions  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.scoring import context_ids, threshold_totals, with_ground_truth  # noqa: E402


def context_leak_by_class(folder: Path, cams: str = "clims") -> dict[str, float]:
    """{class name: % of its context pixels given to it} at eval_cam's best threshold for `cams`
    ({} outside the synthetic world: no context map)."""
    with chdir(folder):  # the pipeline's paths are relative to the run folder
        params = load_params()
        contexts = context_ids(params.dataset)
        if contexts is None:
            return {}
        threshold = json.loads((layout.METRICS_DIR / f"cam_{cams}.json").read_text())["best_threshold"]
        records = with_ground_truth(read_manifest(layout.manifest_path(layout.TRAIN_EVAL)))
        predictions = cam_predictions(layout.cams_dir(cams), "high_res", np.array([threshold]))
        totals = threshold_totals(records, predictions, 1, len(params.dataset.class_names), contexts)
    return {name: float(100 * leaked / context) for name, leaked, context
            in zip(params.dataset.class_names, totals.leaked[0], totals.context) if context > 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="folders where eval_cam ran")
    parser.add_argument("--cams", default="clims", choices=layout.CAM_NETS)
    args = parser.parse_args()
    for run in args.runs:
        by_class = context_leak_by_class(run.resolve(), args.cams)
        shown = ", ".join(f"{name} {leak:.1f} %" for name, leak in by_class.items())
        print(f"{run}: {shown or 'no context map (not the synthetic world)'}")


if __name__ == "__main__":
    main()
