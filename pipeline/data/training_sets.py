"""The training sets: a manifest's images with their image-level labels (CAM nets), or with one
label map per image (IRN from IR labels, segmentation from pseudo labels), augmented as the
reference does (pipeline.data.images.augment)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data.images import augment, load_image
from pipeline.data.manifest import ImageRecord
from pipeline.io import label_png_path, read_label


def multi_hot(class_ids, num_classes: int) -> torch.Tensor:
    """Class ids 1..C -> a float vector of C zeros and ones."""
    target = torch.zeros(num_classes)
    target[[c - 1 for c in class_ids]] = 1
    return target


class CamTrainSet(torch.utils.data.Dataset):
    """(augmented image in [0, 1], multi-hot labels) per manifest row."""

    def __init__(self, records: list[ImageRecord], num_classes: int, crop_size: int, long_side: tuple[int, int],
                 fill: str = "black"):
        self.records = [r for r in records if r.class_ids]  # images without a class teach nothing
        self.num_classes, self.crop_size, self.long_side, self.fill = num_classes, crop_size, long_side, fill

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = augment(load_image(record.image_path), self.crop_size, self.long_side, fill=self.fill)
        return image, multi_hot(record.class_ids, self.num_classes)


class LabelMapTrainSet(torch.utils.data.Dataset):
    """(augmented image in [0, 1], its label map, IGNORE outside the image) per manifest row;
    the label maps are one PNG per image in `label_folder` (IR labels, pseudo labels)."""

    def __init__(self, records: list[ImageRecord], label_folder: str | Path, crop_size: int, long_side: tuple[int, int],
                 scale_range: tuple[float, float] | None = None, fill: str = "black"):
        self.records, self.label_folder = records, label_folder
        self.crop_size, self.long_side, self.scale_range, self.fill = crop_size, long_side, scale_range, fill

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        label = torch.from_numpy(read_label(label_png_path(self.label_folder, record.image_id)).astype("int64"))
        return augment(load_image(record.image_path), self.crop_size, self.long_side, label, self.scale_range, self.fill)
