"""CAM evaluation: mIoU over a sweep of background thresholds, and the context leak.

A pixel goes to the image's class with the highest score when that score exceeds the
background threshold t, else to background (the reference pads a constant background score and
takes the argmax). Both the max-normalised CAM ('high_res') and the mask P ('mask') are scored
at every t; each net is compared at its own best t.

Context leak (synthetic world): of the background pixels that show a class's context (water
under a boat present in the image), the fraction the prediction gives to that class; averaged
over classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pipeline.cam.infer import cam_path, image_cams, load_cam
from pipeline.data.manifest import ImageRecord
from pipeline.errors import UserError
from pipeline.io import label_png_path, read_label
from pipeline.metrics import confusion, iou, miou

SCORED_MAPS = ("high_res", "mask")


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
class SweepTotals:
    """Confusions per threshold and context-leak counts per (threshold, class)."""

    confusion: np.ndarray  # T x L x L
    leaked: np.ndarray  # T x C
    context: np.ndarray  # C


def sweep(records: list[ImageRecord], predictions: Callable[[ImageRecord], np.ndarray], num_thresholds: int,
          num_classes: int, context_ids: list[int] | None = None) -> SweepTotals:
    """Accumulate over images the scores of `predictions(record)`, label maps (T, H, W) (one per
    threshold); `context_ids[c-1]` is class c's context background id."""
    labels = num_classes + 1
    totals = SweepTotals(np.zeros((num_thresholds, labels, labels), np.int64), np.zeros((num_thresholds, num_classes)), np.zeros(num_classes))
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


def cam_predictions(cam_folder, key: str, ts: np.ndarray) -> Callable[[ImageRecord], np.ndarray]:
    """An image's label maps at every background threshold, from its CAM file."""
    def predictions(record: ImageRecord) -> np.ndarray:
        path = cam_path(cam_folder, record.image_id)
        if not path.is_file():
            raise UserError(f"{path}: CAM file missing (run make_cam first)")
        data = load_cam(path)
        return predict(data[key].astype(np.float32), data["class_ids"], ts)

    return predictions


def summarise(totals: SweepTotals, ts: np.ndarray, class_names: list[str], prefix: str = "") -> tuple[dict, list[dict]]:
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
        leak = (totals.leaked[:, has_context] / totals.context[has_context]).mean(-1)
        metrics[f"{prefix}context_leak"] = float(100 * leak[best])
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
    totals = sweep(scored, lambda r: read_label(label_png_path(folder, r.image_id))[None], 1,
                   len(dataset.class_names), context_ids(dataset))
    metrics, _ = summarise(totals, np.zeros(1), dataset.class_names)
    metrics.pop("best_threshold")
    return {"images": len(scored), **metrics}


def evaluate_cams(records: list[ImageRecord], cam_folder, dataset, sweep_cfg) -> tuple[dict, list[dict]]:
    """Scores of the CAM ('high_res', keys without prefix) and of P ('mask', keys 'mask_...')."""
    ts = thresholds(sweep_cfg.start, sweep_cfg.stop, sweep_cfg.step)
    scored = with_ground_truth(records)
    metrics, curve = {"images": len(scored)}, {float(t): {"threshold": float(t)} for t in ts}
    for key, prefix in (("high_res", ""), ("mask", "mask_")):
        totals = sweep(scored, cam_predictions(cam_folder, key, ts), len(ts), len(dataset.class_names), context_ids(dataset))
        figures, rows = summarise(totals, ts, dataset.class_names, prefix)
        metrics.update(figures)
        for row in rows:
            curve[row["threshold"]].update(row)
    # P as the mask it was trained to be: thresholded at 0.5
    half = int(np.argmin(np.abs(ts - 0.5)))
    metrics["mask_miou_at_0.5"] = curve[float(ts[half])]["mask_miou"]
    return metrics, list(curve.values())


def overlay(record: ImageRecord, cam_folder, key: str, threshold: float) -> np.ndarray:
    """The image, its ground truth, the CAM and the prediction at `threshold`, side by side (uint8 RGB)."""
    data = load_cam(cam_path(cam_folder, record.image_id))
    return cam_overlay(record, {"high_res": data[key], "class_ids": data["class_ids"]}, threshold)


def side_by_side(record: ImageRecord, pred: np.ndarray, *extra: np.ndarray) -> np.ndarray:
    """The image, its ground truth blended in, any `extra` panels, and `pred` blended in."""
    from pipeline.io import colorize

    image = np.asarray(Image.open(record.image_path).convert("RGB"))
    blend = lambda label: (0.5 * image + 0.5 * colorize(label.astype(np.uint8))).astype(np.uint8)
    return np.concatenate([image, blend(read_label(record.label_path)), *extra, blend(pred)], axis=1)


def score_net(net, records: list[ImageRecord], dataset, scales: list[float], ts: np.ndarray,
              batch_size: int = 32) -> tuple[SweepTotals, dict[str, np.ndarray]]:
    """A net's CAMs scored without files (a sweep trial's held images): the threshold sweep's
    totals, and each image's CAM maps ('high_res', 'class_ids') for overlays."""
    was_training = net.training
    net.eval()  # batch norm must not learn from the scored images
    num_classes, contexts = len(dataset.class_names), context_ids(dataset)
    totals, cams = None, {}
    for batch in image_cams(net, with_ground_truth(records), scales, batch_size):
        cams.update((record.image_id, arrays) for record, arrays in batch)
        part = sweep([record for record, _ in batch],
                     lambda r: predict(cams[r.image_id]["high_res"].astype(np.float32), cams[r.image_id]["class_ids"], ts),
                     len(ts), num_classes, contexts)
        totals = part if totals is None else SweepTotals(totals.confusion + part.confusion, totals.leaked + part.leaked,
                                                         totals.context + part.context)
    net.train(was_training)
    return totals, cams


def cam_overlay(record: ImageRecord, cam: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """The image, its ground truth, the CAM ('high_res') and the prediction at `threshold`."""
    scores = cam["high_res"].astype(np.float32)
    pred = predict(scores, cam["class_ids"], np.asarray([threshold]))[0]
    heat = (255 * scores.max(0, initial=0)).astype(np.uint8)
    return side_by_side(record, pred, np.repeat(heat[..., None], 3, -1))


def held_out_scorer(records: list[ImageRecord], dataset, scales: list[float], ts: np.ndarray, overlays: int):
    """An evaluate hook for pipeline.train_loop.Setup: the net's CAM mIoU (best threshold) and
    context leak on `records`, and overlays of the first `overlays` of them as PNGs in
    <folder>/overlays/."""
    def evaluate(net, folder) -> dict:
        totals, cams = score_net(net, records, dataset, scales, ts)
        figures, _ = summarise(totals, ts, dataset.class_names, "cam_")
        figures.pop("cam_per_class_iou")
        shown = [r for r in records if r.image_id in cams][:overlays]
        if shown:
            (Path(folder) / "overlays").mkdir(parents=True, exist_ok=True)
        for record in shown:
            image = cam_overlay(record, cams[record.image_id], figures["cam_best_threshold"])
            Image.fromarray(image).save(Path(folder) / "overlays" / f"{record.image_id}.png")
        return figures

    return evaluate
