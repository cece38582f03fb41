"""glibc's malloc as it comes against pipeline.allocator's (freed memory kept in the process),
side by side on the default's three heaviest kinds of CPU work.

    python benchmarks/allocator.py [--clip-steps 60] [--out allocator_<name>]

Each (workload, allocator) runs in its own process, which calls keep_freed_memory() or not before
the work: the tiny CLIP's training steps (prepare_clip), multi-scale CAM inference of the
default CAM net on 128 images (make_cam), and SGD steps of the CAM net (train_cam, train_clims and
train_seg's kind of work). It prints the work's seconds, the process's kernel (sys) seconds and
peak memory, the ratio, and whether the two results are the same to the bit (weights' or maps'
digests); the stages call keep_freed_memory() themselves (pipeline/stage.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import REPO, cpu_model, digest, results_name, write_results

sys.path.insert(0, str(REPO))

ALLOCATORS = ("glibc default", "kept")


def clip_steps(steps: int):
    import torch

    from pipeline.clip import model as clip_model
    from pipeline.clip.prepare import clip_world, prompts
    from pipeline.clip.train import train_tiny_clip
    from pipeline.clip.views import BACKGROUND_FRAMES, render_pool
    from pipeline.params import load_params

    params = load_params(REPO / "params.yaml")
    cfg = params.clip
    spec = clip_world(params.dataset, cfg.train)
    pool = render_pool(spec, 400, cfg.train.seed, "clip", frames=BACKGROUND_FRAMES)
    torch.manual_seed(cfg.train.seed)
    net = clip_model.build_tiny(cfg.model_name, cfg.architecture)
    train = cfg.train.model_copy(update={"steps": steps})
    names = prompts(params.dataset.prompt_template, list(spec.classes) + list(spec.backgrounds))
    start = time.perf_counter()
    train_tiny_clip(clip_model.wrap(net, cfg.model_name), pool, names, train)
    return time.perf_counter() - start, digest(net.state_dict().values())


def cam_net_and_images(count: int):
    import torch

    from pipeline.nets.cam_net import build_cam_net
    from pipeline.params import load_params

    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    net = build_cam_net(params.backbone, len(params.dataset.class_names))
    images = torch.rand(count, 3, params.dataset.image_size, params.dataset.image_size, generator=torch.Generator().manual_seed(0))
    return params, net, images


def make_cam():
    from pipeline.cam.infer import multiscale_maps

    params, net, images = cam_net_and_images(128)
    net.eval()
    size = params.make_cam.batch_size
    start = time.perf_counter()
    maps = [multiscale_maps(net, images[i : i + size], list(params.make_cam.scales)) for i in range(0, len(images), size)]
    return time.perf_counter() - start, digest(m[key] for m in maps for key in sorted(m))


def train_cam(steps: int = 10):
    import torch

    from pipeline.cam.train import baseline_step

    batch = 16
    params, net, images = cam_net_and_images(batch)
    labels = (torch.rand(batch, len(params.dataset.class_names), generator=torch.Generator().manual_seed(1)) > 0.5).float()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    for _ in range(steps):
        loss = baseline_step(net, images, labels)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start, digest(net.state_dict().values())


def worker(workload: str, allocator: str, clip_steps_count: int) -> dict:
    from pipeline.allocator import keep_freed_memory

    applied = keep_freed_memory() if allocator == "kept" else False
    seconds, result = {"clip": lambda: clip_steps(clip_steps_count), "make_cam": make_cam, "train_cam": train_cam}[workload]()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "seconds": round(seconds, 2), "user_seconds": round(usage.ru_utime, 1),
            "sys_seconds": round(usage.ru_stime, 1), "peak_mb": round(usage.ru_maxrss / 1024), "digest": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-steps", type=int, default=60, help="tiny CLIP training steps")
    parser.add_argument("--out", type=results_name, default=None, help="results name: benchmarks/results/<out>.json")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return print(json.dumps(worker(*args.worker, args.clip_steps)))
    from pipeline.allocator import untuned_environment

    rows = {}
    print(f"{'workload':10} {'allocator':14} {'seconds':>8} {'sys s':>6} {'peak MB':>8}")
    for workload in ("clip", "make_cam", "train_cam"):
        rows[workload] = {}
        for allocator in ALLOCATORS:
            done = subprocess.run([sys.executable, __file__, "--worker", workload, allocator, "--clip-steps", str(args.clip_steps)],
                                  env=untuned_environment(), capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{workload} ({allocator}): the run failed:\n{done.stderr[-2000:]}")
            row = rows[workload][allocator] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{workload:10} {allocator:14} {row['seconds']:8.2f} {row['sys_seconds']:6.1f} {row['peak_mb']:8d}", flush=True)
        default, kept = (rows[workload][a] for a in ALLOCATORS)
        rows[workload]["speedup"] = round(default["seconds"] / kept["seconds"], 3)
        rows[workload]["same_to_the_bit"] = default["digest"] == kept["digest"]
        print(f"{'':10} kept is {rows[workload]['speedup']:.2f}x as fast, peak memory x{kept['peak_mb'] / default['peak_mb']:.2f}, "
              f"results {'the same to the bit' if rows[workload]['same_to_the_bit'] else 'DIFFERENT'}")
    if args.out:
        write_results(args.out, {"cpu": cpu_model(), "cores": os.cpu_count(), "clip_steps": args.clip_steps, "workloads": rows}, quiet=True)


if __name__ == "__main__":
    main()
