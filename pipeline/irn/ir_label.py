"""IR labels (IRN): confident foreground and background from the CAMs, each refined by the CRF.

The full-resolution CAMs are padded with a constant background score and arg-maxed twice: at
the foreground threshold (0.30: only strong activations count as object) and at the background
threshold (0.10: anything faintly active counts as object). Each label map is refined by the
dense CRF on the image. The IR label is the foreground result where it says object, background
where both say background, and IGNORE (255) where they disagree.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.codedeps import code_digest
from pipeline.data.cam_files import cam_path
from pipeline.data.manifest import ImageRecord, data_fingerprint, same_shape_batches
from pipeline.data.overlap import images_and_cams, read_ahead, save_label, written_behind
from pipeline.errors import UserError
from pipeline.io import SOURCE_FILE, file_digest, label_png_path, read_label, resume_folder
from pipeline.metrics import IGNORE, confusion, miou
from pipeline.ops.crf import crf_labels, pairwise_kernel
from pipeline.ops.maps import threshold_labels
from pipeline.params import CrfSection, MakeIrLabel
from pipeline.precision import stage_device


def ir_labels(images: torch.Tensor, cams: torch.Tensor, fg_threshold: float, bg_threshold: float, crf: CrfSection) -> torch.Tensor:
    """IR labels (N, H, W) in 0..K or IGNORE, from images (N, 3, H, W) in 0..255: the confident
    foreground and background labels, each refined by the CRF (the two in one grouped CRF)."""
    fg, bg = crf_labels(pairwise_kernel(images, crf), [threshold_labels(cams, fg_threshold), threshold_labels(cams, bg_threshold)],
                        cams.shape[1] + 1, crf)
    return torch.where((fg == 0) & (bg != 0), IGNORE, fg)


def ir_label_shard(records: list[ImageRecord], cam_folder: str, out: str, fg_threshold: float, bg_threshold: float,
                   crf: CrfSection, batch_size: int, use_gpu: bool = False) -> int:
    """Write the IR label of every record not done yet (images of one size and class count are
    refined together); returns how many were written."""
    device = stage_device(use_gpu)
    torch.set_flush_denormal(True)  # the CRF's tiny kernel values as denormals slow a CPU down ~5x
    todo = [r for r in records if not label_png_path(out, r.image_id).is_file()]
    with written_behind() as write:
        for batch, (images, cams) in read_ahead(same_shape_batches(todo, batch_size), lambda b: images_and_cams(b, cam_folder)):
            maps = torch.stack([torch.from_numpy(c["high_res"].astype(np.float32)) for c in cams]).to(device)
            labels = ir_labels(images.to(device) * 255, maps, fg_threshold, bg_threshold, crf).cpu().numpy()
            for record, cam, label in zip(batch, cams, labels):
                class_of = np.full(256, IGNORE, np.uint8)  # CAM index -> class id; IGNORE stays
                class_of[: len(cam["class_ids"]) + 1] = [0, *cam["class_ids"]]
                write(save_label, label_png_path(out, record.image_id), class_of[label])
    return len(todo)


def ir_label_stamp(records: list[ImageRecord], cam_folder: Path, cfg: MakeIrLabel, crf: CrfSection) -> dict:
    """What the IR labels are made from: the images, the CAMs (their folder's own stamp), the
    thresholds and the CRF, this code."""
    return {"inputs": {"data": data_fingerprint(records), "cams": file_digest(Path(cam_folder) / SOURCE_FILE),
                       "code": code_digest(__name__)},
            "params": {"make_ir_label": cfg.model_dump(exclude={"num_workers", "batch_size"}), "crf": crf.model_dump()}}


def make_ir_labels(records: list[ImageRecord], cam_folder: Path, out: Path, cfg: MakeIrLabel, crf: CrfSection, dist) -> int:
    """IR labels for all records, sharded over `cfg.num_workers` Ray tasks; a rerun skips done images."""
    from pipeline.distributed import map_shards

    missing = [r.image_id for r in records if not cam_path(cam_folder, r.image_id).is_file()]
    if missing:
        raise UserError(f"{cam_path(cam_folder, missing[0])}: CAM file missing ({len(missing)} of {len(records)}; run make_cam first)")
    resume_folder(out, ir_label_stamp(records, cam_folder, cfg, crf))
    written = map_shards(ir_label_shard, records, cfg.num_workers, dist.use_gpu, str(cam_folder.resolve()), str(out.resolve()),
                         cfg.fg_threshold, cfg.bg_threshold, crf, cfg.batch_size, dist.use_gpu,
                         cpus=dist.cpus_per_worker)
    return sum(written)


def ir_label_quality(records: list[ImageRecord], folder: Path, num_classes: int) -> dict:
    """How good the IR labels are where ground truth exists: the share of pixels they label
    (not IGNORE), the accuracy there, and the mIoU over the labelled pixels."""
    conf = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    labelled = total = 0
    for record in records:
        if record.label_path is None:
            continue
        label, gt = read_label(label_png_path(folder, record.image_id)), read_label(record.label_path)
        known = label != IGNORE
        labelled, total = labelled + int(known.sum()), total + label.size
        conf += confusion(np.where(known, gt, IGNORE), np.where(known, label, 0), num_classes + 1)
    if total == 0:
        return {}
    return {"coverage": 100 * labelled / total, "accuracy": 100 * np.trace(conf) / max(1, conf.sum()),
            "miou": float(miou(conf))}
