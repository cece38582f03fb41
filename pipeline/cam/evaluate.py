"""CAM evaluation (eval_cam): mIoU over a sweep of background thresholds (pipeline.scoring) of
the max-normalised CAM ('high_res') and of the mask P ('mask') in the CAM files, each net
compared at its own best threshold; the context leak; overlays.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.data.cam_files import cam_path, load_cam
from pipeline.data.manifest import ImageRecord
from pipeline.scoring import context_ids, predict, side_by_side, summarise, threshold_totals, thresholds, with_ground_truth


def cam_predictions(cam_folder, key: str, ts: np.ndarray) -> Callable[[ImageRecord], np.ndarray]:
    """An image's label maps at every background threshold, from its CAM file."""
    def predictions(record: ImageRecord) -> np.ndarray:
        data = load_cam(cam_path(cam_folder, record.image_id))  # a missing file is one line there
        return predict(data[key].astype(np.float32), data["class_ids"], ts)

    return predictions


def evaluate_cams(records: list[ImageRecord], cam_folder, dataset, cfg) -> tuple[dict, list[dict]]:
    """Scores of the CAM ('high_res', keys without prefix) and of P ('mask', keys 'mask_...');
    `cfg`: the eval_cam section."""
    sweep_cfg = cfg.thresholds
    ts = thresholds(sweep_cfg.start, sweep_cfg.stop, sweep_cfg.step)
    scored = with_ground_truth(records)
    metrics, curve = {"images": len(scored)}, {float(t): {"threshold": float(t)} for t in ts}
    for key, prefix in (("high_res", ""), ("mask", "mask_")):
        totals = threshold_totals(scored, cam_predictions(cam_folder, key, ts), len(ts), len(dataset.class_names), context_ids(dataset))
        figures, rows = summarise(totals, ts, dataset.class_names, prefix)
        metrics.update(figures)
        for row in rows:
            curve[row["threshold"]].update(row)
    # P as the mask it was trained to be: thresholded at 0.5
    half = int(np.argmin(np.abs(ts - 0.5)))
    metrics["mask_miou_at_0.5"] = curve[float(ts[half])]["mask_miou"]
    # the papers' figure: the CAM at one fixed background threshold (on the sweep: params checks it)
    fixed = int(np.argmin(np.abs(ts - cfg.fixed_threshold)))
    metrics["fixed_threshold"] = float(ts[fixed])
    metrics["miou_at_fixed_threshold"] = curve[float(ts[fixed])]["miou"]
    return metrics, list(curve.values())


def overlay(record: ImageRecord, cam_folder, key: str, threshold: float) -> np.ndarray:
    """The image, its ground truth, the CAM and the prediction at `threshold`, side by side (uint8 RGB)."""
    data = load_cam(cam_path(cam_folder, record.image_id))
    return cam_overlay(record, {"high_res": data[key], "class_ids": data["class_ids"]}, threshold)


def cam_overlay(record: ImageRecord, cam: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """The image, its ground truth, the CAM ('high_res') and the prediction at `threshold`."""
    scores = cam["high_res"].astype(np.float32)
    pred = predict(scores, cam["class_ids"], np.asarray([threshold]))[0]
    heat = (255 * scores.max(0, initial=0)).astype(np.uint8)
    return side_by_side(record, pred, np.repeat(heat[..., None], 3, -1))
