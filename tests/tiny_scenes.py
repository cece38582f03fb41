"""Tiny scenes on disk and tiny nets for the per-image stages' tests."""
import numpy as np
import torch
from PIL import Image

from pipeline.data.manifest import ImageRecord
from pipeline.io import save_label_png
from pipeline.nets.cam_net import build_cam_net
from pipeline.params import BackboneSection, CrfSection

SMALL = BackboneSection(name="small_resnet", strides=[1, 2, 1, 1], widths=[8, 8, 16, 16], blocks=[1, 1, 1, 1], weights=None)


def cam_net(seed=0):
    """A 3-class CAM net of the small backbone (random weights of `seed`)."""
    torch.manual_seed(seed)
    return build_cam_net(SMALL, 3).eval()


def scene(folder, name, label, ground=None, seed=0) -> ImageRecord:
    """A random image with the label map `label` (and background map `ground`) saved in `folder`."""
    image_path = folder / f"{name}.png"
    Image.fromarray((np.random.default_rng(seed).random((*label.shape, 3)) * 255).astype(np.uint8)).save(image_path)
    save_label_png(folder / f"{name}_gt.png", label)
    background = None
    if ground is not None:
        background = folder / f"{name}_bg.png"
        Image.fromarray(ground.astype(np.uint8)).save(background)
    ids = tuple(int(c) for c in np.unique(label) if c not in (0, 255))
    return ImageRecord(name, image_path, folder / f"{name}_gt.png", ids, *label.shape, background)


def crf_config(**changes) -> CrfSection:
    """The reference's CRF settings with a 7-pixel window at full resolution, and `changes`."""
    cfg = {"kernel": "window", "iterations": 10, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "bilateral_sxy": 50.0, "bilateral_srgb": 5.0,
           "bilateral_compat": 10.0, "gt_prob": 0.7, "window": 7, "downsample": 1}
    return CrfSection(**{**cfg, **changes})
