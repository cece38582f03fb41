"""The training loop every trained stage shares (CAM nets, IRN, segmentation), and its Ray Train
wrapper.

`train_epoch` is a plain function (tests and GPU benchmarks call it without Ray). `ray_worker`
runs it on Ray Train workers: DDP, a per-epoch report with a checkpoint from rank 0, and the
resumption from the last checkpoint after a lost worker. A stage supplies a `setup` function
that builds its net, step, optimiser and dataset on the worker from a `TrainJob`: the validated
params and the paths the run reads, one typed object that travels to the workers as it is.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict

from pipeline.codedeps import code_digest
from pipeline.data.manifest import data_fingerprint, read_manifest, records_with_labels
from pipeline.errors import UserError
from pipeline.io import NET_WEIGHTS, files_fingerprint, label_png_path
from pipeline.nets.backbone import with_checked_weights
from pipeline.params import Params

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


class TrainJob(BaseModel):
    """What a training run's workers are given: the params and the paths they read (absolute:
    workers may start in other folders). `section` names the params section with the run's
    training settings (seed, epochs, batch size, schedule, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    params: Params
    section: Literal["train_cam", "train_clims", "train_irn", "train_seg"]
    manifest: str
    init_net: Optional[str] = None  # the net whose weights start the run (CLIMS, IRN, segmentation)
    labels: Optional[str] = None  # one label map per image (IRN, segmentation)
    clip_dir: Optional[str] = None  # CLIMS: the frozen CLIP and its cached text embeddings
    tau: Optional[float] = None  # CLIMS: the CBS threshold
    train_images: Optional[int] = None  # a sweep trial: the first N images train it
    held_images: int = 0  # a sweep trial: the last N images (never trained on) score it after every epoch

    @property
    def cfg(self):
        return getattr(self.params, self.section)


def absolute(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


@dataclass
class Setup:
    """What a stage trains: `net` is checkpointed and exported."""

    net: torch.nn.Module
    step: StepFn
    optimizer: torch.optim.Optimizer
    dataset: torch.utils.data.Dataset
    # Run on rank 0 after every epoch: figures to add to the epoch's report, and files to keep
    # in its checkpoint folder (a sweep trial's CAM mIoU and overlays)
    evaluate: Callable[[torch.nn.Module, Path], dict] | None = None


SetupFn = Callable[[TrainJob, torch.device], Setup]


def _all_reduce_means(means: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return means
    keys = sorted(means)
    values = torch.tensor([means[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {k: float(v) / torch.distributed.get_world_size() for k, v in zip(keys, values)}


def ray_worker(config: dict, setup: SetupFn) -> None:
    """Ray Train's per-worker loop; config["job"] is the run's TrainJob. A UserError (bad data)
    leaves the worker without the traceback through the loop: its message names the file, and
    pipeline.distributed ends the run on it instead of retrying."""
    try:
        _train_on_worker(config["job"], setup)
    except UserError as error:
        raise UserError(str(error)) from None


def _train_on_worker(job: TrainJob, setup: SetupFn) -> None:
    import ray.train
    import ray.train.torch

    cfg = job.cfg
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(job.params.distributed.cpus_per_worker)  # Ray gives a 1-CPU worker one thread
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    work = setup(job, device)
    net, optimizer = work.net, work.optimizer

    sampler = torch.utils.data.DistributedSampler(work.dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(work.dataset, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
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
        means = _all_reduce_means(train_epoch(model, work.step, loader, optimizer, scheduler, device))
        metrics = {"epoch": epoch + 1, "start_epoch": start, "workers": world, **means}  # start_epoch > 0: resumed
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                if work.evaluate is not None:
                    metrics.update(work.evaluate(net, Path(folder)))
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


def run_name(train_fn: Callable[[dict], None], job: TrainJob, inputs: list[Path]) -> str:
    """Ray Train resumes a run from the checkpoints stored under its name, so the name hashes
    everything the training depends on: the job, the bytes of `inputs` (data manifest, initial
    nets, labels' source), the images and label maps as they are now (sizes and modification
    times: an image rewritten under an unchanged manifest counts) and the project code the
    worker's module imports (pipeline.codedeps). A killed stage resumes; a changed one starts afresh."""
    digest = hashlib.sha256(job.model_dump_json().encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    records = read_manifest(job.manifest)
    digest.update(data_fingerprint(records).encode())
    if job.labels:
        digest.update(files_fingerprint([label_png_path(job.labels, r.image_id) for r in records]).encode())
    digest.update(code_digest(train_fn.__module__).encode())
    return f"{job.section}-{digest.hexdigest()[:12]}"


def fit_final_state(train_fn: Callable[[dict], None], job: TrainJob, inputs: list[Path], name: str | None = None) -> dict:
    """Run `train_fn` on Ray Train (under `name`, else `run_name`) and return the last
    checkpoint's state (model, history, ...)."""
    from pipeline.distributed import fit

    result = fit(train_fn, job, job.params.distributed, name or run_name(train_fn, job, inputs))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def fit_on_label_maps(train_fn: Callable[[dict], None], params: Params, section: str, producer: str, manifest: Path,
                      labels: Path, init_net: Path | None, name: str | None = None) -> dict:
    """The driver side of a net trained on one label map per image (IRN, segmentation): check
    that `producer` left enough labelled images for a batch, name the run by everything it reads
    (manifest, labels' source, initial net, code), fit; returns the final state."""
    params = with_checked_weights(params)
    records_with_labels(manifest, labels, getattr(params, section).batch_size, section, producer)
    job = TrainJob(params=params, section=section, manifest=absolute(manifest), labels=absolute(labels),
                   init_net=absolute(init_net))
    inputs = [Path(manifest), Path(labels) / "source.json", *([Path(init_net) / NET_WEIGHTS] if init_net else [])]
    return fit_final_state(train_fn, job, inputs, name)
