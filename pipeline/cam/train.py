"""CAM training without Ray: the optimiser and schedule of the reference, the baseline and CLIMS
training steps, and an epoch loop. pipeline.cam.ray_train runs the same pieces on Ray Train;
tests and GPU benchmarks call them directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.cam.losses import ClimsLoss
from pipeline.cam.nets import CamNet, image_logits


def make_optimizer(net: CamNet, cfg) -> torch.optim.SGD:
    """SGD with the head at `head_lr_scale` x the backbone's learning rate."""
    backbone, head = net.parameter_groups(frozen_stem=cfg.frozen_stem)
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def schedule_factor(kind: str, step: int, total: int) -> float:
    """Learning-rate multiplier at `step` of `total`: cosine annealing or poly (power 0.9)."""
    t = min(step, total) / max(1, total)
    return 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else (1 - t) ** 0.9


def make_scheduler(optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(kind, step, total_steps))


def baseline_step(net: CamNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Multilabel soft-margin loss on the GAP of the per-pixel logits."""
    return {"loss": F.multilabel_soft_margin_loss(image_logits(net(images)), labels)}


def clims_step(net: CamNet, loss_fn: ClimsLoss, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four CLIMS losses on P = sigmoid(per-pixel logits)."""
    masks = torch.sigmoid(net(images))
    terms = loss_fn(images, masks, labels)
    terms["mask_mean"] = masks.detach().mean()
    return terms


StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict]


@dataclass
class EpochLog:
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {key: value / max(1, self.count) for key, value in self.sums.items()}


def train_epoch(net, step: StepFn, loader, optimizer, scheduler, device) -> dict[str, float]:
    """One pass over `loader`; returns the sample-weighted mean of every term the step reports."""
    net.train()
    log = EpochLog()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        terms = step(net, images, labels)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        log.add({k: v.detach() for k, v in terms.items()}, len(images))
    return log.means()
