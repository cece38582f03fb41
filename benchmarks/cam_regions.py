"""Where a CAM sits on the synthetic world's objects: their distinctive part, their plain body,
their class's context, the rest of the ground.

    python benchmarks/cam_regions.py RUNS [--seeds 0 1 2] [--variants baseline otm otm_btm ...]
                                          [--start-biases -4 -50] [--start-head-scale 0.1] [--out NAME]

RUNS is a folder `benchmarks/ablation.py` kept (its `seed<N>-<variant>` run folders, each with its
CAM files and eval_cam's metrics). For every training image and each of its classes, the class's
full-resolution CAM (make_cam's `high_res`, each class divided by its maximum) is read against the
render's own regions, the scene rendered again from the world's seed (the parts are in no data
file):

- part: the class's object pixels of a distinctive part (a sail, a cab, a tail fin, a head);
- body: its other object pixels (painted in the one plain colour every class shares);
- context: the class's context background where no object covers it;
- ground: every other background pixel.

Per run and region: the share above the run's own best background threshold (what eval_cam's
mIoU scores; the class's CAM alone, without the other classes' competition), the share above 0.6
(where a CAM peaks), the CAM's mean, and the mask's mean: P = sigmoid(logits), for a CLIMS net the
mask its losses trained, for the baseline the mask every CLIMS variant starts from (its head is
the baseline's, shifted by `train_clims.init_bias`). Means over (image, class) pairs. A classifier's
CAM on the discriminative part alone covers the part and leaves the body: body well below part.
`--start-biases` adds, for the baseline runs, where P = sigmoid(s x logits + b) of the baseline net
starts a CLIMS run with `train_clims.init_bias: b` and `init_head_scale: s` (`--start-head-scale`,
1 by default; one pass over the whole image).
Writes benchmarks/results/<out>.json and prints each variant's mean over the seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import REPO, results_name, write_results

sys.path.insert(0, str(REPO))
from pipeline import layout  # noqa: E402
from pipeline.cam.ray_train import clims_net_from  # noqa: E402
from pipeline.data.cam_files import cam_path, load_cam  # noqa: E402
from pipeline.data.images import load_image  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.data.prepare import world_spec  # noqa: E402
from pipeline.data.synthetic import render_scene, scene_rng  # noqa: E402
from pipeline.io import read_label  # noqa: E402
from pipeline.nets.cam_net import load_cam_net  # noqa: E402
from pipeline.params import load_params  # noqa: E402

REGIONS = ("part", "body", "context", "ground")
PEAK = 0.6


def regions(scene, spec, class_id: int) -> dict[str, np.ndarray]:
    own, free = scene.label == class_id, scene.label == 0
    context = free & (scene.background == spec.context_id(class_id))
    return {"part": own & scene.parts, "body": own & ~scene.parts, "context": context, "ground": free & ~context}


def run_regions(folder: Path, images: int | None, start_biases: list[float], head_scale: float = 1.0) -> dict:
    """Each region's CAM coverage and means over the run's training images; for a baseline run
    with `start_biases`, also where P = sigmoid(head_scale x logits + bias) of its net starts a
    CLIMS run."""
    params = load_params(folder / "params.yaml")
    if params.dataset.name != "synthetic" or not params.dataset.plain_bodies:
        raise SystemExit(f"{folder / 'params.yaml'}: cam_regions needs the synthetic parts world (dataset.plain_bodies)")
    kind = "clims" if (folder / layout.cams_dir("clims")).is_dir() else "baseline"
    threshold = json.loads((folder / layout.METRICS_DIR / f"cam_{kind}.json").read_text())["best_threshold"]
    net = None
    if kind == "baseline" and start_biases:  # the CLIMS start's head without its bias, which is added per b below
        baseline = load_cam_net(folder / layout.net_dir("baseline"))[0]
        net = clims_net_from(baseline, params.backbone, None, head_scale).eval()
    spec = world_spec(params.dataset)
    records = read_manifest(folder / layout.manifest_path(layout.TRAIN_EVAL))[:images]
    figures = {name: defaultdict(list) for name in REGIONS}
    for n, record in enumerate(records):
        split, index = record.image_id.rsplit("_", 1)
        scene = render_scene(spec, scene_rng(params.dataset.seed, split, int(index)))
        if n == 0 and not np.array_equal(scene.label, read_label(record.label_path)):
            raise SystemExit(f"{record.label_path}: the world rendered from {folder / 'params.yaml'} does not match its data")
        cam = load_cam(cam_path(folder / layout.cams_dir(kind), record.image_id))
        if net is not None:
            with torch.no_grad():
                logits = net(load_image(record.image_path)[None])
            logits = F.interpolate(logits, size=scene.label.shape, mode="bilinear", align_corners=False)[0]
        for j, class_id in enumerate(cam["class_ids"].tolist()):
            high = cam["high_res"][j].astype(np.float32)
            maps = {"above_best": high > threshold, f"above_{PEAK}": high > PEAK, "cam_mean": high, "p_mean": cam["mask"][j]}
            if net is not None:
                maps |= {f"start_p_bias{b:g}": torch.sigmoid(logits[class_id - 1] + b).numpy() for b in start_biases}
            for name, where in regions(scene, spec, class_id).items():
                if where.any():
                    for key, values in maps.items():
                        figures[name][key].append(float(values[where].astype(np.float32).mean()))
    return {"best_threshold": threshold, "pairs": {name: len(figures[name]["cam_mean"]) for name in REGIONS},
            "regions": {name: {key: float(np.mean(v)) for key, v in figures[name].items()} for name in REGIONS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder benchmarks/ablation.py kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["baseline", "otm", "otm_btm", "otm_btm_cbs", "full"])
    parser.add_argument("--images", type=int, help="the first N training images only")
    parser.add_argument("--start-biases", type=float, nargs="*", default=[],
                        help="baseline runs: also P = sigmoid(s x logits + b) of the net for each b (train_clims.init_bias)")
    parser.add_argument("--start-head-scale", type=float, default=1.0,
                        help="with --start-biases: the baseline's head weights times this (train_clims.init_head_scale)")
    parser.add_argument("--out", type=results_name, default="cam_regions", help="results name: benchmarks/results/<out>.json")
    args = parser.parse_args()
    missing = [f"seed{s}-{v}" for s in args.seeds for v in args.variants if not (args.runs / f"seed{s}-{v}").is_dir()]
    if missing:
        raise SystemExit(f"{args.runs}: no run folder {', '.join(missing)}")
    runs = {f"seed{s}/{v}": run_regions(args.runs / f"seed{s}-{v}", args.images, args.start_biases, args.start_head_scale)
            for s in args.seeds for v in args.variants}
    print(f"share of each region above the run's best threshold (above {PEAK}); P's mean; mean over seeds {args.seeds}")
    print(f"{'variant':12}" + "".join(f"{name:>22}" for name in REGIONS))
    for v in args.variants:
        cells = []
        for name in REGIONS:
            per_seed = [runs[f"seed{s}/{v}"]["regions"][name] for s in args.seeds]
            best, peak, p = (np.mean([r[key] for r in per_seed]) for key in ("above_best", f"above_{PEAK}", "p_mean"))
            cells.append(f"{best:.2f} ({peak:.2f}) P {p:.2f}")
        print(f"{v:12}" + "".join(f"{c:>22}" for c in cells))
    for b in args.start_biases if "baseline" in args.variants else []:
        key = f"start_p_bias{b:g}"
        means = [np.mean([runs[f"seed{s}/baseline"]["regions"][name][key] for s in args.seeds]) for name in REGIONS]
        print(f"{'start ' + format(b, 'g'):12}" + "".join(f"{'P ' + format(m, '.2f'):>22}" for m in means))
    out = write_results(args.out, {"runs_folder": str(args.runs.resolve()), "images": args.images,
                                   "start_head_scale": args.start_head_scale, "runs": runs}, quiet=True)
    print(out.relative_to(REPO))


if __name__ == "__main__":
    main()
