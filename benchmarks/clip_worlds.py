"""The tiny CLIP's probes on the world it was trained on and on the data's world.

    python benchmarks/clip_worlds.py SOURCE [SOURCE ...] [--out clip_worlds]

prepare_clip probes the tiny CLIP on renders of its own world (`clip.train.cooccurrence`, its
clutter), which is what its figures in metrics/clip.json say. The CAMs face the data's world
(`dataset.cooccurrence`): a CLIP never shown an object on its context has few such pairs in its
own renders to be probed on (9 of 328 objects with the default settings), and `clims_loss.tau:
auto` is set from two of these figures (pipeline/cam/tau.py). This probes each
SOURCE's CLIP (a folder where prepare_clip ran: its params.yaml and artifacts/clip) on both
worlds, the same scenes count and seed, and writes benchmarks/results/<out>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import REPO, results_name, write_results

sys.path.insert(0, str(REPO))
from pipeline.clip import model as clip_model  # noqa: E402
from pipeline.clip.prepare import clip_world, probe_world  # noqa: E402
from pipeline.data.prepare import world_spec  # noqa: E402
from pipeline.params import load_params  # noqa: E402

FIGURES = ("context_margin", "hole_margin", "part_margin", "body_margin", "cos_object_crop_mean", "cos_object_masked_mean",
           "cos_hole_p95", "cos_part_alone_mean", "cos_without_part_mean", "cos_context_together_mean",
           "cos_context_alone_mean", "eval_context_pairs")


def probe(source: Path) -> dict:
    params = load_params(source / "params.yaml")
    if params.clip.source != "tiny" or params.dataset.name != "synthetic":
        raise SystemExit(f"{source / 'params.yaml'}: not a tiny CLIP on the synthetic world")
    clip, _ = clip_model.load_clip(source / "artifacts" / "clip")
    dataset, train = params.dataset, params.clip.train
    figures = {}
    for world, spec in (("own", clip_world(dataset, train)), ("data", world_spec(dataset))):
        report = probe_world(clip, spec, dataset.prompt_template, train.eval_scenes, train.seed)  # as prepare_clip does
        figures[world] = {key: report[key] for key in FIGURES if key in report}
    return {"clip_train": params.clip.train.model_dump(mode="json"), "dataset_cooccurrence": dataset.cooccurrence, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help="folders where prepare_clip ran")
    parser.add_argument("--out", type=results_name, default="clip_worlds", help="results name: benchmarks/results/<out>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {str(source.absolute()): probe(source) for source in args.sources}
    write_results(args.out, results, quiet=True)
    print(f"| figure | {' | '.join(f'{Path(s).name}: own world / data world' for s in results)} |")
    print(f"|---|{'---|' * len(results)}")
    for key in FIGURES:
        cells = [" / ".join("-" if key not in r[world] else f"{r[world][key]}" if key == "eval_context_pairs"
                            else f"{r[world][key]:.3f}" for world in ("own", "data")) for r in results.values()]
        print(f"| {key} | {' | '.join(cells)} |")
    print(f"\nbenchmarks/results/{args.out}.json")


if __name__ == "__main__":
    main()
