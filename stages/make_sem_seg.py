"""DVC stage make_sem_seg: pseudo labels by the random walk of the CAMs over the IRN's affinities."""
from pipeline import layout, tracking
from pipeline.data.manifest import read_manifest
from pipeline.irn.sem_seg import make_sem_seg
from pipeline.stage import run_stage


def main(params):
    with tracking.stage_run("make_sem_seg", params, sections=("make_sem_seg", "crf", "distributed")) as run:
        records = read_manifest(layout.manifest_path(layout.TRAIN))
        cams = layout.cams_dir(params.make_ir_label.cams)
        written = make_sem_seg(records, layout.IRN_DIR, cams, layout.PSEUDO_LABELS_DIR, params.make_sem_seg, params.crf,
                               params.distributed)
        run.log_metrics({"images": len(records), "written": written})
        print(f"make_sem_seg: {written} pseudo labels written, {len(records) - written} already there")


if __name__ == "__main__":
    run_stage(main)
