"""Readers of the standard real-data layouts into manifest records (pipeline.data.manifest).

PASCAL VOC 2012: <root> = VOCdevkit/VOC2012 with JPEGImages/<id>.jpg, the split lists
ImageSets/Segmentation/<split>.txt (train_aug.txt comes with SegmentationClassAug), and the
class masks SegmentationClass/<id>.png (train, val) or SegmentationClassAug/<id>.png (train_aug):
palette PNGs, 0 background, 1..20 the classes, 255 object borders (ignored).
COCO 2014: <root>/images/<split>/<id>.jpg and VOC-style masks <root>/masks/<split>/<id>.png
(0 background, 1..80 the classes, 255 ignored), one per image.

Image-level labels come from the masks. Images may be grayscale or CMYK JPEGs: the records keep
their paths, and every reader of images converts to RGB. A mask whose size differs from its
image's is reported by name rather than silently resized.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.manifest import ImageRecord
from pipeline.errors import UserError
from pipeline.io import bad_image_id
from pipeline.layout import TRAIN, TRAIN_EVAL, VAL, repo_root
from pipeline.metrics import IGNORE

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_MASKS = {"train_aug": "SegmentationClassAug"}  # other splits: SegmentationClass


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def mask_record(image_id: str, image: Path, mask: Path, num_classes: int) -> ImageRecord:
    """A record whose classes are the mask's labels; its sizes checked against the image's."""
    if not image.is_file():
        raise UserError(f"{image}: image missing (listed for {mask})")
    if not mask.is_file():
        raise UserError(f"{mask}: mask missing for {image}")
    height, width = image_size(image)
    try:
        with Image.open(mask) as m:
            labels = np.asarray(m)
    except (OSError, ValueError) as exc:
        raise UserError(f"{mask}: unreadable mask ({exc})") from None
    if labels.ndim != 2:
        raise UserError(f"{mask}: expected a one-channel (palette or grayscale) mask, got shape {labels.shape}")
    if labels.shape != (height, width):
        raise UserError(f"{mask}: mask is {labels.shape[1]}x{labels.shape[0]} but {image} is {width}x{height}")
    present = [int(c) for c in np.unique(labels) if c not in (0, IGNORE)]
    unknown = [c for c in present if c > num_classes]
    if unknown:
        raise UserError(f"{mask}: labels {unknown} beyond the {num_classes} classes")
    return ImageRecord(image_id, image, mask, tuple(present), height, width)


def voc_records(root: str | Path, split: str, num_classes: int = len(VOC_CLASSES), limit: int | None = None) -> list[ImageRecord]:
    """Records of a VOC 2012 segmentation split (train, train_aug, val, ...); `limit`: its first ones only."""
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise UserError(f"{root}: not a VOC 2012 root (no JPEGImages/; expected VOCdevkit/VOC2012)")
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise UserError(f"{listing}: split list missing")
    masks = root / VOC_MASKS.get(split, "SegmentationClass")
    if not masks.is_dir():
        raise UserError(f"{masks}: mask folder missing (split {split} reads its masks there)")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{listing}: lists no images")
    bad = [i for i in ids if bad_image_id(i)]
    if bad:
        raise UserError(f"{listing}: image id {bad[0]!r} is not a plain file name")
    return _read_all(lambda i: mask_record(i, root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png", num_classes), ids[:limit])


def coco_records(root: str | Path, split: str, num_classes: int = 80, limit: int | None = None) -> list[ImageRecord]:
    """Records of a COCO 2014 split (train2014, val2014) with VOC-style masks; `limit`: its first ones only."""
    root = Path(root)
    masks = root / "masks" / split
    if not masks.is_dir():
        raise UserError(f"{masks}: mask folder missing (COCO needs VOC-style masks in masks/<split>/)")
    images, found = root / "images" / split, sorted(masks.glob("*.png"))
    if not found:
        raise UserError(f"{masks}: no masks (<image id>.png) in the folder")
    return _read_all(lambda m: mask_record(m.stem, images / f"{m.stem}.jpg", m, num_classes), found[:limit])


def _read_all(read, items: list) -> list[ImageRecord]:
    """`read` over `items` on a few threads (image headers and PNG decoding release the GIL);
    the records keep the items' order, and the first failure is raised as it is."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(read, items))


READERS = {"voc12": voc_records, "coco14": coco_records}


def dataset_root(dataset) -> Path:
    """dataset.root, relative paths taken from the repository root."""
    return repo_root() / Path(dataset.root).expanduser()


def split_records(dataset, split: str, limit: int | None = None) -> list[ImageRecord]:
    """The records of one split of a real dataset (params' RealDataset); `limit`: its first ones only."""
    return READERS[dataset.name](dataset_root(dataset), split, len(dataset.classes), limit)


def read_splits(dataset) -> tuple[dict[str, list[ImageRecord]], dict[str, float]]:
    """The three manifests' records (layout.TRAIN, TRAIN_EVAL, VAL) of a real dataset and their
    figures; the evaluated images must be training images (their CAMs are made with the rest)."""
    splits = {TRAIN: dataset.train_split, TRAIN_EVAL: dataset.eval_split, VAL: dataset.val_split}
    read = {split: split_records(dataset, split) for split in dict.fromkeys(splits.values())}  # each split once
    records = {role: read[split] for role, split in splits.items()}
    training = {r.image_id for r in records[TRAIN]}
    outside = [r.image_id for r in records[TRAIN_EVAL] if r.image_id not in training]
    if outside:
        raise UserError(f"dataset.eval_split: {len(outside)} images of {dataset.eval_split} are not in "
                        f"{dataset.train_split} (first: {outside[0]}); CAMs and pseudo labels are made for training images")
    metrics = {}
    for role, listed in records.items():
        metrics[f"{role}_images"] = len(listed)
        metrics[f"{role}_objects_per_image"] = float(np.mean([len(r.class_ids) for r in listed]))
    return records, metrics
