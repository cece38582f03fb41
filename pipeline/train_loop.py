"""The training loop every trained stage shares (CAM nets, IRN), and its Ray Train wrapper.

`train_epoch` is a plain function (tests and GPU benchmarks call it without Ray). `ray_worker`
runs it on Ray Train workers: DDP, a per-epoch report with a checkpoint from rank 0, and the
resumption from the last checkpoint after a lost worker. A stage supplies a `setup` function
that builds its net, step, optimiser and dataset on the worker.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.params import Params, validate

STATE_FILE = "state.pt"
StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict]


def schedule_factor(kind: str, step: int, total: int) -> float:
    """Learning-rate multiplier at `step` of `total`: cosine annealing or poly (power 0.9)."""
    t = min(step, total) / max(1, total)
    return 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else (1 - t) ** 0.9


def make_scheduler(optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(kind, step, total_steps))


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
    """One pass over `loader` of (inputs, targets); returns the sample-weighted mean of every term
    the step reports."""
    net.train()
    log = EpochLog()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        terms = step(net, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        log.add({k: v.detach() for k, v in terms.items()}, len(inputs))
    return log.means()


@dataclass
class Setup:
    """What a stage trains: `net` is checkpointed and exported; `cfg` has seed, epochs,
    batch_size, schedule and loader_workers."""

    net: torch.nn.Module
    step: StepFn
    optimizer: torch.optim.Optimizer
    dataset: torch.utils.data.Dataset
    cfg: Any
    # Run on rank 0 after every epoch: figures to add to the epoch's report, and files to keep
    # in its checkpoint folder (a sweep trial's CAM mIoU and overlays)
    evaluate: Callable[[torch.nn.Module, Path], dict] | None = None


SetupFn = Callable[[Params, dict, torch.device], Setup]


def _all_reduce_means(means: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return means
    keys = sorted(means)
    values = torch.tensor([means[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {k: float(v) / torch.distributed.get_world_size() for k, v in zip(keys, values)}


def ray_worker(config: dict, setup: SetupFn) -> None:
    """Ray Train's per-worker loop. config: params (a dict), seed, and what `setup` reads;
    fail_after_epoch/fail_marker make one worker die once (tests)."""
    import ray.train
    import ray.train.torch

    params = validate(config["params"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(params.distributed.cpus_per_worker)  # Ray gives a 1-CPU worker one thread
    torch.manual_seed(config["seed"])  # the same initial weights on every worker
    job = setup(params, config, device)
    cfg, net, optimizer = job.cfg, job.net, job.optimizer

    sampler = torch.utils.data.DistributedSampler(job.dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(job.dataset, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
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
        began = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch * 16 + rank)  # augmentation: the same after a resume
        means = _all_reduce_means(train_epoch(model, job.step, loader, optimizer, scheduler, device))
        metrics = {"epoch": epoch + 1, "start_epoch": start, "workers": world, **means}  # start_epoch > 0: resumed
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                if job.evaluate is not None:
                    metrics.update(job.evaluate(net, Path(folder)))
                history.append(metrics)
                terms = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("epoch", "start_epoch", "workers"))
                print(f"epoch {epoch + 1}/{cfg.epochs}: {terms} ({time.perf_counter() - began:.1f} s)", flush=True)
                state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch + 1, "history": history}
                torch.save(state, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            history.append(metrics)
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


def run_name(prefix: str, config: dict, inputs: list[Path]) -> str:
    """Ray Train resumes a run from the checkpoints stored under its name, so the name hashes
    everything the training depends on: the config and the bytes of `inputs` (data manifest,
    initial nets, the training code). A killed stage resumes; a changed one starts afresh."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    return f"{prefix}-{digest.hexdigest()[:12]}"


def fit_final_state(train_fn: Callable[[dict], None], config: dict, dist, name: str) -> dict:
    """Run `train_fn` on Ray Train and return the last checkpoint's state (model, history, ...)."""
    from pipeline.distributed import fit

    result = fit(train_fn, config, dist, name)
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def fit_on_label_maps(train_fn: Callable[[dict], None], params: Params, section: str, producer: str, manifest: Path,
                      labels: Path, init_net: Path | None, code: tuple[str, ...], name: str | None = None, **extra) -> dict:
    """The driver side of a net trained on one label map per image (IRN, segmentation): check
    that `producer` left enough labelled images for a batch, name the run by everything it reads
    (manifest, labels' source, initial net, `code` under pipeline/), fit; returns the final state.
    The worker finds the labels at config["labels"]."""
    from pipeline.data.manifest import records_with_labels
    from pipeline.io import NET_WEIGHTS

    from pipeline.cam.nets import with_checked_weights

    params, cfg = with_checked_weights(params), getattr(params, section)
    records_with_labels(manifest, labels, cfg.batch_size, section, producer)
    config = {"params": params.model_dump(), "seed": cfg.seed, "manifest": str(Path(manifest).resolve()),
              "labels": str(Path(labels).resolve()), "init_net": str(Path(init_net).resolve()) if init_net else None, **extra}
    package = Path(__file__).resolve().parent
    inputs = [Path(manifest), Path(labels) / "source.json", *([Path(init_net) / NET_WEIGHTS] if init_net else []),
              *(package / c for c in code)]
    return fit_final_state(train_fn, config, params.distributed, name or run_name(section, config, inputs))
