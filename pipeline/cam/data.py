"""Images and image-level labels for CAM training, with the reference's augmentation:
random long-side rescale, horizontal flip, random crop (zero padding where the image is smaller);
the same augmentation carries a label map along (IRN training).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.data.manifest import ImageRecord
from pipeline.errors import UserError
from pipeline.io import label_png_path, read_label
from pipeline.metrics import IGNORE


def load_image(path) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def multi_hot(class_ids, num_classes: int) -> torch.Tensor:
    """Class ids 1..C -> a float vector of C zeros and ones."""
    target = torch.zeros(num_classes)
    target[[c - 1 for c in class_ids]] = 1
    return target


class CamTrainSet(torch.utils.data.Dataset):
    """(augmented image in [0, 1], multi-hot labels) per manifest row."""

    def __init__(self, records: list[ImageRecord], num_classes: int, crop_size: int, long_side: tuple[int, int]):
        self.records = [r for r in records if r.class_ids]  # images without a class teach nothing
        self.num_classes, self.crop_size, self.long_side = num_classes, crop_size, long_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = augment(load_image(record.image_path), self.crop_size, self.long_side)
        return image, multi_hot(record.class_ids, self.num_classes)


class LabelMapTrainSet(torch.utils.data.Dataset):
    """(augmented image in [0, 1], its label map, IGNORE outside the image) per manifest row;
    the label maps are one PNG per image in `label_folder` (IR labels, pseudo labels)."""

    def __init__(self, records: list[ImageRecord], label_folder: str | Path, crop_size: int, long_side: tuple[int, int]):
        self.records, self.label_folder = records, label_folder
        self.crop_size, self.long_side = crop_size, long_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        label = torch.from_numpy(read_label(label_png_path(self.label_folder, record.image_id)).astype("int64"))
        return augment(load_image(record.image_path), self.crop_size, self.long_side, label)


def augment(image: torch.Tensor, crop_size: int, long_side: tuple[int, int], label: torch.Tensor | None = None):
    """Random long-side rescale, flip and crop of an image (3, H, W); a label map (H, W), when
    given, gets the same (nearest rescale, 255 outside the image) and (image, label) is returned."""
    height, width = image.shape[-2:]
    target = int(torch.randint(long_side[0], long_side[1] + 1, ()).item())
    scale = target / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        image = torch.cat([image, F.interpolate(label[None, None].float(), size=size, mode="nearest")[0]])
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    if label is None:
        return random_crop(image, crop_size)
    cropped = random_crop(image, crop_size, fill=(0.0, 0.0, 0.0, float(IGNORE)))
    return cropped[:3], cropped[3].long()


def random_crop(image: torch.Tensor, size: int, fill: tuple[float, ...] | None = None) -> torch.Tensor:
    """A size x size window at a random place; outside the image each channel is `fill` (default
    zero: black)."""
    channels, height, width = image.shape
    out = image.new_zeros(channels, size, size)
    if fill is not None:
        out += torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1)
    top = int(torch.randint(0, abs(height - size) + 1, ()).item())
    left = int(torch.randint(0, abs(width - size) + 1, ()).item())
    # Where the image is larger, the window moves over it; where smaller, the image moves in the window.
    src_y, dst_y = (top, 0) if height > size else (0, top)
    src_x, dst_x = (left, 0) if width > size else (0, left)
    h, w = min(size, height), min(size, width)
    out[:, dst_y : dst_y + h, dst_x : dst_x + w] = image[:, src_y : src_y + h, src_x : src_x + w]
    return out
