"""DVC stage eval_cam (baseline or clims): mIoU over background thresholds, context leak, P's mIoU."""
from pipeline import layout, tracking
from pipeline.cam.evaluate import evaluate_cams, overlay
from pipeline.report import write_curve, write_metrics
from pipeline.data.manifest import read_manifest
from pipeline.stage import run_stage


def main(params, kind: str):
    with tracking.stage_run(f"eval_cam_{kind}", params, sections=("eval_cam",)) as run:
        records = read_manifest(layout.manifest_path(layout.TRAIN_EVAL))
        metrics, curve = evaluate_cams(records, layout.cams_dir(kind), params.dataset, params.eval_cam)
        for record in records[: params.eval_cam.overlays]:  # first: a failure here leaves no metrics behind
            image = overlay(record, layout.cams_dir(kind), "high_res", metrics["best_threshold"])
            run.log_image(image, f"overlays/{record.image_id}.png")
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for row in curve:
            run.log_metrics({k: v for k, v in row.items() if k != "threshold"}, step=round(100 * row["threshold"]))
        write_curve(layout.PLOTS_DIR / f"cam_{kind}_thresholds.csv", curve)
        write_metrics(run, f"cam_{kind}", metrics)
        leak = f", context leak {metrics['context_leak']:.1f} %" if "context_leak" in metrics else ""
        print(f"CAM {kind}: mIoU {metrics['miou']:.1f} at threshold {metrics['best_threshold']:.2f}{leak}; "
              f"P mIoU {metrics['mask_miou']:.1f} at {metrics['mask_best_threshold']:.2f}")


if __name__ == "__main__":
    run_stage(main, choices=layout.CAM_NETS)
