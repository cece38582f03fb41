"""Segmentation scores from confusion matrices (rows: ground truth, columns: prediction)."""
from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """Confusion of label maps (class 0 = background); ground-truth pixels of 255 are ignored.

    `pred` may carry leading axes (one prediction per threshold): the result has those axes too.
    """
    valid = gt != IGNORE
    lead = pred.shape[: pred.ndim - gt.ndim]
    pred = pred.reshape(-1, *gt.shape)[:, valid].astype(np.int64)
    truth = gt[valid].astype(np.int64)
    offsets = np.arange(len(pred))[:, None] * num_labels * num_labels
    codes = offsets + truth[None] * num_labels + pred
    counts = np.bincount(codes.ravel(), minlength=len(pred) * num_labels * num_labels)
    return counts.reshape(*lead, num_labels, num_labels)


def iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU in [0, 1] (NaN for a class absent from both ground truth and prediction)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    union = conf.sum(-1) + conf.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> np.ndarray:
    """Mean IoU in percent over the classes that occur, as papers report it."""
    return 100 * np.nanmean(iou(conf), axis=-1)
