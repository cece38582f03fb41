"""DVC stage eval_seg: val mIoU of the segmentation net (multi-scale + flip, optional CRF)."""
import numpy as np
from PIL import Image

from pipeline import layout, tracking
from pipeline.data.manifest import read_manifest
from pipeline.io import atomic_path
from pipeline.nets.deeplab import load_seg_net
from pipeline.precision import prepared_net, stage_device
from pipeline.report import write_curve, write_metrics
from pipeline.scoring import context_ids, side_by_side, summarise, with_ground_truth
from pipeline.seg.evaluate import confusion_image, predict_labels, score_predictions
from pipeline.stage import run_stage


def main(params):
    cfg = params.eval_seg
    with tracking.stage_run("eval_seg", params, sections=("eval_seg", "crf")) as run:
        dist = params.distributed
        net = prepared_net(load_seg_net(layout.SEG_NET_DIR, stage_device(dist.use_gpu))[0], dist.precision)
        records = with_ground_truth(read_manifest(layout.manifest_path(layout.VAL)))
        predictions = predict_labels(net, records, cfg.scales, cfg.batch_size, params.crf if cfg.crf else None, dist.precision)
        names = params.dataset.class_names
        totals, shown = score_predictions(predictions, len(names), context_ids(params.dataset), cfg.overlays)
        metrics, _ = summarise(totals, np.zeros(1), names)
        metrics.pop("best_threshold")
        labels = ["background", *names]
        matrix = confusion_image(totals.confusion[0], labels)
        for record, label in shown:  # first: a failure here leaves no metrics behind
            run.log_image(side_by_side(record, label), f"overlays/{record.image_id}.png")
        run.log_image(matrix, "confusion.png")
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        write_curve(layout.PLOTS_DIR / "segmentation_confusion.csv",
                    [{"actual": a, **{p: int(n) for p, n in zip(labels, row)}} for a, row in zip(labels, totals.confusion[0])])
        with atomic_path(layout.PLOTS_DIR / "segmentation_confusion.png") as tmp:
            Image.fromarray(matrix).save(tmp, format="PNG")
        write_metrics(run, "segmentation", {"images": len(records), **metrics})
        print(f"segmentation (val, {len(records)} images): mIoU {metrics['miou']:.1f}")


if __name__ == "__main__":
    run_stage(main)
