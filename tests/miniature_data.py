"""Miniature VOC 2012 and COCO 2014 trees in the standard layouts, for the readers' tests and the
plumbing run of the whole pipeline."""
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ["RGB", "RGB", "L", "CMYK"]  # grayscale and CMYK JPEGs among them, as in VOC and COCO


def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), as its PNG masks carry it."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r, g, b = r | ((c >> 0) & 1) << shift, g | ((c >> 1) & 1) << shift, b | ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def scene(image_path, mask_path, classes, size=(40, 48), mask_size=None, mode="RGB"):
    """An image and its palette mask: one block per class, each with a 255 border."""
    height, width = size
    rng = np.random.default_rng(len(classes) + width)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(image_path, "JPEG")
    label = np.zeros(mask_size or size, np.uint8)
    for i, c in enumerate(classes):
        top, left = 4 + 10 * i, 4 + 8 * i
        label[top - 1 : top + 9, left - 1 : left + 9] = 255
        label[top : top + 8, left : left + 8] = c
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(voc_palette())
    mask.save(mask_path)


def voc_tree(base: Path) -> tuple[Path, dict[str, list[int]]]:
    """base/VOCdevkit/VOC2012 with 12 images in train_aug (SegmentationClassAug), the first 4 of
    them in train and the next 2 in val (SegmentationClass); returns the root and each image's
    classes."""
    root = base / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    classes = {f"2007_{i:06d}": [1 + (i * 7) % 20, 1 + (i * 3) % 20][: 1 + i % 2] for i in range(12)}
    for i, (image_id, ids) in enumerate(classes.items()):
        scene(root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClassAug" / f"{image_id}.png", ids,
              mode=MODES[i % len(MODES)])
        if i < 6:  # the official masks cover the train/val part
            scene(root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png", ids,
                  mode=MODES[i % len(MODES)])
    ids = list(classes)
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[4:6]) + "\n")
    return root, classes
