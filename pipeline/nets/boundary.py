"""IRN's boundary network: a frozen backbone (fixed BatchNorm, detached features) and a trained
boundary branch. Each of the five backbone stages (stem, layer1..layer4) gives a side output
(1x1 conv to 32 channels, GroupNorm, ReLU) brought to the stride-4 grid; a 1x1 conv fuses them
into one boundary logit per grid cell. `side_upsampling` says how a coarser side output gets
there: "resize" (after its ReLU, bilinearly to the grid's size) or "reference" (IRN's: before
its ReLU, by the whole factor between its stride and the grid's, then cropped to the grid).

An exported IRN is a net folder (pipeline.io.save_net_folder; the backbone's weights included).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.data.cam_files import CAM_STRIDE, stride_size
from pipeline.io import read_net_folder, save_net_folder
from pipeline.nets.backbone import Backbone, ImageNetNormalise, build_backbone
from pipeline.params import BackboneSection
from pipeline.precision import forward


def backbone_stages(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the stem and of each of the four layers."""
    outs = [backbone.stem(x)]
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        outs.append(layer(outs[-1]))
    return outs


class BoundaryNet(nn.Module):
    def __init__(self, backbone: Backbone, side_channels: int = 32, side_upsampling: str = "resize"):
        super().__init__()
        self.side_upsampling = side_upsampling
        self.backbone = backbone.requires_grad_(False).eval()
        with torch.no_grad():
            probe = backbone_stages(backbone, torch.zeros(1, 3, 64, 64))
        channels = [f.shape[1] for f in probe]
        # how many grid cells one cell of each stage spans: IRN's whole upsampling factors
        self.side_factors = [max(1, (64 // f.shape[-1]) // CAM_STRIDE) for f in probe]
        self.sides = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, side_channels, 1, bias=False), nn.GroupNorm(4, side_channels), nn.ReLU(inplace=True))
            for c in channels
        )
        self.fuse = nn.Conv2d(side_channels * len(channels), 1, 1)
        self.normalise = ImageNetNormalise()

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Boundary logits (N, 1, ceil(H/4), ceil(W/4)) of images (N, 3, H, W) in [0, 1]."""
        grid = stride_size(*images01.shape[-2:])
        with torch.no_grad():  # frozen features, as in IRN
            features = backbone_stages(self.backbone, self.normalise(images01))
        sides = [self.side_output(n, f, grid) for n, f in enumerate(features)]
        return self.fuse(torch.cat(sides, 1))

    def side_output(self, stage: int, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One stage's side output on the stride-4 grid."""
        side = self.sides[stage]
        if self.side_upsampling == "resize":
            return F.interpolate(side(features), size=grid, mode="bilinear", align_corners=False)
        conv, norm, relu = side
        x = norm(conv(features))
        if self.side_factors[stage] > 1:  # coarser: up by the whole factor, then cropped to the grid
            x = F.interpolate(x, scale_factor=self.side_factors[stage], mode="bilinear", align_corners=False)
            x = x[..., : grid[0], : grid[1]]
        elif tuple(x.shape[-2:]) != tuple(grid):  # finer (a stem IRN's ResNet-50 does not have): down to the grid
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        return relu(x)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # fixed BatchNorm statistics
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@torch.no_grad()
def boundary_map(net: BoundaryNet, images01: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Boundary probabilities (N, h, w) from the image and its mirror (logits averaged), as IRN
    does for the random walk; the net's pass in `precision`, the map in float32."""
    logits = forward(net, torch.cat([images01, images01.flip(-1)]), precision)[:, 0]
    direct, mirrored = logits[: len(images01)], logits[len(images01) :].flip(-1)
    return torch.sigmoid((direct + mirrored) / 2)


def save_boundary_net(folder: Path, net: BoundaryNet, backbone: BackboneSection, side_channels: int, history: list[dict]) -> None:
    save_net_folder(folder, net, {"backbone": backbone.model_dump(), "side_channels": side_channels,
                                  "side_upsampling": net.side_upsampling, "history": history})


def load_boundary_net(folder: str | Path, device: str | torch.device = "cpu") -> tuple[BoundaryNet, dict]:
    state, meta = read_net_folder(folder, "no trained IRN here (run train_irn first)")
    backbone = BackboneSection.model_validate(meta["backbone"]).model_copy(update={"weights": None})
    net = BoundaryNet(build_backbone(backbone), meta["side_channels"], meta.get("side_upsampling", "resize"))
    net.load_state_dict(state)
    return net.to(device).eval(), meta
