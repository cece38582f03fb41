"""DVC stage train_clims: the CLIMS net, from the baseline's weights, supervised by the frozen CLIP."""
from pipeline import layout, tracking
from pipeline.cam.ray_train import train
from pipeline.cam.tau import resolve_tau
from pipeline.report import log_history
from pipeline.io import atomic_dir
from pipeline.stage import run_stage


def main(params):
    sections = ("dataset", "backbone", "distributed", "train_clims", "clims_loss")
    with tracking.stage_run("train_clims", params, sections=sections) as run:
        tau, tau_figures = resolve_tau(params.clims_loss, layout.METRICS_DIR / "clip.json")
        with atomic_dir(layout.net_dir("clims")) as out:
            history = train(params, "clims", layout.manifest_path(layout.TRAIN), out, init_net=layout.net_dir("baseline"),
                            clip_dir=layout.CLIP_DIR, tau=tau)
        log_history(run, "train_clims", history, extra={"tau": tau, **tau_figures})


if __name__ == "__main__":
    run_stage(main)
