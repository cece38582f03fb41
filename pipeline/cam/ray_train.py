"""The CAM nets trained on Ray Train (pipeline.train_loop: DDP, per-epoch reports with a
checkpoint, resumption after a lost worker): the worker setup of the baseline and CLIMS nets,
and the driver that checks the inputs, names the run, fits and exports the net
(pipeline.nets.cam_net)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.cam.held_out import held_out_scorer
from pipeline.cam.train import baseline_step, clims_loss_from, clims_step, make_optimizer
from pipeline.data.manifest import read_manifest
from pipeline.data.training_sets import CamTrainSet
from pipeline.errors import UserError
from pipeline.nets.backbone import with_checked_weights
from pipeline.nets.cam_net import CamNet, build_cam_net, load_cam_net, save_cam_net
from pipeline.params import BackboneSection, Params
from pipeline.scoring import thresholds
from pipeline.train_loop import Setup, TrainJob, absolute, fit_final_state, worker_loop

SECTIONS = {"baseline": "train_cam", "clims": "train_clims"}


# --------------------------------------------------------------------------- one worker's training
def build_training(job: TrainJob, device):
    """The net (on `device`) and the step function of a baseline or CLIMS run."""
    params, num_classes = job.params, len(job.params.dataset.class_names)
    if job.section == "train_cam":
        return build_cam_net(params.backbone, num_classes).to(device), baseline_step
    from pipeline.clip.model import load_clip

    net = clims_net_from(load_cam_net(job.init_net)[0], params.backbone, params.train_clims.init_bias,
                         params.train_clims.init_head_scale)
    clip, texts = load_clip(job.clip_dir, device)
    clip.model.set_grad_checkpointing(params.distributed.activation_checkpointing)
    loss_fn = clims_loss_from(params, clip, texts, job.tau if job.tau is not None else 0.0).to(device)
    return net.to(device), lambda model, images, labels: clims_step(model, loss_fn, images, labels)


def clims_net_from(baseline: CamNet, backbone: BackboneSection, init_bias: float | None,
                   head_scale: float = 1.0) -> CamNet:
    """The CLIMS net starts as the baseline; with `init_bias`, its head gains a bias starting
    there (so that P starts small), else it has none, as the reference's. `head_scale` multiplies
    the head's weights: below 1 it softens a P that the baseline's large logits make nearly binary."""
    net = build_cam_net(backbone.model_copy(update={"weights": None}), baseline.classifier.out_channels,
                        bias=init_bias is not None)
    net.load_state_dict(baseline.state_dict(), strict=False)  # all but a new bias
    if init_bias is not None:
        torch.nn.init.constant_(net.classifier.bias, init_bias)
    with torch.no_grad():
        net.classifier.weight.mul_(head_scale)
    return net


def cam_setup(job: TrainJob, device) -> Setup:
    """A baseline or CLIMS run on one worker. A sweep trial trains on the manifest's first
    `train_images` and scores its last `held_images` (never trained on) after every epoch."""
    params, cfg = job.params, job.cfg
    net, step = build_training(job, device)
    records = read_manifest(job.manifest)
    split = len(records) - job.held_images
    dataset = CamTrainSet(records[:split][: job.train_images], len(params.dataset.class_names), cfg.crop_size,
                          tuple(cfg.long_side), cfg.crop_fill)
    evaluate = None
    if split < len(records):
        sweep, ts = params.sweep, thresholds(**params.eval_cam.thresholds.model_dump())
        evaluate = held_out_scorer(records[split:], params.dataset, list(sweep.scales), ts, sweep.overlays)
    return Setup(net, step, make_optimizer(net, cfg), dataset, evaluate)


def train_worker(config: dict) -> None:
    worker_loop(config, cam_setup)


# --------------------------------------------------------------------------- the driver side
def train(params: Params, kind: str, manifest: Path, out: Path, *, init_net: Path | None = None,
          clip_dir: Path | None = None, tau: float | None = None, name: str | None = None) -> list[dict]:
    """Train on Ray Train, export the final net into `out`; returns the per-epoch history."""
    section = SECTIONS[kind]
    params, cfg = with_checked_weights(params), getattr(params, section)
    labelled = sum(1 for r in read_manifest(manifest) if r.class_ids)
    if labelled < cfg.batch_size:
        raise UserError(f"{manifest}: {labelled} images with classes, fewer than {section}.batch_size={cfg.batch_size}")
    job = TrainJob(params=params, section=section, manifest=absolute(manifest), init_net=absolute(init_net),
                   clip_dir=absolute(clip_dir), tau=tau)
    # the files the run depends on besides the job and the code
    inputs = [Path(manifest)] + [p for folder in (init_net, clip_dir) if folder for p in sorted(Path(folder).glob("*.pt"))]
    state = fit_final_state(train_worker, job, inputs, name)
    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), len(params.dataset.class_names),
                        bias="classifier.bias" in state["model"])
    net.load_state_dict(state["model"])
    save_cam_net(out, net, params.backbone, params.dataset.class_names, kind, state["history"])
    return state["history"]
