"""DVC stage eval_sem_seg: pseudo-label mIoU against the ground truth, beside the CAMs' per class."""
import json

from pipeline import layout, tracking
from pipeline.data.manifest import read_manifest
from pipeline.io import colorize, label_png_path, read_label
from pipeline.report import write_curve, write_metrics
from pipeline.scoring import evaluate_label_maps, side_by_side
from pipeline.stage import run_stage


def main(params):
    with tracking.stage_run("eval_sem_seg", params, sections=("eval_sem_seg",)) as run:
        records = read_manifest(layout.manifest_path(layout.TRAIN_EVAL))
        metrics = evaluate_label_maps(records, layout.PSEUDO_LABELS_DIR, params.dataset)
        for record in records[: params.eval_sem_seg.overlays]:  # first: a failure here leaves no metrics behind
            ir_label = colorize(read_label(label_png_path(layout.IR_LABELS_DIR, record.image_id)))
            run.log_image(side_by_side(record, read_label(label_png_path(layout.PSEUDO_LABELS_DIR, record.image_id)), ir_label),
                          f"overlays/{record.image_id}.png")
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        cam_metrics = layout.METRICS_DIR / f"cam_{params.make_ir_label.cams}.json"
        cam_iou = json.loads(cam_metrics.read_text())["per_class_iou"] if cam_metrics.is_file() else {}
        write_curve(layout.PLOTS_DIR / "pseudo_labels_per_class.csv",
                    [{"class": name, "cam": cam_iou.get(name), "pseudo_label": iou} for name, iou in metrics["per_class_iou"].items()])
        write_metrics(run, "pseudo_labels", metrics)
        leak = f", context leak {metrics['context_leak']:.1f} %" if "context_leak" in metrics else ""
        print(f"pseudo labels: mIoU {metrics['miou']:.1f}{leak}")


if __name__ == "__main__":
    run_stage(main)
