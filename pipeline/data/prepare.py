"""The prepare_data stage's work: the manifests (pipeline.layout: train, train_eval, val) and a
preview, either by rendering the synthetic world's splits to files (images, masks, background
maps) or by reading a real dataset's split lists (pipeline.data.real)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.manifest import ImageRecord, write_manifest
from pipeline.data.real import read_splits
from pipeline.data.synthetic import Scene, WorldSpec, render_scene, scene_rng
from pipeline.io import colorize, read_label, save_label_png
from pipeline.layout import TRAIN, TRAIN_EVAL, VAL, manifest_path
from pipeline.params import Dataset, SyntheticDataset

SPLITS = (TRAIN, VAL)


def world_spec(dataset: SyntheticDataset, cooccurrence: float | None = None, clutter: float | None = None) -> WorldSpec:
    return WorldSpec(
        image_size=dataset.image_size,
        classes=tuple(dataset.class_names),
        contexts=tuple(c.context for c in dataset.classes),
        backgrounds=tuple(dataset.backgrounds),
        min_objects=dataset.min_objects,
        max_objects=dataset.max_objects,
        cooccurrence=dataset.cooccurrence if cooccurrence is None else cooccurrence,
        distractor=dataset.distractor,
        plain_bodies=dataset.plain_bodies,
        clutter=dataset.clutter if clutter is None else clutter,
        object_scale=dataset.object_scale,
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


def preview_grid(tiles: list[np.ndarray], per_row: int = 4, scale: int = 1) -> np.ndarray:
    """Same-sized RGB tiles, `per_row` to a row, each pixel repeated `scale` times."""
    tiles = tiles + [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i : i + per_row], 1) for i in range(0, len(tiles), per_row)]
    grid = np.concatenate(rows, 0)
    return grid.repeat(scale, 0).repeat(scale, 1)


def scene_tile(scene: Scene) -> np.ndarray:
    """image | class mask | background kinds."""
    return np.concatenate([scene.image, colorize(scene.label), colorize(scene.background + 1)], 1)


def record_tile(record: ImageRecord, size: int = 128) -> np.ndarray:
    """image | class mask, each letterboxed into size x size."""
    from PIL import ImageOps

    image = ImageOps.pad(Image.open(record.image_path).convert("RGB"), (size, size))
    mask = ImageOps.pad(Image.fromarray(colorize(read_label(record.label_path))), (size, size), method=Image.NEAREST)
    return np.concatenate([np.asarray(image), np.asarray(mask)], 1)


def prepare_splits(dataset: Dataset, out: Path, final: Path) -> dict[str, float]:
    """Write the manifests and preview.png into `out` (a folder that will be moved to `final`);
    returns the data metrics."""
    if dataset.name == "synthetic":
        return render_splits(dataset, out, final)
    records, metrics = read_splits(dataset)  # every check first: nothing is written for a bad tree
    for role, listed in records.items():
        write_manifest(manifest_path(role, out), listed, base=final)
    shown = records[TRAIN][: dataset.preview_count]
    Image.fromarray(preview_grid([record_tile(r) for r in shown], per_row=2)).save(out / "preview.png")
    return metrics


def render_splits(dataset: SyntheticDataset, out: Path, final: Path) -> dict[str, float]:
    """Render every split into `out` (a folder that will be moved to `final`); returns data metrics."""
    spec = world_spec(dataset)
    for kind in ("images", "masks", "backgrounds"):
        (out / kind).mkdir(parents=True)
    metrics: dict[str, float] = {}
    counts = {TRAIN: dataset.num_train, VAL: dataset.num_val}
    preview: list[Scene] = []
    for split in SPLITS:
        records, object_fraction, with_context = [], [], []
        for index in tqdm(range(counts[split]), desc=f"render {split}", unit="img", mininterval=2):
            scene = render_scene(spec, scene_rng(dataset.seed, split, index))
            records.append(_save_scene(scene, f"{split}_{index:05d}", out, final))
            object_fraction.append(float((scene.label > 0).mean()))
            with_context += scene.instance_has_context
            if split == TRAIN and len(preview) < dataset.preview_count:
                preview.append(scene)
        write_manifest(manifest_path(split, out), records, base=final)
        if split == TRAIN:  # every training image is scored
            write_manifest(manifest_path(TRAIN_EVAL, out), records, base=final)
        metrics[f"{split}_images"] = len(records)
        metrics[f"{split}_object_pixel_fraction"] = float(np.mean(object_fraction))
        metrics[f"{split}_objects_per_image"] = float(np.mean([len(r.class_ids) for r in records]))
        metrics[f"{split}_context_rate"] = float(np.mean(with_context))
    metrics[f"{TRAIN_EVAL}_images"] = metrics[f"{TRAIN}_images"]
    Image.fromarray(preview_grid([scene_tile(s) for s in preview], scale=2)).save(out / "preview.png")
    return metrics
