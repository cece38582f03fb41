"""DVC stage train_cam: the baseline CAM net (GAP + multilabel soft-margin) on Ray Train."""
from pipeline import layout, tracking
from pipeline.cam.ray_train import train
from pipeline.report import log_history
from pipeline.io import atomic_dir
from pipeline.stage import run_stage


def main(params):
    with tracking.stage_run("train_cam", params, sections=("dataset", "backbone", "distributed", "train_cam")) as run:
        with atomic_dir(layout.net_dir("baseline")) as out:
            history = train(params, "baseline", layout.manifest_path(layout.TRAIN), out)
        log_history(run, "train_cam", history)


if __name__ == "__main__":
    run_stage(main)
