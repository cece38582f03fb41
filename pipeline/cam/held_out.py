"""A net's CAMs scored in memory, without files: a sweep trial's score on held training images
after every epoch (the same figures as make_cam + eval_cam would give on them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cam.evaluate import cam_overlay
from pipeline.cam.infer import image_cams
from pipeline.data.manifest import ImageRecord
from pipeline.scoring import ScoreTotals, context_ids, predict, summarise, threshold_totals, with_ground_truth


def score_net(net, records: list[ImageRecord], dataset, scales: list[float], ts: np.ndarray,
              batch_size: int = 32, keep: int = 0) -> tuple[ScoreTotals, dict[str, np.ndarray]]:
    """A net's CAMs scored without files (a sweep trial's held images): the threshold sweep's
    totals, and the CAM maps ('high_res', 'class_ids') of the first `keep` scored images, for
    overlays (the others' are dropped after their batch: memory stays one batch's)."""
    was_training = net.training
    net.eval()  # batch norm must not learn from the scored images
    num_classes, contexts = len(dataset.class_names), context_ids(dataset)
    totals, cams = None, {}
    for batch in image_cams(net, with_ground_truth(records), scales, batch_size):
        maps = dict((record.image_id, arrays) for record, arrays in batch)
        part = threshold_totals([record for record, _ in batch],
                                lambda r: predict(maps[r.image_id]["high_res"].astype(np.float32), maps[r.image_id]["class_ids"], ts),
                                len(ts), num_classes, contexts)
        totals = part if totals is None else totals + part
        cams.update(list(maps.items())[: max(0, keep - len(cams))])
    net.train(was_training)
    return totals, cams


def held_out_scorer(records: list[ImageRecord], dataset, scales: list[float], ts: np.ndarray, overlays: int):
    """An evaluate hook for pipeline.train_loop.Setup: the net's CAM mIoU (best threshold) and
    context leak on `records`, and overlays of the first `overlays` of them as PNGs in
    <folder>/overlays/."""
    def evaluate(net, folder) -> dict:
        totals, cams = score_net(net, records, dataset, scales, ts, keep=overlays)
        summary, _ = summarise(totals, ts, dataset.class_names, "cam_")
        figures = {k: v for k, v in summary.items() if isinstance(v, (int, float))}  # the sweep logs scalars only
        shown = [r for r in records if r.image_id in cams]
        if shown:
            (Path(folder) / "overlays").mkdir(parents=True, exist_ok=True)
        for record in shown:
            image = cam_overlay(record, cams[record.image_id], figures["cam_best_threshold"])
            Image.fromarray(image).save(Path(folder) / "overlays" / f"{record.image_id}.png")
        return figures

    return evaluate
