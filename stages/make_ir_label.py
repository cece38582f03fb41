"""DVC stage make_ir_label: CRF-refined confident foreground/background from the CAMs (IRN's IR labels)."""
from pipeline import layout, tracking
from pipeline.data.manifest import read_manifest
from pipeline.report import write_metrics
from pipeline.irn.ir_label import ir_label_quality, make_ir_labels
from pipeline.stage import run_stage


def main(params):
    cfg = params.make_ir_label
    with tracking.stage_run("make_ir_label", params, sections=("make_ir_label", "crf", "distributed")) as run:
        records = read_manifest(layout.manifest_path(layout.TRAIN))
        written = make_ir_labels(records, layout.cams_dir(cfg.cams), layout.IR_LABELS_DIR, cfg, params.crf, params.distributed)
        scored = read_manifest(layout.manifest_path(layout.TRAIN_EVAL))
        quality = ir_label_quality(scored, layout.IR_LABELS_DIR, len(params.dataset.class_names))
        write_metrics(run, "ir_labels", {"images": len(scored), **quality})
        run.log_metrics({"written": written, **quality})
        figures = f": {quality['coverage']:.1f} % of pixels labelled, mIoU there {quality['miou']:.1f}" if quality else ""
        print(f"make_ir_label: {written} IR labels written, {len(records) - written} already there{figures}")


if __name__ == "__main__":
    run_stage(main)
