"""The CAM net: a ResNet backbone with a per-pixel 1x1 classifier, and its exported folder.

The baseline net is trained through global average pooling (GAP of the per-pixel logits equals
the 1x1 conv applied to the pooled features, since both are linear); the CLIMS net reads the
same per-pixel logits as masks, P = sigmoid(logits).

An exported net is a net folder (pipeline.io.save_net_folder): `weights.pt` and `net.json`
(kind, classes, whether the head has a bias, the backbone section, the training history).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.io import read_net_folder, save_net_folder
from pipeline.nets.backbone import Backbone, ImageNetNormalise, build_backbone
from pipeline.params import BackboneSection, BatchNormStats


class CamNet(nn.Module):
    """Backbone + 1x1 classifier giving per-pixel class logits (N, C, h, w).

    `bias=True` adds a per-class offset to the logits: the CLIMS net starts it negative, so
    that P = sigmoid(logits) begins as a small mask rather than the whole image.
    """

    def __init__(self, backbone: Backbone, num_classes: int, bias: bool = False):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=bias)
        self.normalise = ImageNetNormalise()
        self.batchnorm_stats = "batch"  # set with the optimiser's parameter groups

    def _fixed_batchnorms(self) -> list[nn.Module]:
        scope = {"running": self.backbone, "running_stem": self.backbone.stem}.get(self.batchnorm_stats)
        return [] if scope is None else [m for m in scope.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(self.normalise(images01)))

    def parameter_groups(self, frozen_stem: bool, batchnorm_stats: BatchNormStats = "batch") -> tuple[list, list]:
        """(backbone parameters, head parameters); a frozen stem and fixed BatchNorms are left out.
        `batchnorm_stats` (params.BatchNormStats): which BatchNorm layers keep their running
        statistics and affine while the net trains."""
        self.batchnorm_stats = batchnorm_stats
        fixed = [*(self.backbone.stem.parameters() if frozen_stem else []),
                 *(p for m in self._fixed_batchnorms() for p in m.parameters())]
        for p in fixed:
            p.requires_grad_(False)
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._fixed_batchnorms():  # running statistics, even in training
            m.eval()
        return self


def image_logits(pixel_logits: torch.Tensor) -> torch.Tensor:
    """The baseline's image-level scores: GAP of the per-pixel logits."""
    return pixel_logits.mean(dim=(2, 3))


def build_cam_net(backbone_cfg: BackboneSection, num_classes: int, bias: bool = False) -> CamNet:
    return CamNet(build_backbone(backbone_cfg), num_classes, bias)


def save_cam_net(folder: Path, net: CamNet, backbone: BackboneSection, class_names: list[str], kind: str,
                 history: list[dict]) -> None:
    save_net_folder(folder, net, {"kind": kind, "class_names": class_names, "bias": net.classifier.bias is not None,
                                  "backbone": backbone.model_dump(), "history": history})


def load_cam_net(folder: str | Path, device: str | torch.device = "cpu") -> tuple[CamNet, dict]:
    state, meta = read_net_folder(folder, "no trained CAM net here (run its training stage first)")
    backbone = BackboneSection.model_validate(meta["backbone"])
    net = build_cam_net(backbone.model_copy(update={"weights": None}), len(meta["class_names"]), meta["bias"])
    net.load_state_dict(state)
    return net.to(device).eval(), meta


def backbone_from(backbone_cfg: BackboneSection, init_net: str | Path | None) -> Backbone:
    """Starting features for IRN and the segmentation net: a trained CAM net's backbone, or the
    `backbone` section's net with its ImageNet weights file."""
    return load_cam_net(init_net)[0].backbone if init_net else build_backbone(backbone_cfg)
