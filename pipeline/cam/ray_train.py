"""The CAM nets trained on Ray Train: one worker function for the baseline and CLIMS nets,
per-epoch reports with a checkpoint, resumption after a lost worker, and the exported net.

An exported net is a folder with `weights.pt` (a plain state dict, loadable with
weights_only=True) and `net.json` (what builds the architecture, plus the training history).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from pipeline.cam.data import CamTrainSet
from pipeline.cam.losses import ClimsLoss, LossWeights
from pipeline.cam.nets import CamNet, build_cam_net
from pipeline.cam.train import baseline_step, clims_step, make_optimizer, make_scheduler, train_epoch
from pipeline.data.manifest import read_manifest
from pipeline.errors import UserError
from pipeline.io import atomic_path, write_json
from pipeline.params import Backbone, Params, validate

STATE_FILE, WEIGHTS_FILE, NET_FILE = "state.pt", "weights.pt", "net.json"
KINDS = ("baseline", "clims")


# --------------------------------------------------------------------------- exported nets
def save_net(folder: Path, net: CamNet, backbone: Backbone, class_names: list[str], kind: str, history: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp)
    meta = {"kind": kind, "class_names": class_names, "bias": net.classifier.bias is not None,
            "backbone": backbone.model_dump(), "history": history}
    write_json(folder / NET_FILE, meta)


def load_net(folder: str | Path, device: str | torch.device = "cpu") -> tuple[CamNet, dict]:
    folder = Path(folder)
    meta_path = folder / NET_FILE
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: no trained CAM net here (run its training stage first)")
    meta = json.loads(meta_path.read_text())
    backbone = Backbone.model_validate(meta["backbone"])
    net = build_cam_net(backbone.model_copy(update={"weights": None}), len(meta["class_names"]), meta["bias"])
    net.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return net.to(device).eval(), meta


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


def _all_reduce_means(means: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return means
    keys = sorted(means)
    values = torch.tensor([means[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {k: float(v) / torch.distributed.get_world_size() for k, v in zip(keys, values)}


def train_worker(config: dict) -> None:
    """Ray Train's per-worker loop. config: params (a dict), kind, manifest, and for CLIMS
    init_net, clip_dir and tau; fail_after_epoch/fail_marker make one worker die once (tests)."""
    import ray.train
    import ray.train.torch

    params = validate(config["params"])
    kind = config["kind"]
    cfg = params.train_cam if kind == "baseline" else params.train_clims
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(params.distributed.cpus_per_worker)
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    net, step = build_training(params, kind, device, config.get("init_net"), config.get("clip_dir"), config.get("tau"))
    optimizer = make_optimizer(net, cfg)

    dataset = CamTrainSet(read_manifest(config["manifest"]), len(params.dataset.class_names), cfg.crop_size, tuple(cfg.long_side))
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
                                         num_workers=cfg.loader_workers, pin_memory=device.type == "cuda")
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs * len(loader))

    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
    model = ray.train.torch.prepare_model(net)  # DDP when there is more than one worker

    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch * 16 + rank)  # augmentation: the same after a resume
        means = _all_reduce_means(train_epoch(model, step, loader, optimizer, scheduler, device))
        metrics = {"epoch": epoch + 1, "start_epoch": start, "workers": world, **means}  # start_epoch > 0: resumed
        history.append(metrics)
        if rank == 0:
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "history": history}
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        _maybe_fail(config, epoch + 1, rank, world)


def _maybe_fail(config: dict, epoch: int, rank: int, world: int) -> None:
    """Fault injection for the resume test: the last worker dies once after the given epoch,
    once Ray Train's controller (which polls every 2 s) has taken that epoch's checkpoint."""
    marker = config.get("fail_marker")
    if config.get("fail_after_epoch") == epoch and rank == world - 1 and marker and not os.path.exists(marker):
        Path(marker).touch()
        time.sleep(5)
        os._exit(1)


# --------------------------------------------------------------------------- the driver side
def run_name(kind: str, config: dict) -> str:
    """Ray Train resumes a run from the checkpoints stored under its name, so the name is a hash
    of everything the training depends on: params, data manifest, initial net, CLIP, and this
    package's training code. A killed stage resumes where it stopped; a changed one starts afresh."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    inputs = [Path(config["manifest"])]
    for folder in (config.get("init_net"), config.get("clip_dir")):
        inputs += sorted(Path(folder).glob("*.pt")) if folder else []
    package = Path(__file__).resolve().parents[1]
    inputs += sorted(package.glob("cam/*.py")) + [package / "distributed.py", package / "params.py"]
    for path in inputs:
        digest.update(path.read_bytes())
    return f"train_{kind}-{digest.hexdigest()[:12]}"


def train(params: Params, kind: str, manifest: Path, out: Path, *, init_net: Path | None = None,
          clip_dir: Path | None = None, tau: float | None = None, name: str | None = None, **extra) -> list[dict]:
    """Train on Ray Train, export the final net into `out`; returns the per-epoch history."""
    from pipeline.distributed import fit

    cfg = params.train_cam if kind == "baseline" else params.train_clims
    labelled = sum(1 for r in read_manifest(manifest) if r.class_ids)
    if labelled < cfg.batch_size:
        section = "train_cam" if kind == "baseline" else "train_clims"
        raise UserError(f"{manifest}: {labelled} images with classes, fewer than {section}.batch_size={cfg.batch_size}")
    config = {"params": params.model_dump(), "kind": kind, "manifest": str(Path(manifest).resolve()),
              "init_net": str(Path(init_net).resolve()) if init_net else None,
              "clip_dir": str(Path(clip_dir).resolve()) if clip_dir else None, "tau": tau, **extra}
    result = fit(train_worker, config, params.distributed, name or run_name(kind, config))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), len(params.dataset.class_names), bias=kind == "clims")
    net.load_state_dict(state["model"])
    save_net(out, net, params.backbone, params.dataset.class_names, kind, state["history"])
    return state["history"]
