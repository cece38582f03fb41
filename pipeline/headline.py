"""The figures a pipeline run is judged by, and the default's claims about them.

Every stage writes all its figures to metrics/<record>.json (per class included); a handful of
them are the headline: logged to the pipeline's parent run in MLflow (so two pipeline runs
compare in one table), printed by `clims report` and collected by benchmarks/seeds.py. Reading
and printing only: nothing here changes what a stage writes (codedeps leaves it out).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

# record (metrics/<record>.json) -> its headline keys; the parent run's metric is "<record>.<key>"
HEADLINES: dict[str, tuple[str, ...]] = {
    "clip": ("object_top1", "context_margin", "hole_margin"),
    "cam_baseline": ("miou", "context_leak", "best_threshold", "miou_at_fixed_threshold"),
    "cam_clims": ("miou", "context_leak", "best_threshold", "mask_miou", "miou_at_fixed_threshold"),
    "train_clims": ("tau",),  # L_CBS's threshold: derived from the CLIP's figures, it moves every figure after it
    "ir_labels": ("miou", "coverage"),
    "pseudo_labels": ("miou", "context_leak"),
    "segmentation": ("miou", "context_leak"),
}
ROWS = (  # what `clims report` shows, in pipeline order
    ("cam_baseline", "baseline CAM (train, best threshold)"),
    ("cam_clims", "CLIMS CAM (train, best threshold)"),
    ("ir_labels", "IR labels, where labelled"),
    ("pseudo_labels", "pseudo labels (train)"),
    ("segmentation", "segmentation (val)"),
)
CLIMS_GAIN = 5.0  # mIoU points CLIMS must add to the baseline CAM


def headline(record: str, metrics: Mapping) -> dict[str, float]:
    """The headline figures of one record, named "<record>.<key>"."""
    return {f"{record}.{key}": float(metrics[key]) for key in HEADLINES.get(record, ()) if key in metrics}


def read_headlines(metrics_dir: Path) -> dict[str, float]:
    """Every headline figure found in `metrics_dir` (missing records are left out)."""
    figures: dict[str, float] = {}
    for record in HEADLINES:
        path = Path(metrics_dir) / f"{record}.json"
        if path.is_file():
            figures.update(headline(record, json.loads(path.read_text())))
    return figures


# (claim, the figures it reads, whether they satisfy it)
CLAIMS: tuple[tuple[str, tuple[str, ...], Callable[..., bool]], ...] = (
    (f"CLIMS CAM >= baseline CAM + {CLIMS_GAIN:g} mIoU", ("cam_clims.miou", "cam_baseline.miou"),
     lambda clims, base: clims >= base + CLIMS_GAIN),
    ("CLIMS context leak < baseline's", ("cam_clims.context_leak", "cam_baseline.context_leak"),
     lambda clims, base: clims < base),
    ("pseudo labels > CLIMS CAM", ("pseudo_labels.miou", "cam_clims.miou"), lambda pseudo, cam: pseudo > cam),
    ("segmentation > baseline CAM", ("segmentation.miou", "cam_baseline.miou"), lambda seg, base: seg > base),
)


def check_claims(figures: Mapping[str, float]) -> dict[str, bool | None]:
    """Each claim of the default: True / False, or None where a figure is missing."""
    results: dict[str, bool | None] = {}
    for text, keys, holds in CLAIMS:
        values = [figures.get(key) for key in keys]
        results[text] = None if None in values else bool(holds(*values))
    return results


def _row_label(record: str, label: str, figures: Mapping[str, float]) -> str:
    if f"{record}.best_threshold" in figures:
        label = label.replace("best threshold", f"best threshold {figures[f'{record}.best_threshold']:.2f}")
        if record == "cam_clims" and "train_clims.tau" in figures:
            label = label.replace(")", f", tau {figures['train_clims.tau']:.3f})")
        return label
    if f"{record}.coverage" in figures:
        return f"{label} ({figures[f'{record}.coverage']:.1f} % of pixels)"
    return label


def format_report(figures: Mapping[str, float]) -> str:
    """A compact table of the headline figures and the claims, for a terminal."""
    lines = []
    clip = [f"{key.split('.', 1)[1].replace('_', ' ')} {figures[key]:.3f}" for key in figures if key.startswith("clip.")]
    if clip:
        lines += [f"CLIP: {', '.join(clip)}", ""]
    lines.append(f"{'':50s} {'mIoU':>6s} {'context leak':>13s}")
    for record, label in ROWS:
        miou, leak = figures.get(f"{record}.miou"), figures.get(f"{record}.context_leak")
        text = (f"{miou:6.1f}" if miou is not None else f"{'-':>6s}") + (f" {leak:11.1f} %" if leak is not None else "")
        lines.append(f"{_row_label(record, label, figures):50s} {text}")
    lines.append("")
    for claim, holds in check_claims(figures).items():
        lines.append(f"{claim:50s} {({True: 'yes', False: 'NO', None: '-'}[holds]):>6s}")
    return "\n".join(lines)
