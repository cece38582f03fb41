"""What every stage costs at VOC size with the real architectures: seconds per image (per step for
training), peak memory, and the wall time that extrapolates to PASCAL VOC and COCO.

    python benchmarks/real_scale.py [--device cpu|cuda] [--precision fp32|bf16] [--images 44]
                                    [--clip ViT-B-32-quickgelu] [--passes N] [--profile IMAGES]
                                    [--workdir DIR] [--out NAME]

Makes the stand-ins (benchmarks/stand_ins.py: a random ResNet-50 and CLIP, the synthetic world
rendered at VOC's image sizes in a VOCdevkit tree), composes the voc12 group on them (512-pixel
crops, 4 CAM scales + flip, IRN radius 10 / 5, 2^8 walk steps, DeepLab at 321 with multi-scale +
flip + CRF at test time; its batch sizes) and runs every stage's own function, one stage per
child process, in that process (`distributed.launcher: local`, no Ray; per-image stages with
num_workers 0). Training runs two epochs; its cost per step is the second epoch's (the first
warms up). A per-image stage's cost per image counts its start; on CUDA it runs over its images
a second time (`--passes`), and the extrapolation takes that steady pace; `--profile N` then runs
its first N images under torch's profiler (profiled_pass: how busy the GPU was, and on what).
The peak memory of a stage is the largest sum of the proportional set sizes of its process and
its children (DataLoader workers), sampled every 0.1 s, and on CUDA torch's peak allocation.
Results: benchmarks/results/<out>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, RESULTS, apply_overrides, results_name, write_results  # noqa: E402
from stand_ins import overrides, write_voc_tree, write_weights  # noqa: E402

TRAINED = ("train_cam", "train_clims", "train_irn", "train_seg")
# every stage and what it writes in the work folder (removed first: a rerun measures afresh)
STAGES = {"prepare_data": "data", "prepare_clip": "artifacts/clip", "train_cam": "artifacts/net_baseline",
          "train_clims": "artifacts/net_clims", "make_cam": "artifacts/cams_clims", "make_ir_label": "artifacts/ir_labels",
          "train_irn": "artifacts/net_irn", "make_sem_seg": "artifacts/pseudo_labels", "train_seg": "artifacts/net_seg",
          "eval_seg": None}
# Split sizes the extrapolation uses (the reference's): training images, images scored, val images
DATASETS = {"voc12": {"train": 10582, "train_eval": 1464, "val": 1449}, "coco14": {"train": 82783, "train_eval": 82783, "val": 40504}}
# how many times a per-image stage runs over which split in the pipeline (make_cam: both CAM nets)
PER_IMAGE = {"make_cam": ("train", 2), "make_ir_label": ("train", 1), "make_sem_seg": ("train", 1), "eval_seg": ("val", 1)}


# --------------------------------------------------------------------------- one stage, in a child
def run_stage(stage: str, work: Path, passes: int = 1, profile: int = 0) -> dict:
    """Run `stage` on the stand-ins in `work` (params.json there); returns its timing. A per-image
    stage runs `passes` times (timed_passes), then over its first `profile` images under the
    profiler (profiled_pass)."""
    import torch

    from pipeline.params import validate

    params = validate(json.loads((work / "params.json").read_text()))
    dist = params.distributed
    data, art = work / "data", work / "artifacts"
    manifest = data / "train.parquet"
    began = time.perf_counter()
    figures: dict = {}
    per_image_stage = None  # (a pass over (some images, into a folder) -> how many, the folder it writes)
    if stage == "prepare_data":
        from pipeline.data.prepare import prepare_splits

        data.mkdir(parents=True, exist_ok=True)
        prepare_splits(params.dataset, data, data)
    elif stage == "prepare_clip":
        from pipeline.clip.prepare import prepare_clip

        prepare_clip(params, art / "clip")
    elif stage in ("train_cam", "train_clims"):
        from pipeline.cam.ray_train import train

        kind = "baseline" if stage == "train_cam" else "clims"
        extra = {"init_net": art / "net_baseline", "clip_dir": art / "clip", "tau": float(params.clims_loss.tau)} if kind == "clims" else {}
        figures = per_step(train(params, kind, manifest, art / f"net_{kind}", **extra))
    elif stage == "make_cam":
        from pipeline.cam.infer import make_cams
        from pipeline.data.manifest import read_manifest

        records = read_manifest(manifest)
        per_image_stage = (lambda chosen, out: make_cams(chosen, art / "net_clims", out, params.make_cam, dist), art / "cams_clims")
    elif stage == "make_ir_label":
        from pipeline.data.manifest import read_manifest
        from pipeline.irn.ir_label import make_ir_labels

        records = read_manifest(manifest)
        per_image_stage = (lambda chosen, out: make_ir_labels(chosen, art / "cams_clims", out, params.make_ir_label, params.crf, dist),
                           art / "ir_labels")
    elif stage == "train_irn":
        from pipeline.irn.train import train_irn

        figures = per_step(train_irn(params, manifest, art / "ir_labels", art / "net_irn"))
    elif stage == "make_sem_seg":
        from pipeline.data.manifest import read_manifest
        from pipeline.irn.sem_seg import make_sem_seg

        records = read_manifest(manifest)
        per_image_stage = (lambda chosen, out: make_sem_seg(chosen, art / "net_irn", art / "cams_clims", out, params.make_sem_seg,
                                                            params.crf, dist), art / "pseudo_labels")
    elif stage == "train_seg":
        from pipeline.seg.train import train_seg

        figures = per_step(train_seg(params, manifest, art / "pseudo_labels", art / "net_seg"))
    elif stage == "eval_seg":
        from pipeline.data.manifest import read_manifest
        from pipeline.nets.deeplab import load_seg_net
        from pipeline.precision import prepared_net, stage_device
        from pipeline.seg.evaluate import predict_labels

        net = prepared_net(load_seg_net(art / "net_seg", stage_device(dist.use_gpu))[0], dist.precision)
        records = read_manifest(data / "val.parquet")
        cfg = params.eval_seg
        per_image_stage = (lambda chosen, _: sum(1 for _ in predict_labels(net, chosen, cfg.scales, cfg.batch_size,
                                                                           params.crf if cfg.crf else None, dist.precision)), None)
    if per_image_stage:
        run_on, out = per_image_stage
        figures = timed_passes(lambda: run_on(records, out), out, passes, began)
        if profile:  # into a folder of its own: the next stage reads every image's output
            aside = art / "profiled" if out else None
            figures["profile"] = profiled_pass(lambda: run_on(records[:profile], aside), aside)
    if torch.cuda.is_available() and dist.use_gpu:
        torch.cuda.synchronize()
        figures["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return {"seconds": time.perf_counter() - began, **figures}


def per_step(history: list[dict]) -> dict:
    """Seconds per step of the last epoch (the earlier ones warm up)."""
    last = history[-1]
    return {"seconds_per_step": last["seconds"] / last["steps"], "steps": last["steps"]}


def timed_passes(one_pass, out: Path | None, passes: int, began: float) -> dict:
    """Seconds per image of a per-image stage. The first pass counts the stage's start (imports,
    loading its net) and, on a GPU, cuDNN's first sight of each batch shape: over a few hundred
    images that is most of it. Each further pass runs over the same images again, its output
    removed first, at the pace a whole dataset runs: `steady_seconds_per_image`, their mean."""
    images = one_pass()
    figures = {"seconds_per_image": (time.perf_counter() - began) / max(1, images), "images": images}
    if passes > 1:
        again = time.perf_counter()
        for _ in range(passes - 1):
            if out:
                shutil.rmtree(out)
            one_pass()
        figures["steady_seconds_per_image"] = (time.perf_counter() - again) / max(1, images * (passes - 1))
    return figures


def profiled_pass(one_pass, out: Path | None, top: int = 8) -> dict:
    """A pass (over a few images: the profiler records every op, and IRN's walk runs thousands an
    image) under torch's profiler, writing into `out`, removed before and after: the share of its
    wall time the GPU ran kernels (on CUDA), and the `top` kernels and host-side ops by their own
    time, in seconds per image. The profiler slows the host, so its wall time is not the pace."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.cuda.is_available()
    if out:
        shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])], acc_events=True) as profiler:
        images = one_pass()
        if gpu:
            torch.cuda.synchronize()
    wall = time.perf_counter() - began
    if out:
        shutil.rmtree(out)
    events = profiler.key_averages()

    def largest(field: str) -> list:
        ranked = sorted(events, key=lambda e: -getattr(e, field))[:top]
        return [[e.key, getattr(e, field) / 1e6 / max(1, images)] for e in ranked]

    figures = {"images": images, "seconds_per_image": wall / max(1, images), "top_host_ops": largest("self_cpu_time_total")}
    if gpu:
        figures |= {"gpu_busy_share": sum(e.self_device_time_total for e in events) / 1e6 / wall,
                    "top_kernels": largest("self_device_time_total")}
    return figures


# --------------------------------------------------------------------------- the parent
def peak_memory(process: subprocess.Popen, every: float = 0.1) -> list[float]:
    """Sample the memory of `process` and its children until it ends; [peak GiB]. Each process
    counts its proportional set size (its own pages, plus its share of pages shared with the
    others: DataLoader workers share the parent's), so the sum is the memory the stage holds."""
    peak = [0.0]

    def pss(p: psutil.Process) -> int:
        try:
            return p.memory_full_info().pss
        except psutil.Error:  # a DataLoader worker that has just ended
            return 0

    def sample():
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak[0] = max(peak[0], sum(pss(p) for p in [root, *root.children(recursive=True)]) / 2**30)
            except psutil.Error:
                pass
            time.sleep(every)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def composed(args, files, root) -> dict:
    from pipeline.config import compose

    gpu = args.device == "cuda"
    settings = [*overrides(files, root, args.clip),
                "distributed.launcher=local", "distributed.num_workers=1", f"distributed.use_gpu={str(gpu).lower()}",
                f"distributed.precision={args.precision}", f"distributed.cpus_per_worker={os.cpu_count() if not gpu else 4}",
                f"distributed.storage={args.workdir / 'runs'}",
                *(f"{section}.epochs=2" for section in TRAINED),
                *(f"{stage}.num_workers=0" for stage in ("make_cam", "make_ir_label", "make_sem_seg"))]
    return compose(settings, REPO / "conf")


def extrapolate(stages: dict) -> dict:
    """Hours each stage would take on VOC and COCO at the measured rates (one device), with each
    dataset group's own epochs and batch sizes (not the two epochs measured)."""
    from pipeline.config import compose

    wall = {}
    for name, sizes in DATASETS.items():
        group = compose([f"dataset={name}"], REPO / "conf")
        hours = {}
        for stage, figures in stages.items():
            if "seconds_per_step" in figures:
                cfg = group[stage]
                hours[stage] = cfg["epochs"] * (sizes["train"] // cfg["batch_size"]) * figures["seconds_per_step"] / 3600
            elif stage in PER_IMAGE:
                split, times = PER_IMAGE[stage]
                pace = figures.get("steady_seconds_per_image", figures["seconds_per_image"])
                hours[stage] = times * sizes[split] * pace / 3600
        wall[name] = {"hours": hours, "total_hours": sum(hours.values())}
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--images", type=int, default=44, help="the tree's images (3/4 train_aug: IRN's batch of 32 must fit)")
    parser.add_argument("--clip", default="ViT-B-32-quickgelu", choices=["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value (YAML value): a quick check")
    parser.add_argument("--out", type=results_name, help="results name (default real_scale_<device>)")
    parser.add_argument("--passes", type=int, help="passes of each per-image stage (default: 2 on cuda, 1 on cpu; timed_passes)")
    parser.add_argument("--profile", type=int, default=0, metavar="IMAGES",
                        help="then each per-image stage's first IMAGES images under the profiler (profiled_pass)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.passes = args.passes or (2 if args.device == "cuda" else 1)
    if args.child:
        print("RESULT " + json.dumps(run_stage(args.child, args.workdir, args.passes, args.profile)), flush=True)
        return
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="clims-real-scale-"))).resolve()
    files = write_weights(args.workdir / "stand_ins", [args.clip])
    root = write_voc_tree(args.workdir / "stand_ins", args.images)
    raw = apply_overrides(composed(args, files, root), args.overrides)
    (args.workdir / "params.json").write_text(json.dumps(raw))

    # a rerun of some stages with the same settings keeps the other stages' figures
    name = args.out or f"real_scale_{args.device}"
    settings = {"device": args.device, "precision": args.precision, "overrides": args.overrides, "clip": args.clip, "images": args.images,
                "passes": args.passes}
    earlier = RESULTS / f"{name}.json"
    stages = {}
    if earlier.is_file():
        kept = json.loads(earlier.read_text())
        if all(kept.get(k) == v for k, v in settings.items()):
            stages = {s: figures for s, figures in kept["stages"].items() if s not in args.stages}
    for stage in args.stages:
        for folder in ("runs", STAGES[stage]):  # a training run would resume, a per-image stage skip done images
            if folder:
                shutil.rmtree(args.workdir / folder, ignore_errors=True)
        began = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--child", stage, "--workdir", str(args.workdir), "--passes", str(args.passes),
                                  "--profile", str(args.profile)], stdout=subprocess.PIPE, text=True, cwd=args.workdir)
        peak = peak_memory(child)
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{stage} failed (exit {child.returncode})")
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        stages[stage] = {**result, "wall_seconds": time.perf_counter() - began, "peak_memory_gib": peak[0]}
        print(f"{stage:14s} " + " ".join(f"{k} {v:.3g}" for k, v in stages[stage].items() if k != "profile"), flush=True)

    import torch

    stages = {s: stages[s] for s in STAGES if s in stages}
    report = {
        **settings, "torch": torch.__version__, "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "backbone": "resnet50 strides (2, 2, 2, 1)", "batch_sizes": {s: raw[s]["batch_size"] for s in TRAINED},
        "stages": stages, "extrapolated": extrapolate(stages),
        "peak_memory_gib_max": max(s["peak_memory_gib"] for s in stages.values()),
    }
    write_results(name, report)


if __name__ == "__main__":
    main()
