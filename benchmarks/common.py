"""What the benchmark scripts share: where results go and how they are shown."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# The variables that choose torch's CPU kernels, and with them the last bits of a trained net
# (benchmarks/kernel_paths.py); a results file records the ones set.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def kernel_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}


def cpu_model() -> str:
    """The processor's name (machine kinds train different nets: benchmarks/kernel_paths.py)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def digest(tensors) -> str:
    """The SHA-256 (first 16 hex digits) of tensors' bytes: equal digests, equal numbers to the bit."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def results_name(name: str) -> str:
    """An argparse type for --out: a bare name, so that results land in benchmarks/results/."""
    if not name or Path(name).name != name or name.endswith(".json"):
        raise argparse.ArgumentTypeError(f"{name!r}: give a bare name; results go to benchmarks/results/<name>.json")
    return name


def write_results(name: str, report: dict, quiet: bool = False) -> Path:
    """Print the report (unless quiet) and keep it as benchmarks/results/<name>.json."""
    if not quiet:
        print(json.dumps(report, indent=2))
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def set_key(tree: dict, dotted: str, value) -> None:
    """tree["a"]["b"] = value for dotted "a.b"."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[leaf] = value


def get_key(tree: dict, dotted: str):
    """tree["a"]["b"] for dotted "a.b"; None where a level is missing."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """Command-line `-S key=value` settings (YAML values) applied to a params tree, in place."""
    for override in overrides:
        key, value = override.split("=", 1)
        set_key(params, key, yaml.safe_load(value))
    return params


def mean_std_worst(values: list[float], lower_is_better: bool = False) -> tuple[float, float, float]:
    """Mean, population std and the worst value over seeds."""
    worst = max(values) if lower_is_better else min(values)
    return statistics.mean(values), statistics.pstdev(values), worst
