"""Where the stages put their outputs (dvc.yaml names the same paths), and the repository they
run in."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

DATA_DIR = Path("data")
CLIP_DIR = Path("artifacts/clip")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
CAM_NETS = ("baseline", "clims")


# The manifests prepare_data writes: the training images (every net trains on them, and each gets
# its CAMs, IR labels and pseudo labels), the part of them whose CAMs and pseudo labels are scored
# (VOC: the 1464 of train inside train_aug; the synthetic world: all), and the segmentation val split.
TRAIN, TRAIN_EVAL, VAL = "train", "train_eval", "val"


def manifest_path(split: str, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{split}.parquet"


def net_dir(kind: str) -> Path:
    """A trained CAM net (baseline or CLIMS): weights.pt + net.json."""
    return Path("artifacts") / f"net_{kind}"


def cams_dir(kind: str) -> Path:
    """One CAM file per training image, from that net."""
    return Path("artifacts") / f"cams_{kind}"


PARAMS_CHECKED = Path("artifacts/params.ok")  # written by check_params; every other stage depends on it
IR_LABELS_DIR = Path("artifacts/ir_labels")  # one PNG per training image, 255 = unsure
IRN_DIR = Path("artifacts/net_irn")  # the boundary net: weights.pt + net.json
PSEUDO_LABELS_DIR = Path("artifacts/pseudo_labels")  # one PNG per training image
SEG_NET_DIR = Path("artifacts/net_seg")  # DeepLabV3 trained on the pseudo labels


def git(*args: str) -> str:
    """git's output, or "" outside a repository or without git."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def repo_root() -> Path:
    return Path(git("rev-parse", "--show-toplevel").strip() or os.getcwd()).resolve()
