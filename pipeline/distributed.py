"""Ray helpers shared by the stages: joining or starting a cluster, Ray Train runs, and sharding
per-image work over Ray tasks."""
from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable, Sequence

from pipeline.allocator import keep_freed_memory
from pipeline.errors import UserError
from pipeline.storage import storage_path

LOOPBACK_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is 127.0.0.1


# Ray Train settings the stages default to (the environment's own values win). The terminal
# shows the workers' own prints (per-epoch progress) once each, not Ray Train's INFO logs, its
# print-to-logger tee (which doubled every line) or the placement-group cleaner's warnings about
# the state API (served by the dashboard, which stages do not start). The controller polls its
# workers every 0.25 s instead of 2 s: a one-epoch fit on 2 CPUs took 13.0 s instead of 17.5 s.
RAY_TRAIN_DEFAULTS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
                      "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def init_ray(dashboard: bool = False, num_cpus: int | None = None) -> None:
    """Join the cluster named by $RAY_ADDRESS, else start a local one (once per process).

    A local cluster listens on 127.0.0.1 only, and never joins a cluster that another process
    started on this host (`ray start` without RAY_ADDRESS): it is this process's own. Ray Train's
    placement-group cleaner is told where its state API is, instead of scanning the host for
    clusters (with two on one host it failed with "Found multiple active Ray instances").
    `dashboard`: the local cluster also serves Ray's dashboard (on 127.0.0.1); the cleaner needs
    it to free the CPUs of a Train run whose Tune trial was stopped early, or the next trial's
    workers never start. `num_cpus`: the local cluster's CPUs (default: the machine's).
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    for key, value in RAY_TRAIN_DEFAULTS.items():  # inherited by a local cluster's processes
        os.environ.setdefault(key, value)
    address = os.environ.get("RAY_ADDRESS")
    local = {}
    if not address:
        # Ray takes its node address from here, at import: loopback rather than the host's address.
        os.environ[LOOPBACK_NODE_ENV] = "0"
        port = bindable_port("127.0.0.1", 0)
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        local = {"include_dashboard": dashboard, "dashboard_host": "127.0.0.1", "dashboard_port": port, "num_cpus": num_cpus}
    import ray
    from ray._private import ray_constants

    if not address and ray_constants.ENABLE_RAY_CLUSTER:  # ray was imported before the variable was set
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address=address or "local", log_to_driver=True, logging_level=logging.ERROR,
             logging_config=ray.LoggingConfig(log_level="ERROR"), **local)


def bindable_port(host: str, port: int) -> int:
    """`port` if a server can listen there now (0: a free one, chosen here); a busy port is one line."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"{host}:{port}: cannot listen there ({exc.strerror}); choose another with --port") from None
        return probe.getsockname()[1]


def user_error(error: BaseException | None) -> UserError | None:
    """The project's one-line error carried by an error from a Ray worker or task, if it is one:
    as raised, or re-raised by a DataLoader worker with the original traceback in its message."""
    cause = getattr(error, "cause", None)  # a Ray task's error carries the task's own exception
    error = cause if isinstance(cause, BaseException) else error
    if not isinstance(error, UserError):
        return None
    return UserError(str(error).strip().splitlines()[-1].split("UserError: ", 1)[-1])


def stop_on_user_errors():
    """A Ray Train callback (run by its controller) that ends a run as soon as a worker raised a
    UserError: bad data or settings are not cured by a retry, so FailureConfig's retries are kept
    for lost workers."""
    from ray.train import ControllerError, UserCallback

    class StopOnUserError(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            for error in worker_exceptions.values():
                if user_error(error) is not None:
                    # a controller error is never retried, and (a TrainingFailedError) not logged again
                    raise ControllerError(user_error(error))

    return StopOnUserError()


def raise_user_error_inside(error: BaseException) -> None:
    """Raise the UserError inside a failed Ray Train run (ControllerError, WorkerGroupError), if any."""
    for inner in (getattr(error, "controller_failure", None), *getattr(error, "worker_failures", {}).values()):
        found = user_error(inner)
        if found is not None:
            raise found from None


def stopped_run(error: BaseException, name: str, storage: str, retries: int) -> UserError:
    """One line for a Ray Train run that failed more often than its retries allow (a lost node,
    a crashed worker): what failed, where its checkpoints are, how to go on. The tracebacks were
    printed above it as Ray reported them."""
    failures = getattr(error, "worker_failures", None) or {}
    controller = getattr(error, "controller_failure", None)
    causes = [f"rank {rank}: {_last_line(failure)}" for rank, failure in sorted(failures.items())]
    if controller is not None:
        causes.append(_last_line(controller))
    what = "; ".join(causes) or _last_line(error)
    return UserError(f"{name}: training stopped after {retries} retries (distributed.max_failures): {what}. Its "
                     f"checkpoints stay in {storage}/{name}: run the stage again (dvc repro) to resume from the last one")


def _last_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[-1][:300]


def fit(train_fn: Callable[[dict], None], job, dist, name: str, storage: str | None = None,
        callbacks: list | None = None):
    """Run `train_fn({"job": job})` on `dist.num_workers` Ray Train workers (DDP) and return the
    Result (`job`: a pipeline.train_loop.TrainJob, which pickles as it is).

    A worker lost mid-run is replaced and the run resumes from the last reported checkpoint, up
    to `dist.max_failures` times. Ray Train also resumes a run whose `name` already has
    checkpoints in the storage (`dist.storage` unless given), so callers make the name unique to
    what is being trained. `callbacks`: Ray Train UserCallbacks (a sweep's TuneReportCallback).
    """
    init_ray()
    storage = storage_path(storage or dist.storage)
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_fn,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if dist.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu,
                                     resources_per_worker={"CPU": dist.cpus_per_worker, **({"GPU": 1} if dist.use_gpu else {})}),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=dist.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*(callbacks or []), stop_on_user_errors()],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as error:
        raise_user_error_inside(error)
        raise stopped_run(error, name, storage, dist.max_failures) from None


def map_shards(work: Callable[..., Any], items: Sequence, num_workers: int, use_gpu: bool, *args, cpus: int = 1) -> list:
    """Split `items` into `num_workers` contiguous shards and run `work(shard, *args)` on each as
    a Ray task, spread over the cluster's nodes; `num_workers` 0 runs the work here, in one piece."""
    if num_workers == 0 or len(items) == 0:
        return [work(list(items), *args)]
    init_ray()
    import ray

    shards = [list(items[i::num_workers]) for i in range(num_workers)]
    # SPREAD: each shard on another node while there are nodes with room (one net load per node)
    task = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0, scheduling_strategy="SPREAD")(_on_node)
    try:
        done = ray.get([task.remote(work, os.getcwd(), shard, *args) for shard in shards if shard])
    except ray.exceptions.RayTaskError as error:
        found = user_error(error)
        if found is None:
            raise
        raise found from None
    nodes = sorted({node for node, _ in done})
    print(f"{work.__name__}: {len(done)} shards on {len(nodes)} node(s): {', '.join(nodes)}", flush=True)
    return [result for _, result in done]


def node_name() -> str:
    """This Ray worker's node: its address and the start of its id."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"


def _on_node(work: Callable[..., Any], folder: str, shard: list, *args) -> tuple[str, Any]:
    """A Ray task: a shard's work in the driver's folder (the manifests' relative paths hold
    there; on a cluster the project is shared at the same path), and the node it ran on."""
    keep_freed_memory()
    os.chdir(folder)
    return node_name(), work(shard, *args)
