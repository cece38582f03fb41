"""What the CAM stages record: per-epoch histories and threshold curves (DVC plots and MLflow),
and the CBS threshold tau derived from the CLIP's own cosines."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline import layout
from pipeline.errors import UserError
from pipeline.io import atomic_path, write_json


def write_curve(path: Path, rows: list[dict]) -> None:
    """Rows of numbers as a CSV file (a DVC plot)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def log_history(run, stage: str, history: list[dict], extra: dict | None = None) -> None:
    """Per-epoch losses to plots/<stage>.csv and MLflow; the last epoch to metrics/<stage>.json."""
    write_curve(layout.PLOTS_DIR / f"{stage}.csv", history)
    for row in history:
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    write_json(layout.METRICS_DIR / f"{stage}.json", {**history[-1], **(extra or {})})
    run.log_metrics(extra or {})


TAU_LOW, TAU_HIGH = "cos_object_vs_background_p99", "cos_context_together_mean"


def resolve_tau(loss_cfg, clip_metrics: Path) -> tuple[float, dict]:
    """The CBS threshold: the configured number, or for 'auto' the CLIP's own boundary between a
    lone object (p99 of its cosines with background prompts) and an object shown with its
    context (the mean cosine with the context's prompt): halfway between the two."""
    if loss_cfg.tau != "auto":
        return float(loss_cfg.tau), {}
    if not clip_metrics.is_file():
        raise UserError(f"{clip_metrics}: missing; clims_loss.tau 'auto' reads the CLIP's cosines from it (run prepare_clip)")
    figures = json.loads(clip_metrics.read_text())
    missing = [k for k in (TAU_LOW, TAU_HIGH) if k not in figures]
    if missing:
        raise UserError(f"{clip_metrics}: lacks {missing} for clims_loss.tau 'auto'; set tau to a number")
    low, high = figures[TAU_LOW], figures[TAU_HIGH]
    return (low + high) / 2, {f"tau_{TAU_LOW}": low, f"tau_{TAU_HIGH}": high}
