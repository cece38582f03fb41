"""IRN's random walk at a VOC-sized stride-4 grid: sparse propagation (pipeline.irn.random_walk)
against the dense formulation (build the (HW)^2 transition matrix, square it `exp` times, one
product), side by side on the same boundary map and CAMs.

    python benchmarks/random_walk.py [--height 128 --width 94 --radius 5 --beta 10 --exp 8 --classes 3]

Writes benchmarks/results/random_walk_<device>.json: both times, the ratio, the max absolute
difference of the outputs.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import write_results
from pipeline.irn.random_walk import incoming_weights, propagate



def dense_walk(cams: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, exp: int) -> torch.Tensor:
    """The reference's way: a dense column-normalised T, squared `exp` times, then cams @ T."""
    height, width = boundary.shape
    n = height * width
    offsets, weights = incoming_weights(boundary, radius, beta)
    transition = torch.zeros(n, n, dtype=cams.dtype, device=cams.device)
    ys, xs = torch.meshgrid(torch.arange(height, device=cams.device), torch.arange(width, device=cams.device), indexing="ij")
    for (dy, dx), w in zip(offsets, weights):
        inside = (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        cols = (ys * width + xs)[inside]
        rows = ((ys + dy) * width + xs + dx)[inside]
        transition[rows, cols] = w[inside]  # T[j + d, j]
    for _ in range(exp):
        transition = transition @ transition
    return (cams.reshape(len(cams), -1) @ transition).reshape(cams.shape)


def smooth_boundary(height: int, width: int, device) -> torch.Tensor:
    """A boundary map with a few thin ridges, like an IRN output."""
    torch.manual_seed(0)
    noise = F.avg_pool2d(torch.rand(1, 1, height, width, device=device), 5, 1, 2)[0, 0]
    ridges = torch.exp(-((noise - noise.mean()) / 0.01) ** 2)
    return (0.9 * ridges + 0.05 * torch.rand(height, width, device=device)).clamp(0, 1)


def timed(fn, device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=94)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp", type=int, default=8)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    boundary = smooth_boundary(args.height, args.width, device)
    cams = torch.rand(args.classes, args.height, args.width, device=device)
    walk = (args.radius, args.beta, args.exp)

    propagate(cams[:, :8, :8], boundary[:8, :8], *walk)  # warm-up
    sparse, sparse_s = timed(lambda: propagate(cams, boundary, *walk), device)
    dense, dense_s = timed(lambda: dense_walk(cams, boundary, *walk), device)
    scale = dense.abs().max().item()
    report = {
        "device": str(device), "grid": [args.height, args.width], "radius": args.radius, "beta": args.beta,
        "steps": 2**args.exp, "classes": args.classes,
        "dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s,
        "max_abs_difference": (sparse - dense).abs().max().item(), "output_max": scale,
    }
    write_results(f"random_walk_{device.type}", report)


if __name__ == "__main__":
    main()
