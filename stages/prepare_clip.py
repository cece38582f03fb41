"""DVC stage prepare_clip: the frozen CLIP, its cached text embeddings, and its zero-shot report."""
from pipeline import layout, tracking
from pipeline.clip.prepare import prepare_clip
from pipeline.io import atomic_dir
from pipeline.report import write_metrics
from pipeline.stage import run_stage

# the synthetic world's report (pipeline.clip.probes.clip_report), then a real dataset's (dataset_report)
REPORTED = ("object_top1", "object_top1_masked", "background_top1", "background_top1_masked", "context_margin", "hole_margin",
            "cos_present_mean", "cos_absent_mean", "cos_background_p50", "cos_background_p99")


def main(params):
    with tracking.stage_run("prepare_clip", params, sections=("dataset", "clip")) as run:
        losses: dict[str, float] = {}

        def log_loss(step, loss):
            losses[step] = loss
            if (step + 1) % 25 == 0:
                run.log_metrics({"train_loss": sum(losses.values()) / len(losses)}, step=step + 1)
                losses.clear()

        with atomic_dir(layout.CLIP_DIR) as out:
            metrics = prepare_clip(params, out, previous=layout.CLIP_DIR, log_loss=log_loss)
        write_metrics(run, "clip", metrics)
        run.log_metrics(metrics)
        random = params.clip.source == "tiny" and not params.clip.train.steps
        print(f"{'tiny CLIP' if params.clip.source == 'tiny' else 'CLIP'} zero-shot report"
              f"{' (random weights: a plumbing check)' if random else ''}:")
        for key in REPORTED:
            if key in metrics:
                print(f"  {key:24s} {metrics[key]:.3f}")


if __name__ == "__main__":
    run_stage(main)
