"""The ResNet backbones every net is built on (CAM nets, IRN's boundary net, DeepLab): a narrow
ResNet of BasicBlocks trained from scratch, or a torchvision ResNet with ImageNet weights from a
local file; and the one ImageNet normalisation the nets apply to their [0, 1] input.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torchvision
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck

from pipeline.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ImageNetNormalise(nn.Module):
    """(x - mean) / std of ImageNet, for images in [0, 1]. The nets take [0, 1] images and
    normalise them themselves, so CLIMS masks the very tensor the CAM net saw. The buffers are
    not saved: a net's state dict holds only what it learned."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean) / self.std


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """stem (conv1, bn1, relu, maxpool) -> layer1..layer4; `strides` = (conv1, layer2, layer3, layer4).

    With `checkpointing` (set by distributed.activation_checkpointing), a training pass keeps only
    the output of the stem and of each residual block and recomputes a block's inner activations
    in the backward pass: the same outputs and gradients for about a third more compute."""

    def __init__(self, stem: nn.Sequential, layers: list[nn.Sequential], out_channels: int):
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels
        self.checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpointing and torch.is_grad_enabled()):
            return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        for block in (self.stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4):
            x = checkpoint(block, x, use_reentrant=False, context_fn=lambda block=block: (nullcontext(), frozen_statistics(block)))
        return x


@contextmanager
def frozen_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` that leave their running statistics alone (momentum 0): a
    checkpointed block's recomputation must not count its batch twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def small_resnet(widths: list[int], blocks: list[int], strides: list[int]) -> Backbone:
    """A narrow ResNet of torchvision BasicBlocks for small images (trained from scratch)."""
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, strides[0], 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    layers, inplanes = [], widths[0]
    for planes, count, stride in zip(widths, blocks, [1, *strides[1:]]):
        if count == 0:  # an empty layer passes its input on: a shallower net with a smaller receptive field
            layers.append(nn.Sequential())
            continue
        layers.append(_make_layer(inplanes, planes, count, stride))
        inplanes = planes
    return Backbone(stem, layers, inplanes)


def _restride(layer: nn.Sequential, stride: int) -> None:
    """Set the stride of a torchvision ResNet stage (its first block's strided conv and shortcut)."""
    block = layer[0]
    conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def load_imagenet_weights(net: nn.Module, name: str, path: Path) -> None:
    """A torchvision `name` state dict from `path` into `net`; a missing or wrong file is one line."""
    expected = f"backbone.weights: a torchvision {name} state dict"
    if not path.is_file():
        raise UserError(f"{path}: backbone weights file not found ({expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = net.load_state_dict(state, strict=False)
    except Exception as exc:  # not a state dict, or tensors of other shapes
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: not a {name} state dict ({expected}; {type(exc).__name__}: {reason})") from None
    if [k for k in missing if not k.startswith("fc.")]:
        raise UserError(f"{path}: not a {name} state dict ({expected}; missing {missing[:3]} ...)")


def with_checked_weights(params):
    """`params` with backbone.weights made absolute and loaded once here, in the stage's process:
    Ray workers may start in other folders, and a missing or wrong file is then one line before
    any of them starts."""
    cfg = params.backbone
    if not cfg.weights:
        return params
    path = Path(cfg.weights).expanduser().resolve()
    load_imagenet_weights(getattr(torchvision.models, cfg.name)(weights=None), cfg.name, path)
    return params.model_copy(update={"backbone": cfg.model_copy(update={"weights": str(path)})})


def torchvision_resnet(name: str, strides: list[int], weights: str | None) -> Backbone:
    """A torchvision ResNet with the given stage strides; ImageNet weights from a local file."""
    net = getattr(torchvision.models, name)(weights=None)
    if weights:
        load_imagenet_weights(net, name, Path(weights))
    net.conv1.stride = (strides[0], strides[0])
    for layer, stride in zip((net.layer2, net.layer3, net.layer4), strides[1:]):
        _restride(layer, stride)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Backbone(stem, [net.layer1, net.layer2, net.layer3, net.layer4], net.fc.in_features)


def build_backbone(cfg) -> Backbone:
    """The backbone a params `backbone` section describes."""
    if cfg.name == "small_resnet":
        return small_resnet(cfg.widths, cfg.blocks, cfg.strides)
    return torchvision_resnet(cfg.name, cfg.strides, cfg.weights)
