"""Why IRN's walk helps or hurts on a finished pipeline run: the walk with the trained boundary net
against the same walk with an oracle boundary drawn from the ground truth, and against no walk.

    python benchmarks/walk_diagnosis.py [--source DIR] [--cams clims] [--exp-times 2 8]
                                        [--radius 2 5] [--crf] [--limit N] [--out walk_diagnosis]

DIR is a repository folder where `dvc repro` ran, or a run folder of benchmarks/ablation.py
(default: this repository); its CAMs, IR labels, boundary net and params are read, nothing is
written there. The boundaries: none (the walk as plain diffusion); net (the trained boundary net,
as make_sem_seg); ir (the edges of the IR labels the net learns from, 255 a label of its own);
oracle (the ground truth's edges). An edge map is twice the fraction of edge pixels in each
stride-4 cell, clipped to 1. For each boundary, walk radius and length, the pseudo labels of the
scored images that hold a class are scored without the CRF (with `--crf`: refined by the params'
CRF, as make_sem_seg does), at the params' background score and at the best one of a sweep (the
walk changes the scale the score is compared with). Also: the boundary net's mean on the ground
truth's edge cells and off them, and how many grid cells an object spans and how many of them lie
on its rim (the walk needs object interiors).

If the oracle walk beats no walk, the walk is sound and the boundary is what costs; the ir rows
then say whether the IR labels carry the boundary the net should learn, and the net's means how
much of it the net learned.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import REPO, results_name, write_results

sys.path.insert(0, str(REPO))
from pipeline import layout  # noqa: E402
from pipeline.data.cam_files import CAM_STRIDE, cam_path, load_cam  # noqa: E402
from pipeline.data.images import load_image  # noqa: E402
from pipeline.data.manifest import read_manifest, same_shape_batches  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.io import label_png_path, read_label  # noqa: E402
from pipeline.irn.sem_seg import labels_at, walked_scores  # noqa: E402
from pipeline.metrics import IGNORE  # noqa: E402
from pipeline.nets.boundary import boundary_map, load_boundary_net  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.scoring import ScoreTotals, context_ids, predict, summarise, threshold_totals, thresholds  # noqa: E402

SWEEP = thresholds(0.05, 0.6, 0.05)


def label_edges(label: np.ndarray) -> torch.Tensor:
    """(h, w) in [0, 1] on the stride-4 grid: twice the fraction of a cell's pixels that sit on an
    edge of the label map, clipped to 1."""
    lab = torch.from_numpy(label.astype(np.int64))
    across, down = lab[:, 1:] != lab[:, :-1], lab[1:] != lab[:-1]
    edge = torch.zeros(lab.shape, dtype=torch.bool)
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    pooled = F.avg_pool2d(edge.float()[None, None], CAM_STRIDE, ceil_mode=True)[0, 0]
    return (2 * pooled).clamp(max=1.0)


def grid_objects(label: np.ndarray) -> tuple[list[int], int]:
    """The ground truth on the stride-4 grid (each cell's pixel 4i, as train_irn samples it): the
    cell count of each class present, and how many object cells touch another label (4-neighbours):
    cells where the boundary must sit, on the path of every pair that starts or ends there."""
    grid = label[::CAM_STRIDE, ::CAM_STRIDE]
    objects = (grid > 0) & (grid != IGNORE)
    padded = np.pad(grid, 1, mode="edge")
    rim = np.zeros_like(objects)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        rim |= padded[1 + dy : 1 + dy + grid.shape[0], 1 + dx : 1 + dx + grid.shape[1]] != grid
    return [int((grid == c).sum()) for c in np.unique(grid[objects])], int((objects & rim).sum())


def crf_predictions(scores: torch.Tensor, images: torch.Tensor, class_ids: list, ts: np.ndarray, crf) -> np.ndarray:
    """Label maps (N, T, H, W) in class ids: the walked scores (N, K, H, W) thresholded at each
    background score of `ts`, then refined by the CRF on the images (one grouped CRF per batch)."""
    refined = torch.stack(labels_at(scores, images, ts, crf), 1)  # (N, T, H, W)
    return np.stack([np.asarray([0, *ids], np.int64)[labels] for ids, labels in zip(class_ids, refined.numpy())])


def walk_variants(base, boundaries: list[str], radii: list[int], exp_times: list[int]) -> dict:
    """By name, (the boundary walked over, make_sem_seg settings): no walk, then each boundary x
    radius x 2^exp steps."""
    variants = {"no walk": ("none", base.model_copy(update={"walk": False}))}
    for boundary in boundaries:
        for radius in radii:
            for exp in exp_times:
                variants[f"{boundary}, radius {radius}, {2 ** exp} steps"] = (boundary, base.model_copy(
                    update={"walk": True, "radius": radius, "exp_times": exp}))
    return variants


def figures(total: ScoreTotals, rows: slice, ts: np.ndarray, threshold: float, names: list[str]) -> dict:
    """One variant's `rows` of the totals (one per score of `ts`): mIoU and leak at the params'
    background score; the best mIoU over the sweep and its score."""
    t = int(np.flatnonzero(ts == threshold)[0])
    at = rows.start + t
    best, _ = summarise(ScoreTotals(total.confusion[rows], total.leaked[rows], total.context), ts, names)
    fixed, _ = summarise(ScoreTotals(total.confusion[at:at + 1], total.leaked[at:at + 1], total.context), ts[t:t + 1], names)
    return {"miou": fixed["miou"], "context_leak": fixed.get("context_leak"),
            "best_miou": best["miou"], "best_threshold": best["best_threshold"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO)
    parser.add_argument("--cams", default=None, help="which net's CAMs (default: make_ir_label.cams)")
    parser.add_argument("--exp-times", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--radius", type=int, nargs="+", default=None, help="walk radii (default: make_sem_seg.radius)")
    parser.add_argument("--boundaries", nargs="+", default=["none", "net", "ir", "oracle"], choices=["none", "net", "ir", "oracle"])
    parser.add_argument("--crf", action="store_true", help="refine every variant's labels with the CRF (as make_sem_seg)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=results_name, default="walk_diagnosis")
    args = parser.parse_args()
    source = args.source.resolve()
    os.chdir(source)
    torch.set_flush_denormal(True)  # as the stages run the CRF (denormals slow it down several times)
    params = load_params()
    cams_folder = layout.cams_dir(args.cams or params.make_ir_label.cams)
    net = load_boundary_net(layout.IRN_DIR)[0]
    records = [r for r in read_manifest(layout.manifest_path(layout.TRAIN_EVAL)) if r.label_path is not None and r.class_ids][: args.limit]
    names = params.dataset.class_names
    base = params.make_sem_seg
    variants = walk_variants(base, args.boundaries, args.radius or [base.radius], args.exp_times)
    ts = np.unique(np.concatenate([SWEEP, [base.bg_threshold]]))
    total: ScoreTotals | None = None  # every variant's thresholds, one after another
    on_edge, off_edge = [], []
    object_cells, rim_cells = [], 0
    with torch.no_grad():
        for batch in same_shape_batches(records, 64):
            images = torch.stack([load_image(r.image_path) for r in batch])
            cams = [load_cam(cam_path(cams_folder, r.image_id)) for r in batch]
            maps = torch.stack([torch.from_numpy(c["cam"].astype(np.float32)) for c in cams])
            truths = [read_label(r.label_path) for r in batch]
            boundaries = {"none": torch.zeros(maps.shape[0], *maps.shape[-2:]), "net": boundary_map(net, images),
                          "oracle": torch.stack([label_edges(truth) for truth in truths])}
            if "ir" in args.boundaries:
                boundaries["ir"] = torch.stack([label_edges(read_label(label_png_path(layout.IR_LABELS_DIR, r.image_id))) for r in batch])
            for truth in truths:
                cells, rim = grid_objects(truth)
                object_cells += cells
                rim_cells += rim
            edge = boundaries["oracle"] > 0
            on_edge.append(boundaries["net"][edge].mean().item())
            off_edge.append(boundaries["net"][~edge].mean().item())
            scores = [walked_scores(maps, boundaries[b], cfg, images.shape[-2:]) for b, cfg in variants.values()]
            index = {r.image_id: n for n, r in enumerate(batch)}
            class_ids = [c["class_ids"] for c in cams]
            if args.crf:
                labels = [crf_predictions(s, images, class_ids, ts, params.crf) for s in scores]
                stacked = lambda r: np.concatenate([v[index[r.image_id]] for v in labels])
            else:
                stacked = lambda r: np.concatenate([predict(s[index[r.image_id]].numpy(), class_ids[index[r.image_id]], ts) for s in scores])
            part = threshold_totals(batch, stacked, len(ts) * len(variants), len(names), context_ids(params.dataset))
            total = part if total is None else total + part
    rows = {name: figures(total, slice(n * len(ts), (n + 1) * len(ts)), ts, base.bg_threshold, names)
            for n, name in enumerate(variants)}
    report = {"source": str(source), "cams": str(cams_folder), "images": len(records), "crf": args.crf,
              "bg_threshold": base.bg_threshold, "net_boundary_on_edges": float(np.mean(on_edge)),
              "net_boundary_off_edges": float(np.mean(off_edge)), "median_cells_per_object": float(np.median(object_cells)),
              "object_cells_on_a_rim": rim_cells / max(1, sum(object_cells)), "variants": rows}
    write_results(args.out, report, quiet=True)
    print(f"{len(records)} images; boundary net: {report['net_boundary_on_edges']:.3f} on ground-truth edges, "
          f"{report['net_boundary_off_edges']:.3f} off them; an object spans {report['median_cells_per_object']:.0f} grid "
          f"cells (median), {100 * report['object_cells_on_a_rim']:.0f} % of them on its rim")
    print(f"| pseudo labels, {'the CRF after' if args.crf else 'no CRF'} | mIoU at {base.bg_threshold} | context leak | best mIoU (threshold) |\n|---|---|---|---|")
    for name, r in rows.items():
        leak = f"{r['context_leak']:.1f} %" if r["context_leak"] is not None else "-"
        print(f"| {name} | {r['miou']:.1f} | {leak} | {r['best_miou']:.1f} ({r['best_threshold']:.2f}) |")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a folder without a finished run: one line, not a traceback
        raise SystemExit(f"error: {Path.cwd()}: {exc}")
