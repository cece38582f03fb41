"""The training loop every trained stage shares (CAM nets, IRN, segmentation), on Ray Train or
in the stage's own process.

`train_epoch` is a plain function (tests and GPU benchmarks call it directly). `worker_loop`
runs the epochs on Ray Train workers: DDP, a per-epoch report with a checkpoint from rank 0, and
the resumption from the last checkpoint after a lost worker. With `distributed.launcher: local`
(and `auto`, the default, for one worker outside a cluster) the same epochs run in the calling
process, checkpointed into `distributed.storage` under the run's name and resumed from there.
A stage supplies a `setup` function that builds its net, step, optimiser and dataset from a
`TrainJob`: the validated params and the paths the run reads, one typed object that travels to
the workers as it is.
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
from pipeline.nets.backbone import Backbone, with_checked_weights
from pipeline.params import Params
from pipeline.precision import autocast, prepared_images, prepared_net, required_device
from pipeline.storage import StateFile, join, storage_path

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
    """Sample-weighted sums of every term a step reports, kept where the step computed them:
    reading a GPU value on the host waits for the GPU, so they are read once, at the epoch's end."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float() * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {key: float(value) / max(1, self.count) for key, value in self.sums.items()}


def train_epoch(net, step: StepFn, loader, optimizer, scheduler, device, precision: str = "fp32") -> dict[str, float]:
    """One pass over `loader` of (inputs, targets); returns the sample-weighted mean of every term
    the step reports. `precision` bf16: the step's forward pass under autocast (pipeline.precision)."""
    net.train()
    log = EpochLog()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            terms = step(net, prepared_images(inputs, precision), targets)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        log.add(terms, len(inputs))
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


def worker_loop(config: dict, setup: SetupFn) -> None:
    """The per-worker loop; config["job"] is the run's TrainJob. On Ray Train unless
    config["local_run"] names the folder (or URI) of a run in this process (`distributed.launcher: local`).
    A UserError (bad data) leaves the worker without the traceback through the loop: its message
    names the file, and pipeline.distributed ends the run on it instead of retrying."""
    try:
        session = LocalSession(config["local_run"], config["job"]) if "local_run" in config else RaySession()
        _train(config["job"], setup, session)
    except UserError as error:
        raise UserError(str(error)) from None


class RaySession:
    """A Ray Train worker: its rank, device, the run's last checkpoint and the reports."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        from pipeline.allocator import keep_freed_memory
        from pipeline.distributed import node_name

        keep_freed_memory()  # a Ray worker process: the stage's own setting is not inherited
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = node_name()

    def nodes(self) -> list[str]:
        """Every rank's node, in rank order."""
        if not torch.distributed.is_initialized():
            return [self.node]
        nodes = [None] * self.world
        torch.distributed.all_gather_object(nodes, self.node)
        return nodes

    def last_state(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location=self.device, weights_only=True)

    def prepare_model(self, net):
        import ray.train.torch

        return ray.train.torch.prepare_model(net)  # DDP when there is more than one worker

    def report(self, metrics: dict, state: dict | None = None, folder: Path | None = None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        torch.save(state, folder / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class LocalSession:
    """The one worker of a run in this process: its state file in the run's folder of the storage
    (a folder or a URI) is its checkpoint."""

    rank, world = 0, 1

    def __init__(self, run: str, job: TrainJob):
        self.state, self.device = StateFile(join(run, STATE_FILE)), required_device(job.params.distributed.use_gpu)

    def last_state(self) -> dict | None:
        return self.state.load(self.device)

    def nodes(self) -> list[str]:
        return []  # this process

    def prepare_model(self, net):
        return net

    def report(self, metrics: dict, state: dict | None = None, folder: Path | None = None) -> None:
        self.state.save(state)


def _train(job: TrainJob, setup: SetupFn, session) -> None:
    cfg, dist = job.cfg, job.params.distributed
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(dist.cpus_per_worker)  # Ray gives a 1-CPU worker one thread
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    work = setup(job, device)
    for module in work.net.modules():
        if isinstance(module, Backbone):
            module.checkpointing = dist.activation_checkpointing
    net, optimizer = prepared_net(work.net, dist.precision), work.optimizer

    sampler = torch.utils.data.DistributedSampler(work.dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(work.dataset, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
                                         num_workers=cfg.loader_workers, pin_memory=device.type == "cuda")
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs * len(loader))

    start, history = 0, []
    state = session.last_state()
    if state:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
    model = session.prepare_model(net)
    nodes = session.nodes()
    if rank == 0 and nodes:
        print(f"{world} worker(s) on {len(set(nodes))} node(s): " + ", ".join(f"rank {r} on {n}" for r, n in enumerate(nodes)), flush=True)

    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch * 16 + rank)  # augmentation: the same after a resume
        means = _all_reduce_means(train_epoch(model, work.step, loader, optimizer, scheduler, device, dist.precision))
        # start_epoch > 0: resumed; seconds: this worker's training time (before the held-out scoring)
        metrics = {"epoch": epoch + 1, "start_epoch": start, "workers": world, **means,
                   "steps": len(loader), "seconds": round(time.perf_counter() - began, 3)}
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                if work.evaluate is not None:
                    metrics.update(work.evaluate(net, Path(folder)))
                history.append(metrics)
                terms = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("epoch", "start_epoch", "workers", "steps", "seconds"))
                print(f"epoch {epoch + 1}/{cfg.epochs}: {terms} ({time.perf_counter() - began:.1f} s)", flush=True)
                state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch + 1, "history": history}
                session.report(metrics, state, Path(folder))
        else:
            history.append(metrics)
            session.report(metrics)


def run_name(train_fn: Callable[[dict], None], job: TrainJob, inputs: list[Path]) -> str:
    """Ray Train resumes a run from the checkpoints stored under its name, so the name hashes
    everything the training depends on: the job, the bytes of `inputs` (data manifest, initial
    nets, labels' source), the images and label maps as they are now (sizes and modification
    times: an image rewritten under an unchanged manifest counts) and the project code the
    worker's module imports (pipeline.codedeps). A killed stage resumes; a changed one starts afresh.
    The retry budget is left out: a run that gave up after its retries resumes with more."""
    digest = hashlib.sha256(job.model_dump_json(exclude={"params": {"distributed": {"max_failures"}}}).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    records = read_manifest(job.manifest)
    digest.update(data_fingerprint(records).encode())
    if job.labels:
        digest.update(files_fingerprint([label_png_path(job.labels, r.image_id) for r in records]).encode())
    digest.update(code_digest(train_fn.__module__).encode())
    return f"{job.section}-{digest.hexdigest()[:12]}"


def fit_final_state(train_fn: Callable[[dict], None], job: TrainJob, inputs: list[Path], name: str | None = None) -> dict:
    """Run `train_fn` (under `name`, else `run_name`) on Ray Train or in this process
    (`Distributed.trains_in_process`); return the last checkpoint's state (model, history, ...)."""
    from pipeline.distributed import fit

    dist = job.params.distributed
    name = name or run_name(train_fn, job, inputs)
    if dist.trains_in_process():
        print(f"{job.section}: training in this process, without Ray (distributed.launcher: {dist.launcher})", flush=True)
        run = join(storage_path(dist.storage), name)
        train_fn({"job": job, "local_run": run})
        return StateFile(join(run, STATE_FILE)).load()
    result = fit(train_fn, job, dist, name)
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
