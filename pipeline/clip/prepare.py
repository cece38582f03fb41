"""The prepare_clip stage's work: train the tiny CLIP (or load a pretrained one), cache the
text embeddings of every prompt later stages need, and report how good a supervisor it is."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from pipeline.clip import model as clip_model
from pipeline.clip.probes import clip_report
from pipeline.clip.train import train_tiny_clip
from pipeline.clip.views import BACKGROUND_FRAMES, render_pool
from pipeline.data.prepare import world_spec
from pipeline.params import Params


def prompts(template: str, names: list[str]) -> list[str]:
    return [template.format(name) for name in names]


def prepare_clip(params: Params, out: Path, log_loss=None) -> dict[str, float]:
    """Write the CLIP folder `out`; returns the figures for metrics/clip.json."""
    dataset, cfg = params.dataset, params.clip
    template = dataset.prompt_template
    spec = world_spec(dataset, cfg.train.cooccurrence if cfg.source == "tiny" else None)
    world_prompts = prompts(template, list(spec.classes) + list(spec.backgrounds))
    metrics: dict[str, float] = {}
    state_dict = None
    if cfg.source == "tiny":
        torch.manual_seed(cfg.train.seed)
        model = clip_model.build_tiny(cfg.model_name, cfg.architecture)
        clip = clip_model.wrap(model, cfg.model_name)
        pool = render_pool(spec, cfg.train.pool_size, cfg.train.seed, "clip", frames=BACKGROUND_FRAMES)
        start = time.perf_counter()
        losses = train_tiny_clip(clip, pool, world_prompts, cfg.train, on_step=log_loss)
        metrics["train_seconds"] = time.perf_counter() - start
        metrics["train_final_loss"] = sum(losses[-20:]) / max(1, len(losses[-20:]))
        state_dict = model.state_dict()
        meta = {
            "source": "tiny",
            "model_name": cfg.model_name,
            "open_clip_config": clip_model.tiny_open_clip_config(cfg.architecture),
            "weights": clip_model.WEIGHTS_FILE,
        }
        eval_scenes, seed = cfg.train.eval_scenes, cfg.train.seed
    else:
        model = clip_model.load_pretrained(cfg.model_name, cfg.weights)
        clip = clip_model.wrap(model, cfg.model_name)
        meta = {"source": "pretrained", "model_name": cfg.model_name, "weights": str(Path(cfg.weights).resolve())}
        eval_scenes, seed = cfg.eval_scenes, 0
    clip_model.freeze(clip.model)
    meta.update(image_size=clip.image_size, mean=clip.mean.flatten().tolist(), std=clip.std.flatten().tolist(),
                prompt_template=template)

    class_prompts = prompts(template, dataset.class_names)
    background_prompts = prompts(template, dataset.background_prompt_names)
    texts = {
        "class_names": dataset.class_names,
        "class_prompts": class_prompts,
        "class_embeddings": clip.encode_texts(class_prompts),
        "background_names": dataset.background_prompt_names,
        "background_prompts": background_prompts,
        "background_embeddings": clip.encode_texts(background_prompts),
    }
    eval_pool = render_pool(spec, eval_scenes, seed, "clip-eval")
    world_texts = clip.encode_texts(world_prompts)
    metrics.update(clip_report(clip, spec, eval_pool, world_texts[: len(spec.classes)], world_texts[len(spec.classes) :]))
    clip_model.save_clip(out, meta, texts, state_dict)
    return metrics
