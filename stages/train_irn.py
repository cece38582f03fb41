"""DVC stage train_irn: IRN's boundary branch on a frozen backbone, from the IR labels, on Ray Train."""
from pipeline import layout, tracking
from pipeline.io import atomic_dir
from pipeline.irn.train import train_irn
from pipeline.report import log_history
from pipeline.stage import run_stage


def main(params):
    source = params.train_irn.features_from
    with tracking.stage_run("train_irn", params, sections=("backbone", "distributed", "train_irn")) as run:
        with atomic_dir(layout.IRN_DIR) as out:
            history = train_irn(params, layout.manifest_path(layout.TRAIN), layout.IR_LABELS_DIR, out,
                                init_net=None if source == "backbone" else layout.net_dir(source))
        log_history(run, "train_irn", history)


if __name__ == "__main__":
    run_stage(main)
