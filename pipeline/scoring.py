"""Scoring label maps against ground truth: a prediction per background threshold, mIoU and
per-class IoU over a split, the context leak, and side-by-side overlays. CAMs (pipeline.cam.
evaluate), pseudo labels and segmentation predictions are all scored here.

A pixel goes to the image's class with the highest score when that score exceeds the
background threshold t, else to background (the reference pads a constant background score and
takes the argmax).

Context leak (synthetic world): of the background pixels that show a class's context (water
under a boat present in the image), the fraction the prediction gives to that class; averaged
over classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from pipeline.data.manifest import ImageRecord
from pipeline.errors import UserError
from pipeline.io import colorize, label_png_path, read_label
from pipeline.metrics import confusion, iou, miou


def thresholds(start: float, stop: float, step: float) -> np.ndarray:
    return np.round(np.arange(start, stop + step / 2, step), 6)


def predict(scores: np.ndarray, class_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Label maps (T, H, W) from class scores (K, H, W), one per background threshold."""
    if len(class_ids) == 0:
        return np.zeros((len(ts), *scores.shape[-2:]), np.int64)
    best = scores.max(0)
    label = np.asarray(class_ids, np.int64)[scores.argmax(0)]
    return np.where(best[None] > ts[:, None, None], label[None], 0)


@dataclass
class ScoreTotals:
    """Confusions per threshold and context-leak counts per (threshold, class)."""

    confusion: np.ndarray  # T x L x L
    leaked: np.ndarray  # T x C
    context: np.ndarray  # C

    def __add__(self, other: "ScoreTotals") -> "ScoreTotals":
        return ScoreTotals(self.confusion + other.confusion, self.leaked + other.leaked, self.context + other.context)


def threshold_totals(records: list[ImageRecord], predictions: Callable[[ImageRecord], np.ndarray], num_thresholds: int,
          num_classes: int, context_ids: list[int] | None = None) -> ScoreTotals:
    """Accumulate over images the scores of `predictions(record)`, label maps (T, H, W) (one per
    threshold); `context_ids[c-1]` is class c's context background id."""
    labels = num_classes + 1
    totals = ScoreTotals(np.zeros((num_thresholds, labels, labels), np.int64), np.zeros((num_thresholds, num_classes)), np.zeros(num_classes))
    for record in records:
        gt = read_label(record.label_path)
        pred = predictions(record)
        if pred.shape[-2:] != gt.shape:
            raise UserError(f"{record.image_id}: prediction size {pred.shape[-2:]} does not match {record.label_path} {gt.shape}")
        totals.confusion += confusion(gt, pred, labels)
        if context_ids is not None and record.background_path is not None:
            ground = read_label(record.background_path)
            for c in record.class_ids:
                where = (ground == context_ids[c - 1]) & (gt == 0)
                totals.context[c - 1] += where.sum()
                totals.leaked[:, c - 1] += (pred[:, where] == c).sum(-1)
    return totals


def summarise(totals: ScoreTotals, ts: np.ndarray, class_names: list[str], prefix: str = "") -> tuple[dict, list[dict]]:
    """Best-threshold figures and the per-threshold curve (rows for a DVC plot)."""
    curve_miou = miou(totals.confusion)
    best = int(np.nanargmax(curve_miou))
    per_class = iou(totals.confusion[best])
    metrics = {
        f"{prefix}miou": float(curve_miou[best]),
        f"{prefix}best_threshold": float(ts[best]),
        f"{prefix}per_class_iou": {name: float(100 * v) for name, v in zip(["background", *class_names], per_class)},
    }
    has_context = totals.context > 0
    leak = None
    if has_context.any():
        by_class = totals.leaked[:, has_context] / totals.context[has_context]
        leak = by_class.mean(-1)
        metrics[f"{prefix}context_leak"] = float(100 * leak[best])
        # the mean hides which class takes its context: one class's event moves it by a sixth
        names = [name for name, kept in zip(class_names, has_context) if kept]
        metrics[f"{prefix}per_class_context_leak"] = {name: float(100 * v) for name, v in zip(names, by_class[best])}
    rows = [
        {"threshold": float(t), f"{prefix}miou": float(m), **({f"{prefix}context_leak": float(100 * leak[i])} if leak is not None else {})}
        for i, (t, m) in enumerate(zip(ts, curve_miou))
    ]
    return metrics, rows


def context_ids(dataset) -> list[int] | None:
    """Background id of each class's context in the synthetic world (None elsewhere)."""
    if dataset.name != "synthetic":
        return None
    contexts, backgrounds = [c.context for c in dataset.classes], list(dataset.backgrounds)
    return [backgrounds.index(c) for c in contexts] if all(c in backgrounds for c in contexts) else None


def with_ground_truth(records: list[ImageRecord]) -> list[ImageRecord]:
    scored = [r for r in records if r.label_path is not None]
    if not scored:
        raise UserError("no image of the split has a ground-truth label map to score against")
    return scored


def evaluate_label_maps(records: list[ImageRecord], folder, dataset) -> dict:
    """mIoU, per-class IoU and context leak of one label-map PNG per image (pseudo labels)."""
    scored = with_ground_truth(records)
    totals = threshold_totals(scored, lambda r: read_label(label_png_path(folder, r.image_id))[None], 1,
                   len(dataset.class_names), context_ids(dataset))
    metrics, _ = summarise(totals, np.zeros(1), dataset.class_names)
    metrics.pop("best_threshold")
    return {"images": len(scored), **metrics}


def side_by_side(record: ImageRecord, pred: np.ndarray, *extra: np.ndarray) -> np.ndarray:
    """The image, its ground truth blended in, any `extra` panels, and `pred` blended in."""
    image = np.asarray(Image.open(record.image_path).convert("RGB"))
    blend = lambda label: (0.5 * image + 0.5 * colorize(label.astype(np.uint8))).astype(np.uint8)
    return np.concatenate([image, blend(read_label(record.label_path)), *extra, blend(pred)], axis=1)
