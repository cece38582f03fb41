"""What the stages record besides MLflow: per-epoch histories and curves as DVC plots (CSV) and
final figures as DVC metrics (JSON)."""
from __future__ import annotations

import csv
from pathlib import Path

from pipeline import layout
from pipeline.io import atomic_path, write_json


def write_curve(path: Path, rows: list[dict]) -> None:
    """Rows of numbers as a CSV file (a DVC plot)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def log_history(run, stage: str, history: list[dict], extra: dict | None = None) -> None:
    """Per-epoch losses to plots/<stage>.csv and MLflow; the last epoch to metrics/<stage>.json.
    An epoch's wall time goes to MLflow only: the versioned files hold what a rerun repeats."""
    for row in history:
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    write_curve(layout.PLOTS_DIR / f"{stage}.csv", history)
    write_metrics(run, stage, {**history[-1], **(extra or {})})
    run.log_metrics(extra or {})


def write_metrics(run, record: str, metrics: dict) -> None:
    """All figures to metrics/<record>.json (a DVC metric); the headline ones to the pipeline's run."""
    write_json(layout.METRICS_DIR / f"{record}.json", metrics)
    run.log_headline(record, metrics)
