"""make_cam's per-image cost at VOC size, three ways side by side: every class's maps copied to the
host and selected there (`host`, as make_cam did first), the image's classes selected, normalised
and halved on the device first (`device`, pipeline.cam.infer.select_classes), each with where the
time goes; and make_cam's loop as it runs now (`overlapped`: the device's way, the next batches'
images decoded and the CAM files written in threads beside the GPU's work, pipeline.data.overlap).

    python benchmarks/cam_transfer.py [--device cuda|cpu] [--images 120] [--rounds 2]

A randomly initialised ResNet-50 CAM net (the voc12 group's, bf16 on CUDA) on the stand-in
VOCdevkit tree (benchmarks/stand_ins.py: VOC's image sizes, 1-2 classes each), the voc12 group's
scales and batch size. One warm-up pass over the images (each shape once), then `--rounds`
alternating timed passes of each way, and the largest difference between their CAM files. Results:
benchmarks/results/cam_transfer_<device>.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, write_results
from stand_ins import write_voc_tree
from pipeline.cam.infer import image_cams, multiscale_maps, normalise, select_classes
from pipeline.config import compose
from pipeline.data.cam_files import cam_path, load_cam, save_cam
from pipeline.data.manifest import read_manifest, same_shape_batches
from pipeline.data.overlap import load_images, written_behind
from pipeline.data.prepare import prepare_splits
from pipeline.nets.cam_net import build_cam_net
from pipeline.params import validate
from pipeline.precision import prepared_net

PHASES = ("load", "maps", "to_host", "save")


def on_host(maps: dict[str, torch.Tensor], class_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The former way: the image's classes picked from maps already copied to the host."""
    index = [c - 1 for c in class_ids]
    return {"class_ids": np.asarray(class_ids, np.int16),
            "cam": normalise(maps["cam"][index]).numpy().astype(np.float16),
            "high_res": normalise(maps["high_res"][index]).numpy().astype(np.float16),
            "mask": maps["mask"][index].numpy().astype(np.float16)}


def one_pass(way: str, net, batches, batch_size, scales, precision, device, out: Path, seconds: dict) -> None:
    if way == "overlapped":
        began = time.perf_counter()
        with written_behind() as write:
            for batch in image_cams(net, [r for b in batches for r in b], scales, batch_size, precision):
                for record, arrays in batch:
                    write(save_cam, cam_path(out, record.image_id), arrays)
        seconds["total"] = seconds.get("total", 0.0) + time.perf_counter() - began
        return

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for batch in batches:
        began = time.perf_counter()
        images = load_images(batch).to(device)
        loaded = time.perf_counter()
        maps = multiscale_maps(net, images, scales, precision)
        sync()
        mapped = time.perf_counter()
        if way == "host":
            maps = {k: v.float().cpu() for k, v in maps.items()}
            arrays = [on_host({k: v[i] for k, v in maps.items()}, r.class_ids) for i, r in enumerate(batch)]
        else:
            arrays = [select_classes({k: v[i] for k, v in maps.items()}, r.class_ids) for i, r in enumerate(batch)]
        copied = time.perf_counter()
        for record, arrays_of in zip(batch, arrays):
            save_cam(cam_path(out, record.image_id), arrays_of)
        ends = (loaded, mapped, copied, time.perf_counter())
        for phase, start, end in zip(PHASES, (began, *ends[:-1]), ends):
            seconds[phase] = seconds.get(phase, 0.0) + end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    work = Path(tempfile.mkdtemp(prefix="clims-cam-transfer-"))
    root = write_voc_tree(work, args.images * 4 // 3 + 4)  # three quarters of the tree is train_aug
    params = validate(compose(["dataset=voc12", f"dataset.root={root}", "backbone.weights=unused.pth", "clip.weights=unused.pt"],
                              REPO / "conf"))
    (work / "data").mkdir()
    prepare_splits(params.dataset, work / "data", work / "data")
    records = read_manifest(work / "data" / "train.parquet")[: args.images]
    backbone = params.backbone.model_copy(update={"weights": None})
    net = prepared_net(build_cam_net(backbone, len(params.dataset.class_names)).to(device).eval(), precision)
    scales, batch_size = list(params.make_cam.scales), params.make_cam.batch_size
    batches = list(same_shape_batches(records, batch_size))

    seconds = {way: {} for way in ("host", "device", "overlapped")}
    one_pass("device", net, batches, batch_size, scales, precision, device, work / "warm-up", {})
    for _ in range(args.rounds):
        for way in seconds:
            one_pass(way, net, batches, batch_size, scales, precision, device, work / way, seconds[way])
    difference = 0.0  # between the ways' CAM files (float16 values)
    for record in records:
        first, *others = [load_cam(cam_path(work / way, record.image_id)) for way in seconds]
        difference = max(difference, *(float(np.abs(first[k].astype(np.float32) - other[k]).max()) for other in others for k in first))

    per_image = {way: {phase: s / (args.rounds * len(records)) for phase, s in phases.items()} for way, phases in seconds.items()}
    for phases in per_image.values():
        phases.setdefault("total", sum(phases.values()))
    report = {"device": args.device, "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "precision": precision, "images": len(records), "batches": len(batches), "scales": scales,
              "batch_size": batch_size, "classes_per_image": float(np.mean([len(r.class_ids) for r in records])),
              "seconds_per_image": per_image, "max_file_difference": difference,
              "speedup": per_image["host"]["total"] / per_image["device"]["total"],
              "overlap_speedup": per_image["device"]["total"] / per_image["overlapped"]["total"]}
    write_results(f"cam_transfer_{args.device}", report)


if __name__ == "__main__":
    main()
