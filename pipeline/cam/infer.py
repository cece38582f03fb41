"""Multi-scale CAM inference (the reference's make_cam), written as the per-image CAM files of
pipeline.data.cam_files.

For each scale the image and its mirror go through the net; the ReLU of the per-pixel logits
is resized to the stride-4 grid ('cam', for the random walk) and to full resolution
('high_res': as the reference, to the image's size rounded up to a multiple of the net's
stride, then cropped to the image, so a cell keeps its place), summed over scales and flips,
restricted to the image's classes, and divided by each class's maximum. 'mask' is
P = sigmoid(logits) averaged over the same passes: the mask the CLIMS losses trained, evaluated
alongside the CAM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline.codedeps import code_digest
from pipeline.data.cam_files import cam_path, readable_cam, save_cam, stride_size
from pipeline.data.manifest import ImageRecord, data_fingerprint, same_shape_batches
from pipeline.data.overlap import load_images, read_ahead, written_behind
from pipeline.io import NET_WEIGHTS, file_digest, resume_folder
from pipeline.nets.cam_net import CamNet, load_cam_net
from pipeline.ops.maps import upsample
from pipeline.params import MakeCam
from pipeline.precision import forward, prepared_net, stage_device


@torch.no_grad()
def multiscale_maps(net: CamNet, images: torch.Tensor, scales: list[float], precision: str = "fp32") -> dict[str, torch.Tensor]:
    """All-class maps for a batch of same-size images (N, 3, H, W) in [0, 1]; the net's passes in
    `precision` (pipeline.precision), the maps in float32."""
    height, width = images.shape[-2:]
    small = stride_size(height, width)
    cam = high_res = mask = 0
    for scale in scales:
        size = (round(height * scale), round(width * scale))
        x = images if scale == 1 else upsample(images, size)
        logits = forward(net, torch.cat([x, x.flip(-1)]), precision)
        direct, mirrored = logits[: len(images)], logits[len(images) :].flip(-1)
        stride = max(1, round(size[0] / logits.shape[-2]))
        full = (-(-height // stride) * stride, -(-width // stride) * stride)  # a multiple of the stride
        for view in (direct, mirrored):
            activation = torch.relu(view)
            cam = cam + upsample(activation, small)
            high_res = high_res + upsample(activation, full)[..., :height, :width]
            mask = mask + torch.sigmoid(upsample(view, full)[..., :height, :width])
    return {"cam": cam, "high_res": high_res, "mask": mask / (2 * len(scales))}


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each class map divided by its maximum (+1e-5), as the reference does."""
    return maps / (maps.flatten(-2).amax(-1)[..., None, None] + 1e-5)


def select_classes(maps: dict[str, torch.Tensor], class_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """One image's maps for its classes (ids 1..C), in float16, ready for its CAM file. Selected,
    normalised and halved where the maps are: on a GPU, copying every class's full-resolution
    maps to the host took two thirds of make_cam's time (benchmarks/results/cam_transfer_cuda.json)."""
    index = torch.tensor([c - 1 for c in class_ids], device=maps["cam"].device)

    def host(values: torch.Tensor) -> np.ndarray:
        return values.half().cpu().numpy()

    return {
        "class_ids": np.asarray(class_ids, np.int16),
        "cam": host(normalise(maps["cam"][index])),
        "high_res": host(normalise(maps["high_res"][index])),
        "mask": host(maps["mask"][index]),
    }


def image_cams(net: CamNet, records: list[ImageRecord], scales: list[float], batch_size: int,
               precision: str = "fp32") -> Iterator[list[tuple]]:
    """Per batch of same-shape images: (record, its CAM file's arrays) for each image of it. The
    next batches' images are decoded meanwhile (read_ahead)."""
    device = next(net.parameters()).device
    for batch, images in read_ahead(same_shape_batches(records, batch_size), load_images):
        maps = multiscale_maps(net, images.to(device), scales, precision)
        yield [(r, select_classes({k: v[i] for k, v in maps.items()}, r.class_ids)) for i, r in enumerate(batch)]


# --------------------------------------------------------------------------- the make_cam stage
def cam_shard(records: list[ImageRecord], net_dir: str, out: str, scales: list[float], batch_size: int,
              use_gpu: bool = False, precision: str = "fp32") -> int:
    """Write the CAM file of every record not done yet; returns how many were written."""
    device = stage_device(use_gpu)
    net = prepared_net(load_cam_net(net_dir, device)[0], precision)
    todo = [r for r in records if not readable_cam(cam_path(out, r.image_id))]  # a damaged file is made again
    with written_behind() as write:
        for batch in image_cams(net, todo, scales, batch_size, precision):
            for record, arrays in batch:
                write(save_cam, cam_path(out, record.image_id), arrays)
    return len(todo)


def cam_stamp(records: list[ImageRecord], net_dir: Path, cfg: MakeCam, precision: str = "fp32") -> dict:
    """What the CAM files are made from: the images, the net, the scales and precision, this code."""
    return {"inputs": {"data": data_fingerprint(records), "net": file_digest(Path(net_dir) / NET_WEIGHTS),
                       "code": code_digest(__name__)},
            "params": {"scales": list(cfg.scales), "precision": precision}}


def make_cams(records: list[ImageRecord], net_dir: Path, out: Path, cfg: MakeCam, dist) -> int:
    """CAMs for all records, sharded over `cfg.num_workers` Ray tasks; a rerun skips done images."""
    from pipeline.distributed import map_shards

    load_cam_net(net_dir)  # a missing or broken net stops here, before the output folder exists
    resume_folder(out, cam_stamp(records, net_dir, cfg, dist.precision))
    written = map_shards(cam_shard, records, cfg.num_workers, dist.use_gpu, str(net_dir.resolve()), str(out.resolve()),
                         list(cfg.scales), cfg.batch_size, dist.use_gpu, dist.precision, cpus=dist.cpus_per_worker)
    return sum(written)
