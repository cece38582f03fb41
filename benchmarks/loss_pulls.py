"""What each CLIMS term asks of a mask on a given CLIP, before any net is trained.

    python benchmarks/loss_pulls.py [--source DIR] [--scenes 300] [--out loss_pulls] [-S key=value ...]

DIR is a folder where `prepare_clip` ran on the synthetic world (default: this repository); its
CLIP, params and metrics/clip.json (for tau) are read; `-S` changes those params first (e.g.
`-S clims_loss.weights.cbs=2`: the same landscape under another weight). On held-out renders,
for every scene and class whose context shows (>= 8 pixels), six masks P of that class are
scored by the CLIMS loss exactly as training scores a pair (pipeline.cam.losses, the params'
weights, score and tau):

- exact: the class's objects, pixel for pixel (the mask every term should prefer);
- context: the exact mask grown over the class's context background (the failure L_CBS exists for);
- half: each object of the class cut to its left half (a CAM on a discriminative part: the
  failure L_BTM exists for);
- part: each object's distinctive part alone (the parts world: where a classifier's CAM stops;
  on a world without parts this mask is empty);
- box: each object's bounding box (the object and a little context around it, its outline hidden:
  tells whether the background view gives the class away by the context or by the hole's shape);
- all: every pixel, the background view blank (a CLIP that scores a blank view below a clean
  background gives L_BTM a reason to grow P over everything; L_OTM objects where the whole scene
  in the object view scores lower than the object alone, L_CBS and L_REG always).

For each ablation variant (otm, otm_btm, otm_btm_cbs, full) it prints the mean loss per pair at
each mask and the share of pairs for which the exact mask costs less than every other; then, per
class, the background view's score and each term's pull into the context (the mean over classes
hides a class whose context gives it away). A variant whose loss is lower with the context than
without pulls P into the context; L_BTM earns its place only where it makes the half (or part)
mask dearer than the exact one by more than it makes the exact mask dearer than the context one;
the per-class table also gives what L_OTM and L_BTM charge the part mask over the exact one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import REPO, apply_overrides, results_name, write_results

sys.path.insert(0, str(REPO))
from pipeline import layout  # noqa: E402
from pipeline.cam.losses import btm_terms, cbs_terms_thresholded, otm_terms  # noqa: E402
from pipeline.cam.tau import resolve_tau  # noqa: E402
from pipeline.cam.train import clims_loss_from  # noqa: E402
from pipeline.clip.model import load_clip  # noqa: E402
from pipeline.clip.views import ScenePool, render_pool  # noqa: E402
from pipeline.data.prepare import world_spec  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.params import load_params, validate  # noqa: E402

MASKS = ("exact", "context", "half", "box", "part", "all")
VARIANTS = {"otm": ("otm",), "otm_btm": ("otm", "btm"), "otm_btm_cbs": ("otm", "btm", "cbs"), "full": ("otm", "btm", "cbs", "reg")}
MIN_CONTEXT = 8


def left_halves(instances: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """The exact mask with every object cut to the columns left of its own centre."""
    half = torch.zeros_like(exact)
    columns = torch.arange(exact.shape[-1])
    for j in torch.unique(instances[exact]).tolist():
        obj = exact & (instances == j)
        centre = columns[obj.any(0)].float().mean()
        half |= obj & (columns < centre)[None, :]
    return half


def boxes(instances: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """The union of the bounding boxes of the objects of the exact mask."""
    box = torch.zeros_like(exact)
    for j in torch.unique(instances[exact]).tolist():
        rows, cols = torch.nonzero(exact & (instances == j), as_tuple=True)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    return box


def probe_masks(pool: ScenePool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene index, class id and the masks (P, len(MASKS), H, W) of every (scene, class) pair
    whose context shows."""
    scenes, classes, masks = [], [], []
    for i in range(len(pool)):
        label, inst, ground = pool.labels[i], pool.instances[i], pool.backgrounds[i]
        for c in sorted(set(pool.instance_classes[i])):
            exact = label == c
            context = (ground == pool.contexts[c - 1]) & (label == 0)
            if exact.sum() < 4 or context.sum() < MIN_CONTEXT:
                continue
            scenes.append(i)
            classes.append(c)
            masks.append(torch.stack([exact, exact | context, left_halves(inst, exact), boxes(inst, exact), exact & pool.parts[i],
                                      torch.ones_like(exact)]))
    return torch.tensor(scenes), torch.tensor(classes), torch.stack(masks).float()


def pair_terms(loss_fn, images: torch.Tensor, class_ids: torch.Tensor, masks: torch.Tensor, num_classes: int) -> dict:
    """Each CLIMS term per pair (image n with P of class class_ids[n] = masks[n], no other class),
    as ClimsLoss computes it for a batch (the improved variant's CBS, each pair's share of L_REG
    as if its image held this class alone)."""
    labels = torch.zeros(len(class_ids), num_classes)
    labels[torch.arange(len(class_ids)), class_ids - 1] = 1
    planes = torch.zeros(len(class_ids), num_classes, *masks.shape[-2:])
    planes[torch.arange(len(class_ids)), class_ids - 1] = masks
    with torch.no_grad():
        _, cos_fg, cos_bg, cos_fg_backgrounds = loss_fn.similarities(images, planes, labels)
    s_fg, s_bg, s_fg_backgrounds = loss_fn.scores(cos_fg), loss_fn.scores(cos_bg), loss_fn.scores(cos_fg_backgrounds)
    return {
        "s_fg": s_fg, "s_bg": s_bg, "otm": otm_terms(s_fg), "btm": btm_terms(s_bg),
        "cbs": cbs_terms_thresholded(s_fg_backgrounds, loss_fn.tau, firing=cos_fg_backgrounds > loss_fn.tau).sum(1),
        "reg": masks.mean((1, 2)) / num_classes,
    }


def by_class(per_mask: dict, classes: torch.Tensor, weights, names: list[str]) -> dict:
    """Per class: what its background view gives away and what each term asks of its masks."""
    total = {m: sum(getattr(weights, t) * per_mask[m][t] for t in VARIANTS["full"]) for m in ("exact", "context")}
    rows = {}
    for c, name in enumerate(names, start=1):
        k = classes == c
        if not k.any():
            continue
        mean = lambda x: float(x[k].mean())  # noqa: E731
        rows[name] = {
            "pairs": int(k.sum()),
            "s_bg_exact": mean(per_mask["exact"]["s_bg"]), "s_bg_box": mean(per_mask["box"]["s_bg"]),
            "btm_pull": weights.btm * mean(per_mask["exact"]["btm"] - per_mask["context"]["btm"]),
            "otm_pull": weights.otm * mean(per_mask["exact"]["otm"] - per_mask["context"]["otm"]),
            "cbs_on_context": weights.cbs * mean(per_mask["context"]["cbs"]),
            "otm_part": weights.otm * mean(per_mask["part"]["otm"] - per_mask["exact"]["otm"]),
            "btm_part": weights.btm * mean(per_mask["part"]["btm"] - per_mask["exact"]["btm"]),
            "exact": mean(total["exact"]), "context": mean(total["context"]),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO, help="a folder where prepare_clip ran")
    parser.add_argument("--scenes", type=int, default=300, help="held-out renders (prepare_clip's eval pool)")
    parser.add_argument("--out", type=results_name, default="loss_pulls", help="results name: benchmarks/results/<out>.json")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value (YAML value) applied to the params")
    args = parser.parse_args()
    source = args.source.resolve()
    params = load_params(source / "params.yaml")
    if args.overrides:
        params = validate(apply_overrides(params.model_dump(), args.overrides), f"{source / 'params.yaml'} with -S")
    if params.dataset.name != "synthetic" or params.clip.source != "tiny":
        raise SystemExit(f"{source / 'params.yaml'}: loss_pulls needs the synthetic world and its tiny CLIP")
    clip, texts = load_clip(source / layout.CLIP_DIR)
    tau, _ = resolve_tau(params.clims_loss, source / layout.METRICS_DIR / "clip.json")
    loss_fn = clims_loss_from(params, clip, texts, tau)
    weights = params.clims_loss.weights

    spec = world_spec(params.dataset, params.clip.train.cooccurrence)
    pool = render_pool(spec, args.scenes, params.clip.train.seed, "clip-eval")
    scenes, classes, masks = probe_masks(pool)
    images = pool.images[scenes].float() / 255.0
    per_mask = {name: pair_terms(loss_fn, images, classes, masks[:, m], len(spec.classes)) for m, name in enumerate(MASKS)}

    report = {"source": str(source), "overrides": args.overrides, "tau": tau, "pairs": len(classes), "weights": weights.model_dump(), "scores": {}, "variants": {}}
    for name, terms in per_mask.items():
        report["scores"][name] = {key: float(terms[key].mean()) for key in ("s_fg", "s_bg", "otm", "btm", "cbs", "reg")}
    print(f"{len(classes)} (scene, class) pairs of {args.scenes} held-out renders; tau {tau:.3f}")
    print(f"{'mask':8} {'s(fg)':>6} {'s(bg)':>6} {'L_OTM':>6} {'L_BTM':>6} {'L_CBS':>6}")
    for name, row in report["scores"].items():
        print(f"{name:8} {row['s_fg']:6.3f} {row['s_bg']:6.3f} {row['otm']:6.3f} {row['btm']:6.3f} {row['cbs']:6.3f}")
    print(f"\n{'variant':12}" + "".join(f"{m:>9}" for m in MASKS) + "  exact cheapest")
    for variant, terms in VARIANTS.items():
        totals = torch.stack([sum(getattr(weights, t) * per_mask[m][t] for t in terms) for m in MASKS])  # (masks, pairs)
        cheapest = float((totals.argmin(0) == 0).float().mean())
        report["variants"][variant] = {**{m: float(totals[i].mean()) for i, m in enumerate(MASKS)}, "exact_cheapest": cheapest}
        print(f"{variant:12}" + "".join(f"{float(t.mean()):9.3f}" for t in totals) + f"  {cheapest:6.1%}")
    report["by_class"] = by_class(per_mask, classes, weights, [c.name for c in params.dataset.classes])
    print("\nby class (all four terms; a pull is the loss the exact mask pays over the context-grown one;\n"
          "a part charge is what the part mask pays over the exact one)")
    print(f"{'class':7} {'pairs':>5} {'s(bg) exact':>11} {'s(bg) box':>9} {'L_BTM pull':>10} {'L_OTM pull':>10} "
          f"{'L_CBS on ctx':>12} {'exact':>6} {'context':>7} {'L_OTM part':>10} {'L_BTM part':>10}")
    for name, row in report["by_class"].items():
        print(f"{name:7} {row['pairs']:5d} {row['s_bg_exact']:11.3f} {row['s_bg_box']:9.3f} {row['btm_pull']:10.2f} "
              f"{row['otm_pull']:10.2f} {row['cbs_on_context']:12.2f} {row['exact']:6.2f} {row['context']:7.2f} "
              f"{row['otm_part']:10.2f} {row['btm_part']:10.2f}")
    out = write_results(args.out, report, quiet=True)
    print(f"\n{out.relative_to(REPO)}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a folder without a CLIP or params: one line, not a traceback
        raise SystemExit(f"error: {exc}")
