"""IRN's random walk at a VOC-sized stride-4 grid: sparse propagation (pipeline.irn.random_walk)
against the dense formulation (build the (HW)^2 transition matrix, square it `exp` times, one
product), side by side on the same boundary map and CAMs; and a candidate for GPUs, the same
sparse steps with each one a single product over an unfolded window (unfolded_walk: 3 kernels a
step instead of one per neighbourhood offset, 69 at radius 5).

    python benchmarks/random_walk.py [--height 128 --width 94 --radius 5 --beta 10 --exp 8 --classes 3]
                                     [--no-dense]

Writes benchmarks/results/random_walk_<device>.json: the times, the ratios, the max absolute
difference of each output from the dense one (from the sparse one with --no-dense).
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


def unfolded_walk(cams: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, exp: int) -> torch.Tensor:
    """propagate's steps, each one product: the (2r+1)^2 window around every pixel unfolded
    (zero outside the grid, as propagate's shifted views), times each offset's incoming weight
    (zero for the window's corners outside the radius), summed over the window."""
    height, width = boundary.shape
    box = 2 * radius + 1
    offsets, weights = incoming_weights(boundary, radius, beta)
    window = torch.zeros(box * box, height * width, dtype=cams.dtype, device=cams.device)
    for (dy, dx), w in zip(offsets, weights):
        window[(dy + radius) * box + dx + radius] = w.flatten()  # unfold's order: row by row
    v = cams
    for _ in range(2**exp):
        patches = F.unfold(v[:, None], box, padding=radius)  # (K, box^2, HW): v[y + dy, x + dx]
        v = (patches * window).sum(1).view_as(v)
    return v


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
    parser.add_argument("--no-dense", action="store_true", help="skip the dense walk (7 minutes on 2 CPU cores)")
    args = parser.parse_args()
    device = torch.device(args.device)
    boundary = smooth_boundary(args.height, args.width, device)
    cams = torch.rand(args.classes, args.height, args.width, device=device)
    walk = (args.radius, args.beta, args.exp)

    for walker in (propagate, unfolded_walk):  # warm-up
        walker(cams[:, :8, :8], boundary[:8, :8], *walk)
    sparse, sparse_s = timed(lambda: propagate(cams, boundary, *walk), device)
    unfolded, unfolded_s = timed(lambda: unfolded_walk(cams, boundary, *walk), device)
    report = {"device": str(device), "grid": [args.height, args.width], "radius": args.radius, "beta": args.beta,
              "steps": 2**args.exp, "classes": args.classes, "sparse_s": sparse_s, "unfolded_s": unfolded_s,
              "unfolded_speedup": sparse_s / unfolded_s}
    reference = sparse
    if not args.no_dense:
        reference, dense_s = timed(lambda: dense_walk(cams, boundary, *walk), device)
        report |= {"dense_s": dense_s, "speedup": dense_s / sparse_s,
                   "max_abs_difference": (sparse - reference).abs().max().item()}
    report |= {"unfolded_max_abs_difference": (unfolded - reference).abs().max().item(), "output_max": reference.abs().max().item()}
    write_results(f"random_walk_{device.type}" + ("_no_dense" if args.no_dense else ""), report)


if __name__ == "__main__":
    main()
