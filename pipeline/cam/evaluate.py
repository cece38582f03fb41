"""CAM evaluation: mIoU over a sweep of background thresholds (pipeline.scoring) of the
max-normalised CAM ('high_res') and of the mask P ('mask'), each net compared at its own best
threshold; the context leak; overlays; and a net's CAMs scored without files (a sweep trial's
held images).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pipeline.cam.infer import image_cams
from pipeline.data.cam_files import cam_path, load_cam
from pipeline.data.manifest import ImageRecord
from pipeline.errors import UserError
from pipeline.scoring import (ScoreTotals, context_ids, predict, side_by_side, summarise, threshold_totals, thresholds,
                              with_ground_truth)

def cam_predictions(cam_folder, key: str, ts: np.ndarray) -> Callable[[ImageRecord], np.ndarray]:
    """An image's label maps at every background threshold, from its CAM file."""
    def predictions(record: ImageRecord) -> np.ndarray:
        path = cam_path(cam_folder, record.image_id)
        if not path.is_file():
            raise UserError(f"{path}: CAM file missing (run make_cam first)")
        data = load_cam(path)
        return predict(data[key].astype(np.float32), data["class_ids"], ts)

    return predictions


def evaluate_cams(records: list[ImageRecord], cam_folder, dataset, sweep_cfg) -> tuple[dict, list[dict]]:
    """Scores of the CAM ('high_res', keys without prefix) and of P ('mask', keys 'mask_...')."""
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
    return metrics, list(curve.values())


def overlay(record: ImageRecord, cam_folder, key: str, threshold: float) -> np.ndarray:
    """The image, its ground truth, the CAM and the prediction at `threshold`, side by side (uint8 RGB)."""
    data = load_cam(cam_path(cam_folder, record.image_id))
    return cam_overlay(record, {"high_res": data[key], "class_ids": data["class_ids"]}, threshold)


def score_net(net, records: list[ImageRecord], dataset, scales: list[float], ts: np.ndarray,
              batch_size: int = 32) -> tuple[ScoreTotals, dict[str, np.ndarray]]:
    """A net's CAMs scored without files (a sweep trial's held images): the threshold sweep's
    totals, and each image's CAM maps ('high_res', 'class_ids') for overlays."""
    was_training = net.training
    net.eval()  # batch norm must not learn from the scored images
    num_classes, contexts = len(dataset.class_names), context_ids(dataset)
    totals, cams = None, {}
    for batch in image_cams(net, with_ground_truth(records), scales, batch_size):
        cams.update((record.image_id, arrays) for record, arrays in batch)
        part = threshold_totals([record for record, _ in batch],
                                lambda r: predict(cams[r.image_id]["high_res"].astype(np.float32), cams[r.image_id]["class_ids"], ts),
                                len(ts), num_classes, contexts)
        totals = part if totals is None else totals + part
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
