"""DVC stage train_seg: DeepLabV3 on the pseudo labels, on Ray Train."""
from pipeline import layout, tracking
from pipeline.io import atomic_dir
from pipeline.report import log_history
from pipeline.seg.train import train_seg
from pipeline.stage import run_stage


def main(params):
    source = params.train_seg.features_from
    with tracking.stage_run("train_seg", params, sections=("backbone", "distributed", "train_seg")) as run:
        with atomic_dir(layout.SEG_NET_DIR) as out:
            history = train_seg(params, layout.manifest_path(layout.TRAIN), layout.PSEUDO_LABELS_DIR, out,
                                init_net=None if source == "backbone" else layout.net_dir(source))
        log_history(run, "train_seg", history)


if __name__ == "__main__":
    run_stage(main)
