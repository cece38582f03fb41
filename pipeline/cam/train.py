"""CAM training without Ray: the optimiser and schedule of the reference, the baseline and CLIMS
training steps. pipeline.cam.ray_train runs them on Ray Train (pipeline.train_loop); tests and
GPU benchmarks call them directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.cam.losses import ClimsLoss
from pipeline.cam.nets import CamNet, image_logits


def make_optimizer(net: CamNet, cfg) -> torch.optim.SGD:
    """SGD with the head at `head_lr_scale` x the backbone's learning rate."""
    backbone, head = net.parameter_groups(frozen_stem=cfg.frozen_stem)
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def baseline_step(net: CamNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Multilabel soft-margin loss on the GAP of the per-pixel logits."""
    return {"loss": F.multilabel_soft_margin_loss(image_logits(net(images)), labels)}


def clims_step(net: CamNet, loss_fn: ClimsLoss, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four CLIMS losses on P = sigmoid(per-pixel logits)."""
    masks = torch.sigmoid(net(images))
    terms = loss_fn(images, masks, labels)
    terms["mask_mean"] = masks.detach().mean()
    return terms
