"""Segmentation inference and scores: multi-scale + flip class probabilities, optionally refined
by the dense CRF, arg-maxed over every class (no image labels at test time)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pipeline.data.manifest import ImageRecord, same_shape_batches
from pipeline.data.overlap import load_images, read_ahead
from pipeline.ops.crf import mean_field, pairwise_kernel
from pipeline.ops.maps import upsample
from pipeline.params import CrfSection
from pipeline.precision import forward
from pipeline.scoring import ScoreTotals, threshold_totals


@torch.no_grad()
def multiscale_probabilities(net, images: torch.Tensor, scales: list[float], precision: str = "fp32") -> torch.Tensor:
    """Softmax class probabilities (N, L, H, W), averaged over scales and mirrors; the net's passes
    in `precision` (pipeline.precision)."""
    height, width = images.shape[-2:]
    total = 0
    for scale in scales:
        x = images if scale == 1 else upsample(images, (round(height * scale), round(width * scale)))
        logits = forward(net, torch.cat([x, x.flip(-1)]), precision)["out"]
        direct, mirrored = logits[: len(images)], logits[len(images) :].flip(-1)
        total = total + F.softmax(upsample(direct, (height, width)), 1) + F.softmax(upsample(mirrored, (height, width)), 1)
    return total / (2 * len(scales))


def predict_labels(net, records: list[ImageRecord], scales: list[float], batch_size: int,
                   crf: CrfSection | None = None, precision: str = "fp32") -> Iterator[tuple[ImageRecord, np.ndarray]]:
    """(record, its predicted label map (H, W) of class ids) for each record, batch by batch, on
    the net's device: a split is scored without holding its predictions."""
    device = next(net.parameters()).device
    for batch, images in read_ahead(same_shape_batches(records, batch_size), load_images):
        images = images.to(device)
        prob = multiscale_probabilities(net, images, scales, precision)
        if crf is not None:
            prob = mean_field(-prob.clamp_min(1e-8).log(), pairwise_kernel(images * 255, crf), crf)
        yield from zip(batch, prob.max(1).indices.cpu().numpy().astype(np.uint8))


def score_predictions(predictions: Iterable[tuple[ImageRecord, np.ndarray]], num_classes: int, contexts,
                      keep: int) -> tuple[ScoreTotals, list[tuple[ImageRecord, np.ndarray]]]:
    """The confusion totals of a stream of (record, predicted label map), and its first `keep`
    pairs (for overlays): memory stays one batch's whatever the split's size."""
    totals, shown = threshold_totals([], None, 1, num_classes, contexts), []
    for record, label in predictions:
        totals = totals + threshold_totals([record], lambda r: label[None], 1, num_classes, contexts)
        if len(shown) < keep:
            shown.append((record, label))
    return totals, shown


def confusion_image(conf: np.ndarray, names: list[str], cell: int = 36) -> np.ndarray:
    """A row-normalised confusion matrix (rows: ground truth, columns: prediction) as an RGB image."""
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    left, top = 7 * max(len(n) for n in names) + 8, 30
    image = Image.new("RGB", (left + cell * len(names), top + cell * len(names)), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(names):
        draw.text((4, top + i * cell + cell // 3), name, fill="black")
        draw.text((left + i * cell + 2, 4 + (i % 2) * 12), name[:5], fill="black")  # staggered: names are wider than cells
        for j in range(len(names)):
            shade = int(255 * (1 - rows[i, j]))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text((box[0] + 4, box[1] + cell // 3), f"{100 * rows[i, j]:.0f}", fill="black" if shade > 120 else "white")
    return np.asarray(image)
