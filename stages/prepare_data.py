"""DVC stage prepare_data: the manifests (rendering the synthetic world, or reading VOC/COCO) and a preview."""
import numpy as np
from PIL import Image

from pipeline import layout, tracking
from pipeline.data.prepare import prepare_splits
from pipeline.io import atomic_dir
from pipeline.report import write_metrics
from pipeline.stage import run_stage


def main(params):
    with tracking.stage_run("prepare_data", params, sections=("dataset",)) as run:
        with atomic_dir(layout.DATA_DIR) as out:
            metrics = prepare_splits(params.dataset, out, final=layout.DATA_DIR)
        write_metrics(run, "data", metrics)
        run.log_metrics(metrics)
        run.log_image(np.asarray(Image.open(layout.DATA_DIR / "preview.png")), "preview.png")
        made = "rendered" if params.dataset.name == "synthetic" else f"listed {params.dataset.name}'s"
        print(f"{made} {metrics['train_images']} training images ({metrics['train_eval_images']} of them scored) "
              f"and {metrics['val_images']} val images in {layout.DATA_DIR}/")


if __name__ == "__main__":
    run_stage(main)
