"""DVC stage prepare_data: render the synthetic world (images, masks, manifests, preview)."""
import numpy as np
from PIL import Image

from pipeline import layout, tracking
from pipeline.data.prepare import render_splits
from pipeline.io import atomic_dir, write_json
from pipeline.stage import run_stage


def main(params):
    with tracking.stage_run("prepare_data", params, sections=("dataset",)) as run:
        with atomic_dir(layout.DATA_DIR) as out:
            metrics = render_splits(params.dataset, out, final=layout.DATA_DIR)
        write_json(layout.METRICS_DIR / "data.json", metrics)
        run.log_metrics(metrics)
        run.log_image(np.asarray(Image.open(layout.DATA_DIR / "preview.png")), "preview.png")
        print(f"rendered {metrics['train_images']} train + {metrics['val_images']} val images into {layout.DATA_DIR}/")


if __name__ == "__main__":
    run_stage(main)
