"""Reading images, and the reference's training augmentation: random long-side rescale,
horizontal flip, random crop (zero padding where the image is smaller); the same augmentation
carries a label map along (IRN and segmentation training).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.errors import UserError
from pipeline.metrics import IGNORE
from pipeline.nets.backbone import IMAGENET_MEAN


def load_image(path) -> torch.Tensor:
    """An RGB image as a float tensor (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


CROP_FILLS = {"black": (0.0, 0.0, 0.0), "mean": IMAGENET_MEAN}  # what a crop shows outside the image


def augment(image: torch.Tensor, crop_size: int, long_side: tuple[int, int], label: torch.Tensor | None = None,
            scale_range: tuple[float, float] | None = None, fill: str = "black"):
    """Random long-side rescale, flip and crop of an image (3, H, W); a label map (H, W), when
    given, gets the same (nearest rescale, 255 outside the image) and (image, label) is returned.
    With `scale_range` (low, high) the rescale is a uniform factor of the image's own size
    instead (IRN's training). `fill` names the colour outside the image (CROP_FILLS)."""
    height, width = image.shape[-2:]
    if scale_range is None:
        scale = int(torch.randint(long_side[0], long_side[1] + 1, ()).item()) / max(height, width)
    else:
        scale = scale_range[0] + float(torch.rand(())) * (scale_range[1] - scale_range[0])
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        image = torch.cat([image, F.interpolate(label[None, None].float(), size=size, mode="nearest")[0]])
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    if label is None:
        return random_crop(image, crop_size, fill=CROP_FILLS[fill])
    cropped = random_crop(image, crop_size, fill=(*CROP_FILLS[fill], float(IGNORE)))
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
