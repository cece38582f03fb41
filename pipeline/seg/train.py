"""Training the segmentation net on pseudo labels, on Ray Train (pipeline.train_loop): SGD with
the head at 10x the backbone's learning rate, poly schedule, random rescale + flip + crop, label
255 ignored; the plain or the reference's balanced cross-entropy."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.data.manifest import read_manifest
from pipeline.data.training_sets import LabelMapTrainSet
from pipeline.metrics import IGNORE
from pipeline.nets.cam_net import backbone_from
from pipeline.nets.deeplab import build_seg_net, parameter_groups, save_seg_net
from pipeline.params import Params
from pipeline.train_loop import Setup, TrainJob, fit_on_label_maps, worker_loop


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference's loss: mean CE over background pixels + mean CE over foreground pixels, so
    that a small object weighs as much as the background around it (IGNORE left out)."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    background, foreground = labels == 0, (labels > 0) & (labels != IGNORE)
    return sum((per_pixel * part).sum() / part.sum().clamp_min(1) for part in (background, foreground))


def seg_step(net, images: torch.Tensor, labels: torch.Tensor, balanced: bool) -> dict[str, torch.Tensor]:
    logits = net(images)["out"].float()
    loss = balanced_cross_entropy(logits, labels) if balanced else F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return {"loss": loss}


def seg_setup(job: TrainJob, device) -> Setup:
    params, cfg = job.params, job.params.train_seg
    net = build_seg_net(backbone_from(params.backbone, job.init_net), len(params.dataset.class_names) + 1,
                        cfg.atrous_rates, cfg.head_width).to(device)
    backbone, head = parameter_groups(net)
    optimizer = torch.optim.SGD([{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}],
                                lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dataset = LabelMapTrainSet(read_manifest(job.manifest), job.labels, cfg.crop_size, tuple(cfg.long_side),
                               fill=cfg.crop_fill)
    return Setup(net, partial(seg_step, balanced=cfg.loss == "balanced"), optimizer, dataset)


def seg_worker(config: dict) -> None:
    worker_loop(config, seg_setup)


def train_seg(params: Params, manifest: Path, labels: Path, out: Path, init_net: Path | None = None,
              name: str | None = None) -> list[dict]:
    """Train DeepLabV3 on the pseudo labels on Ray Train and export it; returns the per-epoch history."""
    cfg = params.train_seg
    state = fit_on_label_maps(seg_worker, params, "train_seg", "make_sem_seg", manifest, labels, init_net, name)
    net = build_seg_net(backbone_from(params.backbone, init_net), len(params.dataset.class_names) + 1,
                        cfg.atrous_rates, cfg.head_width)
    net.load_state_dict(state["model"])
    head = {"rates": list(cfg.atrous_rates), "width": cfg.head_width}
    save_seg_net(out, net, params.backbone, params.dataset.class_names, head, state["history"])
    return state["history"]
