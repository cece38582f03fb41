"""Render the synthetic world's splits to files: images, masks, background maps, manifests, preview."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.manifest import ImageRecord, write_manifest
from pipeline.data.synthetic import Scene, WorldSpec, render_scene, scene_rng
from pipeline.io import colorize, save_label_png
from pipeline.layout import manifest_path
from pipeline.params import SyntheticDataset

SPLITS = ("train", "val")


def world_spec(dataset: SyntheticDataset, cooccurrence: float | None = None) -> WorldSpec:
    return WorldSpec(
        image_size=dataset.image_size,
        classes=tuple(dataset.class_names),
        contexts=tuple(c.context for c in dataset.classes),
        backgrounds=tuple(dataset.backgrounds),
        min_objects=dataset.min_objects,
        max_objects=dataset.max_objects,
        cooccurrence=dataset.cooccurrence if cooccurrence is None else cooccurrence,
        distractor=dataset.distractor,
    )


def _save_scene(scene: Scene, image_id: str, out: Path, final: Path) -> ImageRecord:
    paths = {kind: out / kind / f"{image_id}.png" for kind in ("images", "masks", "backgrounds")}
    Image.fromarray(scene.image).save(paths["images"])
    save_label_png(paths["masks"], scene.label)
    Image.fromarray(scene.background).save(paths["backgrounds"])
    # Record the paths the files will have once the folder is swapped into place.
    at_final = {kind: final / p.relative_to(out) for kind, p in paths.items()}
    return ImageRecord(
        image_id=image_id,
        image_path=at_final["images"],
        label_path=at_final["masks"],
        class_ids=tuple(scene.class_ids),
        height=scene.image.shape[0],
        width=scene.image.shape[1],
        background_path=at_final["backgrounds"],
    )


def preview_grid(scenes: list[Scene], per_row: int = 4, scale: int = 2) -> np.ndarray:
    """Each scene as image | class mask | background kinds, `per_row` scenes to a row."""
    tiles = [np.concatenate([s.image, colorize(s.label), colorize(s.background + 1)], 1) for s in scenes]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i : i + per_row], 1) for i in range(0, len(tiles), per_row)]
    grid = np.concatenate(rows, 0)
    return grid.repeat(scale, 0).repeat(scale, 1)


def render_splits(dataset: SyntheticDataset, out: Path, final: Path) -> dict[str, float]:
    """Render every split into `out` (a folder that will be moved to `final`); returns data metrics."""
    spec = world_spec(dataset)
    for kind in ("images", "masks", "backgrounds"):
        (out / kind).mkdir(parents=True)
    metrics: dict[str, float] = {}
    counts = {"train": dataset.num_train, "val": dataset.num_val}
    preview: list[Scene] = []
    for split in SPLITS:
        records, object_fraction, with_context = [], [], []
        for index in tqdm(range(counts[split]), desc=f"render {split}", unit="img", mininterval=2):
            scene = render_scene(spec, scene_rng(dataset.seed, split, index))
            records.append(_save_scene(scene, f"{split}_{index:05d}", out, final))
            object_fraction.append(float((scene.label > 0).mean()))
            with_context += scene.instance_has_context
            if split == "train" and len(preview) < dataset.preview_count:
                preview.append(scene)
        write_manifest(manifest_path(split, out), records, base=final)
        metrics[f"{split}_images"] = len(records)
        metrics[f"{split}_object_pixel_fraction"] = float(np.mean(object_fraction))
        metrics[f"{split}_objects_per_image"] = float(np.mean([len(r.class_ids) for r in records]))
        metrics[f"{split}_context_rate"] = float(np.mean(with_context))
    Image.fromarray(preview_grid(preview)).save(out / "preview.png")
    return metrics
