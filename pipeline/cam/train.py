"""CAM training without Ray: the optimiser of the reference, the CLIMS loss built from the
params and the frozen CLIP, the baseline and CLIMS training steps. pipeline.cam.ray_train runs
them on Ray Train (pipeline.train_loop); tests and GPU benchmarks call them directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.cam.losses import ClimsLoss
from pipeline.errors import UserError
from pipeline.nets.cam_net import CamNet, image_logits
from pipeline.params import Params


def make_optimizer(net: CamNet, cfg) -> torch.optim.SGD:
    """SGD with the head at `head_lr_scale` x the backbone's learning rate."""
    backbone, head = net.parameter_groups(cfg.frozen_stem, cfg.batchnorm_stats)
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def baseline_step(net: CamNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Multilabel soft-margin loss on the GAP of the per-pixel logits."""
    return {"loss": F.multilabel_soft_margin_loss(image_logits(net(images).float()), labels)}


def clims_step(net: CamNet, loss_fn: ClimsLoss, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four CLIMS losses on P = sigmoid(per-pixel logits)."""
    masks = torch.sigmoid(net(images).float())  # float32 under bf16 autocast too: the losses' inputs
    terms = loss_fn(images, masks, labels)
    terms["mask_mean"] = masks.detach().mean()
    return terms


def clims_loss_from(params: Params, clip, texts: dict, tau: float) -> ClimsLoss:
    """The CLIMS loss of the `clims_loss` section, with the frozen CLIP and its cached text
    embeddings (pipeline.clip.model.load_clip), for this process's share of a DDP run's batch."""
    cfg = params.clims_loss
    workers = torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1
    return ClimsLoss(clip, texts["class_embeddings"], texts["background_embeddings"], cfg.weights, cfg.variant, tau,
                     class_prompt_mask(params, texts["background_names"]),
                     score=clip_sigmoid(clip) if cfg.score == "clip_sigmoid" else None, clip_input=cfg.clip_input,
                     class_weights=class_weights(params), workers=workers)


def class_weights(params: Params) -> torch.Tensor | None:
    """(C,) pair weights of the classes in L_OTM and L_BTM, or None when all are 1."""
    weights = params.clims_loss.class_weights
    if not weights:
        return None
    return torch.tensor([weights.get(name, 1.0) for name in params.dataset.class_names])


def clip_sigmoid(clip) -> tuple[float, float]:
    """(scale, bias) of a sigmoid-trained CLIP: its probability that a prompt's concept is visible."""
    bias = getattr(clip.model, "logit_bias", None)
    if bias is None:
        raise UserError("clims_loss.score: clip_sigmoid needs a CLIP trained with a sigmoid loss (it has no logit_bias); use cosine")
    return float(clip.model.logit_scale.exp()), float(bias)


def class_prompt_mask(params: Params, background_names: list[str]) -> torch.Tensor:
    """(C, B) booleans: which background prompts are each class's own (camera-ready CBS)."""
    mask = torch.zeros(len(params.dataset.class_names), len(background_names), dtype=torch.bool)
    for name, prompts in (params.clims_loss.class_backgrounds or {}).items():
        for prompt in prompts:
            mask[params.dataset.class_names.index(name), background_names.index(prompt)] = True
    return mask
