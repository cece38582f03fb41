"""Fault injection for the Ray Train tests: a worker function that dies once, mid-run."""
import os
import sys
import time
from pathlib import Path

from ray import cloudpickle


def dying_once(worker, after_epoch: int, marker: Path):
    """`worker` (a Ray Train loop function) whose last rank exits the process once, right after
    reporting epoch `after_epoch` with its checkpoint; `marker` records that it did. The wait
    gives Ray Train's controller time to take that epoch's checkpoint first."""

    def wrapped(config: dict) -> None:
        import ray.train

        report = ray.train.report

        def report_then_die(metrics, *args, **kwargs):
            report(metrics, *args, **kwargs)
            context = ray.train.get_context()
            last_rank = context.get_world_rank() == context.get_world_size() - 1
            if metrics.get("epoch") == after_epoch and last_rank and not marker.exists():
                marker.touch()
                time.sleep(5)
                os._exit(1)

        ray.train.report = report_then_die
        try:
            worker(config)
        finally:
            ray.train.report = report

    return wrapped


def counting_starts(worker, log: Path):
    """`worker` that appends a line to `log` each time a worker process starts it."""

    def wrapped(config: dict) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        worker(config)

    return wrapped



def refusing_work(items: list) -> None:
    """Per-image work (a Ray task's) that finds its first image unreadable."""
    from pipeline.errors import UserError

    raise UserError(f"{items[0]}: unreadable image (a bad file)")

# The workers cannot import the tests folder: ship this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
