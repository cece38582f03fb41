"""The CAM nets trained on Ray Train (pipeline.train_loop: DDP, per-epoch reports with a
checkpoint, resumption after a lost worker): the worker setup of the baseline and CLIMS nets,
and the exported net.

An exported net is a net folder (pipeline.io.save_net_folder): `weights.pt` and `net.json`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.cam.data import CamTrainSet
from pipeline.cam.evaluate import held_out_scorer, thresholds
from pipeline.cam.losses import ClimsLoss, LossWeights
from pipeline.cam.nets import CamNet, build_backbone, build_cam_net, with_checked_weights
from pipeline.cam.train import baseline_step, clims_step, make_optimizer
from pipeline.data.manifest import read_manifest
from pipeline.errors import UserError
from pipeline.io import read_net_folder, save_net_folder
from pipeline.params import Backbone, Params
from pipeline.train_loop import Setup, fit_final_state, ray_worker, run_name

KINDS = ("baseline", "clims")


# --------------------------------------------------------------------------- exported nets
def save_net(folder: Path, net: CamNet, backbone: Backbone, class_names: list[str], kind: str, history: list[dict]) -> None:
    save_net_folder(folder, net, {"kind": kind, "class_names": class_names, "bias": net.classifier.bias is not None,
                                  "backbone": backbone.model_dump(), "history": history})


def load_net(folder: str | Path, device: str | torch.device = "cpu") -> tuple[CamNet, dict]:
    state, meta = read_net_folder(folder, "no trained CAM net here (run its training stage first)")
    backbone = Backbone.model_validate(meta["backbone"])
    net = build_cam_net(backbone.model_copy(update={"weights": None}), len(meta["class_names"]), meta["bias"])
    net.load_state_dict(state)
    return net.to(device).eval(), meta


def backbone_from(params: Params, init_net: str | Path | None):
    """Starting features for IRN and the segmentation net: a trained CAM net's backbone, or
    `backbone` with its ImageNet weights file."""
    return load_net(init_net)[0].backbone if init_net else build_backbone(params.backbone)


# --------------------------------------------------------------------------- one worker's training
def build_training(params: Params, kind: str, device, init_net: str | None = None, clip_dir: str | None = None,
                   tau: float | None = None):
    """The net (on `device`) and the step function of a baseline or CLIMS run."""
    num_classes = len(params.dataset.class_names)
    if kind == "baseline":
        return build_cam_net(params.backbone, num_classes).to(device), baseline_step
    from pipeline.clip.model import load_clip

    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), num_classes, bias=True)
    baseline, _ = load_net(init_net)
    net.load_state_dict(baseline.state_dict(), strict=False)  # all but the new bias
    torch.nn.init.constant_(net.classifier.bias, params.train_clims.init_bias)
    clip, texts = load_clip(clip_dir, device)
    loss_cfg = params.clims_loss
    loss_fn = ClimsLoss(clip, texts["class_embeddings"], texts["background_embeddings"],
                        LossWeights(**loss_cfg.weights.model_dump()), loss_cfg.variant, tau if tau is not None else 0.0,
                        class_prompt_mask(params, texts["background_names"]),
                        score=clip_sigmoid(clip) if loss_cfg.score == "clip_sigmoid" else None).to(device)
    return net.to(device), lambda model, images, labels: clims_step(model, loss_fn, images, labels)


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


def cam_setup(params: Params, config: dict, device) -> Setup:
    """A baseline or CLIMS run on one worker. config: kind, manifest, and for CLIMS init_net,
    clip_dir and tau. A sweep trial also gives held_images (the manifest's last N, scored after
    every epoch by params.sweep, never trained on) and train_images (the first N)."""
    kind = config["kind"]
    cfg = params.train_cam if kind == "baseline" else params.train_clims
    net, step = build_training(params, kind, device, config.get("init_net"), config.get("clip_dir"), config.get("tau"))
    records = read_manifest(config["manifest"])
    split = len(records) - config.get("held_images", 0)
    dataset = CamTrainSet(records[:split][: config.get("train_images")], len(params.dataset.class_names), cfg.crop_size,
                          tuple(cfg.long_side))
    evaluate = None
    if split < len(records):
        sweep, ts = params.sweep, thresholds(**params.eval_cam.thresholds.model_dump())
        evaluate = held_out_scorer(records[split:], params.dataset, list(sweep.scales), ts, sweep.overlays)
    return Setup(net, step, make_optimizer(net, cfg), dataset, cfg, evaluate)


def train_worker(config: dict) -> None:
    ray_worker(config, cam_setup)


# --------------------------------------------------------------------------- the driver side
TRAINING_CODE = ("cam/nets.py", "cam/data.py", "cam/losses.py", "cam/train.py", "cam/ray_train.py", "cam/evaluate.py",
                 "train_loop.py", "distributed.py", "params.py")


def _inputs(config: dict) -> list[Path]:
    """The files a CAM training run depends on besides its config (see train_loop.run_name)."""
    inputs = [Path(config["manifest"])]
    for folder in (config.get("init_net"), config.get("clip_dir")):
        inputs += sorted(Path(folder).glob("*.pt")) if folder else []
    package = Path(__file__).resolve().parents[1]
    return inputs + [package / name for name in TRAINING_CODE]


def train(params: Params, kind: str, manifest: Path, out: Path, *, init_net: Path | None = None,
          clip_dir: Path | None = None, tau: float | None = None, name: str | None = None, **extra) -> list[dict]:
    """Train on Ray Train, export the final net into `out`; returns the per-epoch history."""
    params, cfg = with_checked_weights(params), params.train_cam if kind == "baseline" else params.train_clims
    labelled = sum(1 for r in read_manifest(manifest) if r.class_ids)
    if labelled < cfg.batch_size:
        section = "train_cam" if kind == "baseline" else "train_clims"
        raise UserError(f"{manifest}: {labelled} images with classes, fewer than {section}.batch_size={cfg.batch_size}")
    config = {"params": params.model_dump(), "seed": cfg.seed, "kind": kind, "manifest": str(Path(manifest).resolve()),
              "init_net": str(Path(init_net).resolve()) if init_net else None,
              "clip_dir": str(Path(clip_dir).resolve()) if clip_dir else None, "tau": tau, **extra}
    state = fit_final_state(train_worker, config, params.distributed, name or run_name(f"train_{kind}", config, _inputs(config)))
    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), len(params.dataset.class_names), bias=kind == "clims")
    net.load_state_dict(state["model"])
    save_net(out, net, params.backbone, params.dataset.class_names, kind, state["history"])
    return state["history"]
