"""DVC stage prepare_clip: the frozen CLIP, its cached text embeddings, and its zero-shot report."""
from pipeline import layout, tracking
from pipeline.clip.prepare import prepare_clip
from pipeline.io import atomic_dir, write_json
from pipeline.stage import run_stage

REPORTED = ("object_top1", "object_top1_masked", "background_top1", "background_top1_masked", "context_margin", "hole_margin")


def main(params):
    with tracking.stage_run("prepare_clip", params, sections=("dataset", "clip")) as run:
        losses: dict[str, float] = {}

        def log_loss(step, loss):
            losses[step] = loss
            if (step + 1) % 25 == 0:
                run.log_metrics({"train_loss": sum(losses.values()) / len(losses)}, step=step + 1)
                losses.clear()

        with atomic_dir(layout.CLIP_DIR) as out:
            metrics = prepare_clip(params, out, log_loss=log_loss)
        write_json(layout.METRICS_DIR / "clip.json", metrics)
        run.log_metrics(metrics)
        print("tiny CLIP zero-shot report:" if params.clip.source == "tiny" else "CLIP zero-shot report:")
        for key in REPORTED:
            print(f"  {key:24s} {metrics[key]:.3f}")


if __name__ == "__main__":
    run_stage(main)
