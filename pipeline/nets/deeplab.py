"""The segmentation network: torchvision's DeepLabV3 on the project's ResNet backbones.

The head is DeepLabHead's layers (ASPP, 3x3 conv, BN, ReLU, 1x1 conv) with the ASPP rates and
width from params: rates (12, 24, 36) and width 256 are torchvision's for 512 px crops at
output stride 8; a 64 px synthetic image at output stride 4 has a 16 x 16 map, where small
rates and a narrow head fit.

An exported net is a net folder (pipeline.io.save_net_folder): `weights.pt` and `net.json`
(backbone config, head config, classes, training history).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

from pipeline.io import read_net_folder, save_net_folder
from pipeline.nets.backbone import Backbone, ImageNetNormalise, build_backbone
from pipeline.params import BackboneSection


class _Features(nn.Module):
    """DeepLabV3 reads the backbone's output from a dict; the nets take images in [0, 1]."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.body = backbone
        self.normalise = ImageNetNormalise()

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(self.normalise(images01))}


def deeplab_head(in_channels: int, num_classes: int, rates: list[int], width: int) -> nn.Sequential:
    return nn.Sequential(
        ASPP(in_channels, rates, width),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, num_classes, 1),
    )


def build_seg_net(backbone: Backbone, num_classes: int, rates: list[int], width: int) -> DeepLabV3:
    """DeepLabV3 with `num_classes` outputs (background included); net(x)["out"] is (N, L, H, W)."""
    return DeepLabV3(_Features(backbone), deeplab_head(backbone.out_channels, num_classes, rates, width))


def parameter_groups(net: DeepLabV3) -> tuple[list, list]:
    return list(net.backbone.parameters()), list(net.classifier.parameters())


def save_seg_net(folder: Path, net: DeepLabV3, backbone: BackboneSection, class_names: list[str], head: dict, history: list[dict]) -> None:
    save_net_folder(folder, net, {"backbone": backbone.model_dump(), "class_names": class_names, "head": head, "history": history})


def load_seg_net(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DeepLabV3, dict]:
    state, meta = read_net_folder(folder, "no trained segmentation net here (run train_seg first)")
    backbone = build_backbone(BackboneSection.model_validate(meta["backbone"]).model_copy(update={"weights": None}))
    net = build_seg_net(backbone, len(meta["class_names"]) + 1, meta["head"]["rates"], meta["head"]["width"])
    net.load_state_dict(state)
    return net.to(device).eval(), meta
