"""Pseudo labels by IRN's random walk: the stride-4 CAMs, damped on boundaries (IRN), spread over the
boundary net's affinities, upsampled, divided by their maximum, arg-maxed against a constant
background score; optionally refined by the dense CRF (as PSA, IRN's predecessor, did)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.codedeps import code_digest
from pipeline.data.cam_files import CAM_STRIDE, cam_path
from pipeline.data.manifest import ImageRecord, data_fingerprint, same_shape_batches
from pipeline.data.overlap import images_and_cams, read_ahead, save_label, written_behind
from pipeline.errors import UserError
from pipeline.io import NET_WEIGHTS, SOURCE_FILE, file_digest, label_png_path, resume_folder
from pipeline.irn.random_walk import propagate
from pipeline.nets.boundary import BoundaryNet, boundary_map, load_boundary_net
from pipeline.ops.crf import crf_labels, pairwise_kernel
from pipeline.ops.maps import threshold_labels
from pipeline.params import CrfSection, MakeSemSeg
from pipeline.precision import prepared_net, stage_device


@torch.no_grad()
def walk_labels(net: BoundaryNet, images: torch.Tensor, cams: torch.Tensor, cfg: MakeSemSeg,
                crf: CrfSection | None = None, precision: str = "fp32") -> torch.Tensor:
    """Label indices (N, H, W) in 0..K (0 = background) for images (N, 3, H, W) in [0, 1] and
    their stride-4 CAMs (N, K, h, w); `cfg`: walk, radius, beta, exp_times, damp_boundary, bg_threshold.
    With `crf`, the walked labels are refined by the dense CRF on the image. `precision`: the
    boundary net's pass (pipeline.precision); the walk runs in float32."""
    scores = walked_scores(cams, boundary_map(net, images, precision), cfg, images.shape[-2:])
    return labels_at(scores, images, [cfg.bg_threshold], crf)[0]


def labels_at(scores: torch.Tensor, images: torch.Tensor, bg_thresholds, crf: CrfSection | None) -> list[torch.Tensor]:
    """Label indices (N, H, W) in 0..K for each background score of `bg_thresholds`: the class
    scores (N, K, H, W) arg-maxed against it and, with `crf`, refined by the dense CRF on the
    images (one pairwise kernel for them all)."""
    labels = [threshold_labels(scores, float(t)) for t in bg_thresholds]
    if crf is None:
        return labels
    return crf_labels(pairwise_kernel(images * 255, crf), labels, scores.shape[1] + 1, crf)


def walked_scores(cams: torch.Tensor, boundary: torch.Tensor, cfg: MakeSemSeg, size: tuple[int, int]) -> torch.Tensor:
    """Class scores (N, K, H, W) at image size from stride-4 CAMs (N, K, h, w) and a boundary map
    (N, h, w) in [0, 1]: damped (cfg.damp_boundary), walked (cfg.walk), upsampled, each image
    divided by its maximum, ready for the constant background score."""
    start = cams * (1 - boundary[:, None]) if cfg.damp_boundary else cams
    walked = propagate(start, boundary, cfg.radius, cfg.beta, cfg.exp_times, cfg.paths) if cfg.walk else start
    up = F.interpolate(walked, scale_factor=CAM_STRIDE, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
    return up / up.flatten(1).amax(1).clamp_min(1e-5)[:, None, None, None]


def sem_seg_shard(records: list[ImageRecord], net_dir: str, cam_folder: str, out: str, cfg: MakeSemSeg, crf: CrfSection,
                  use_gpu: bool = False, precision: str = "fp32") -> int:
    """Write the pseudo label of every record not done yet (images of one size and class count
    walk together); returns how many were written."""
    device = stage_device(use_gpu)
    torch.set_flush_denormal(True)  # see ir_label_shard
    net = prepared_net(load_boundary_net(net_dir, device)[0], precision)
    todo = [r for r in records if not label_png_path(out, r.image_id).is_file()]
    with written_behind() as write:
        for batch, (images, cams) in read_ahead(same_shape_batches(todo, cfg.batch_size), lambda b: images_and_cams(b, cam_folder)):
            labels = _labels(net, batch, images, cams, cfg, crf if cfg.crf else None, device, precision)
            for record, cam, label in zip(batch, cams, labels):
                write(save_label, label_png_path(out, record.image_id), np.asarray([0, *cam["class_ids"]], np.uint8)[label])
    return len(todo)


def _labels(net, batch: list[ImageRecord], images: torch.Tensor, cams: list[dict], walk: MakeSemSeg, crf: CrfSection | None,
            device, precision: str) -> np.ndarray:
    if not batch[0].class_ids:  # nothing to walk: all background
        return np.zeros((len(batch), *images.shape[-2:]), np.int64)
    maps = torch.stack([torch.from_numpy(c["cam"].astype(np.float32)) for c in cams]).to(device)
    return walk_labels(net, images.to(device), maps, walk, crf, precision).cpu().numpy()


def sem_seg_stamp(records: list[ImageRecord], net_dir: Path, cam_folder: Path, cfg: MakeSemSeg, crf: CrfSection,
                  precision: str = "fp32") -> dict:
    """What the pseudo labels are made from: the images, the boundary net, the CAMs (their
    folder's own stamp), the walk's settings and the CRF's when it refines them, the net's
    precision, this code."""
    return {"inputs": {"data": data_fingerprint(records), "irn": file_digest(Path(net_dir) / NET_WEIGHTS),
                       "cams": file_digest(Path(cam_folder) / SOURCE_FILE), "code": code_digest(__name__)},
            "params": {"make_sem_seg": cfg.model_dump(exclude={"num_workers", "batch_size"}),
                       "crf": crf.model_dump() if cfg.crf else None, "precision": precision}}


def make_sem_seg(records: list[ImageRecord], net_dir: Path, cam_folder: Path, out: Path, cfg, crf, dist) -> int:
    """Pseudo labels for all records, sharded over `cfg.num_workers` Ray tasks; a rerun skips done images."""
    from pipeline.distributed import map_shards

    load_boundary_net(net_dir)  # a missing net stops here, before the output folder exists
    missing = [r.image_id for r in records if not cam_path(cam_folder, r.image_id).is_file()]
    if missing:
        raise UserError(f"{cam_path(cam_folder, missing[0])}: CAM file missing ({len(missing)} of {len(records)}; run make_cam first)")
    resume_folder(out, sem_seg_stamp(records, net_dir, cam_folder, cfg, crf, dist.precision))
    written = map_shards(sem_seg_shard, records, cfg.num_workers, dist.use_gpu, str(net_dir.resolve()), str(cam_folder.resolve()),
                         str(out.resolve()), cfg, crf, dist.use_gpu, dist.precision, cpus=dist.cpus_per_worker)
    return sum(written)
