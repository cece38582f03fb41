"""The project's dense CRF against pydensecrf, the reference's, on the same images, unaries and
parameters: IR labels as IRN makes them (two CRFs per image, from CAMs at the foreground and
background thresholds), marginals, and seconds per image on the same cores.

    pip install -e '.[reference-crf]'   # pydensecrf2: builds from source with a C++ compiler
    python benchmarks/crf.py [--scenes 20] [--size 375x500] [--device cpu|cuda] [--threads 2]

Scenes are the synthetic world rendered at --size, with CAM-like maps made from their masks
(blurred, uneven peaks, partial cover, low-frequency noise); the CRF settings are the voc12
group's (IRN's: 10 iterations, Gaussian 3/3, bilateral 50/5/10, gt_prob 0.7, IR thresholds
0.30/0.10). Compared: the lattice CRF (`crf.kernel: lattice`) and the window CRF (`window`, at
the settings given by --window/--downsample). pydensecrf runs on --threads processes (it is
single-threaded), the torch CRFs with --threads threads. Writes
benchmarks/results/crf_<size>_<device>.json.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from common import REPO, write_results
from pipeline.data.prepare import world_spec
from pipeline.data.synthetic import render_scene, scene_rng
from pipeline.irn.ir_label import ir_labels
from pipeline.metrics import IGNORE
from pipeline.ops.crf import mean_field, pairwise_kernel, unary_from_labels
from pipeline.ops.maps import threshold_labels
from pipeline.params import CrfSection, SyntheticDataset

try:
    import pydensecrf.densecrf as dcrf
except ImportError:  # the optional reference
    dcrf = None

FG_THRESHOLD, BG_THRESHOLD = 0.30, 0.10  # the voc12 group's IR-label thresholds


def scenes(count: int, height: int, width: int, seed: int = 0):
    """(image uint8 (H, W, 3), CAMs (K, H, W) of the present classes) per scene."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["dataset"]
    size = max(height, width)
    spec = world_spec(SyntheticDataset.model_validate({**raw, "image_size": size}))
    out = []
    for index in range(count):
        rng = scene_rng(seed, "crf", index)
        scene = render_scene(spec, rng)
        image, label = scene.image[:height, :width], scene.label[:height, :width]
        classes = [c for c in np.unique(label) if c != 0] or [int(scene.label.max()) or 1]
        cams = []
        for c in classes:
            mask = torch.from_numpy((label == c).astype(np.float32))[None, None]
            sigma = rng.uniform(0.02, 0.06) * size
            radius = int(3 * sigma)
            taps = torch.exp(-torch.arange(-radius, radius + 1.0) ** 2 / (2 * sigma**2))
            taps /= taps.sum()
            blurred = F.conv2d(F.conv2d(mask, taps.view(1, 1, -1, 1), padding=(radius, 0)), taps.view(1, 1, 1, -1), padding=(0, radius))[0, 0]
            cam = (blurred / blurred.max().clamp_min(1e-6)) ** rng.uniform(0.7, 2.5) * rng.uniform(0.5, 1.0)
            noise = F.interpolate(torch.rand(1, 1, 6, 8, generator=torch.Generator().manual_seed(index)), size=(height, width),
                                  mode="bilinear", align_corners=False)[0, 0]
            cams.append((cam + 0.15 * noise).clamp(0, 1))
        out.append((np.ascontiguousarray(image), torch.stack(cams)))
    return out


def reference_marginals(image: np.ndarray, unary: np.ndarray, cfg: CrfSection) -> np.ndarray:
    """pydensecrf's marginals (L, H, W), as IRN's crf_inference_label sets it up."""
    labels, height, width = unary.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(labels, -1).astype(np.float32)))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=image, compat=cfg.bilateral_compat)
    return np.array(crf.inference(cfg.iterations)).reshape(labels, height, width)


def label_unaries(cams: torch.Tensor, cfg: CrfSection) -> list[np.ndarray]:
    """The unaries (L, H, W) of the foreground- and background-threshold label maps."""
    return [unary_from_labels(threshold_labels(cams[None], t), len(cams) + 1, cfg.gt_prob)[0].numpy()
            for t in (FG_THRESHOLD, BG_THRESHOLD)]


def reference_ir_labels(job) -> np.ndarray:
    """IR labels with pydensecrf, the rule of pipeline.irn.ir_label.ir_labels (numpy only: it runs
    in forked processes, where torch's thread pool must not be touched)."""
    image, unaries, cfg = job
    fg, bg = (reference_marginals(image, unary, cfg).argmax(0) for unary in unaries)
    return np.where((fg == 0) & (bg != 0), IGNORE, fg)


def project_ir_labels(image: np.ndarray, cams: torch.Tensor, cfg: CrfSection, device: str) -> np.ndarray:
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
    return ir_labels(images, cams[None].to(device), FG_THRESHOLD, BG_THRESHOLD, cfg)[0].cpu().numpy()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--size", default="375x500", help="HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--downsample", type=int, default=4)
    args = parser.parse_args()
    if dcrf is None:
        print("benchmarks/crf.py: pydensecrf is not installed (pip install -e '.[reference-crf]': pydensecrf2, "
              "built with a C++ compiler); skipped")
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the stages run the CRF
    height, width = (int(v) for v in args.size.split("x"))
    base = dict(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0,
                bilateral_compat=10.0, gt_prob=0.7, window=args.window, downsample=args.downsample)
    crfs = {name: CrfSection.model_validate({**base, "kernel": name}) for name in ("lattice", "window")}
    data = scenes(args.scenes, height, width)

    jobs = [(image, label_unaries(cams, crfs["lattice"]), crfs["lattice"]) for image, cams in data]
    with multiprocessing.get_context("fork").Pool(args.threads) as pool:
        reference, seconds = timed(lambda: pool.map(reference_ir_labels, jobs))
    report = {"size": [height, width], "scenes": len(data), "device": args.device, "threads": args.threads,
              "labels_per_scene": [len(cams) + 1 for _, cams in data],
              "pydensecrf": {"seconds_per_image": seconds / len(data)}}
    for name, cfg in crfs.items():
        project_ir_labels(*data[0], cfg, args.device)  # warm-up
        labels, seconds = timed(lambda: [project_ir_labels(image, cams, cfg, args.device) for image, cams in data])
        agreement = [float((ours == ref).mean()) for ours, ref in zip(labels, reference)]
        ignore = [float((ours == IGNORE).mean()) for ours in labels]
        report[name] = {"seconds_per_image": seconds / len(data), "ir_label_agreement_mean": float(np.mean(agreement)),
                        "ir_label_agreement_worst": min(agreement), "ignore_share_mean": float(np.mean(ignore)),
                        "speed_vs_pydensecrf": report["pydensecrf"]["seconds_per_image"] * len(data) / seconds}
    report["pydensecrf"]["ignore_share_mean"] = float(np.mean([(ref == IGNORE).mean() for ref in reference]))
    # marginals of one CRF (the foreground-threshold labels) on the first scenes
    diffs = []
    for image, cams in data[:5]:
        unary = label_unaries(cams, crfs["lattice"])[0]
        images = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(args.device)
        ours = mean_field(torch.from_numpy(unary)[None].to(args.device), pairwise_kernel(images, crfs["lattice"]), crfs["lattice"])
        diffs.append(float(np.abs(ours[0].cpu().numpy() - reference_marginals(image, unary, crfs["lattice"])).max()))
    report["lattice"]["marginals_max_abs_diff"] = max(diffs)
    write_results(f"crf_{height}x{width}_{args.device}", report)


if __name__ == "__main__":
    main()
