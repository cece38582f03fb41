"""The prepare_clip stage's work: train the tiny CLIP (or load a pretrained one), cache the
text embeddings of every prompt later stages need, and report how good a supervisor it is."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from pipeline.clip import model as clip_model
from pipeline.clip import shipped
from pipeline.clip.probes import clip_report, dataset_report
from pipeline.clip.train import train_tiny_clip
from pipeline.clip.views import BACKGROUND_FRAMES, render_pool
from pipeline.codedeps import code_digest
from pipeline.data.prepare import world_spec
from pipeline.data.synthetic import WorldSpec
from pipeline.data.real import split_records
from pipeline.params import Params

TRAINING_CODE = "pipeline.clip.train"  # a change of it or of anything it imports retrains the tiny CLIP


def prompts(template: str, names: list[str]) -> list[str]:
    return [template.format(name) for name in names]


def clip_world(dataset, train) -> WorldSpec:
    """The world the tiny CLIP learns from and is probed on: the dataset's, with the CLIP's own
    co-occurrence and clutter (a web-scale CLIP has seen birds whole, captioned as birds, and
    never learned that a bird's body without its head is nothing)."""
    return world_spec(dataset, train.cooccurrence, train.clutter)


def probe_world(clip, spec: WorldSpec, template: str, count: int, seed: int) -> dict[str, float]:
    """clip_report on `count` held-out renders of `spec` (seeded by `seed`), with its own prompts."""
    texts = clip.encode_texts(prompts(template, list(spec.classes) + list(spec.backgrounds)))
    pool = render_pool(spec, count, seed, "clip-eval")
    return clip_report(clip, spec, pool, texts[: len(spec.classes)], texts[len(spec.classes) :])


def trained_from(params: Params) -> dict:
    """Everything the tiny CLIP's weights depend on: its settings, its world, its prompts and its
    training code, as clip.json reads it back (tuples as lists). Whether the shipped CLIP is taken
    over changes nothing that training would do."""
    cfg = params.clip
    spec = clip_world(params.dataset, cfg.train)
    world_prompts = prompts(params.dataset.prompt_template, list(spec.classes) + list(spec.backgrounds))
    inputs = {"clip": cfg.model_dump(mode="json", exclude={"shipped"}), "world": dataclasses.asdict(spec),
              "prompts": world_prompts, "code": code_digest(TRAINING_CODE)}
    return json.loads(json.dumps(inputs))


def _trained_before(previous: Path | None, inputs: dict, shipped_ok: bool) -> tuple[dict, dict] | None:
    """(state dict, clip.json) of the tiny CLIP in `previous` if it was trained from the same
    `inputs` (trained_from), else None; a CLIP that was the shipped one only if `shipped_ok`."""
    meta_path = previous / clip_model.META_FILE if previous else None
    if not meta_path or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("trained_from") != inputs or not (previous / clip_model.WEIGHTS_FILE).is_file():
        return None
    if meta.get("shipped") and not shipped_ok:
        return None
    return torch.load(previous / clip_model.WEIGHTS_FILE, map_location="cpu", weights_only=True), meta


def _tiny_clip(params: Params, previous: Path | None, log_loss) -> tuple[torch.nn.Module, dict]:
    """The tiny CLIP and its clip.json entries. It learns from renders of the synthetic world
    (steps 0 keeps its random initialisation: a plumbing check on any dataset). DVC reruns
    prepare_clip for any change of the dataset section, but the CLIP depends only on what its
    renders look like and say, not on the data split's seed, counts or co-occurrence: a CLIP
    trained from the same settings is taken over from the `previous` folder, or else the one
    shipped with the code (pipeline/clip/shipped.py)."""
    cfg = params.clip
    torch.manual_seed(cfg.train.seed)
    model = clip_model.build_tiny(cfg.model_name, cfg.architecture)
    meta = {"source": "tiny", "model_name": cfg.model_name, "weights": clip_model.WEIGHTS_FILE,
            "open_clip_config": clip_model.tiny_open_clip_config(cfg.architecture)}
    if not cfg.train.steps:
        return model, meta
    meta["trained_from"] = trained_from(params)
    before = _trained_before(previous, meta["trained_from"], shipped_ok=cfg.shipped)
    if before:
        model.load_state_dict(before[0])
        meta.update({key: before[1][key] for key in ("training", "shipped") if key in before[1]})
        print(f"tiny CLIP: trained from the same settings before; taken over from {previous}")
        return model, meta
    if cfg.shipped and (training := shipped.take_over(meta["trained_from"], model)):
        meta.update(training=training, shipped=True)
        print(f"tiny CLIP: taken over from {shipped.TENSORS.name}, shipped with the code and trained from these "
              f"settings (clip.shipped=false trains it here, 5-6 minutes on 2 cores)")
        return model, meta
    spec = clip_world(params.dataset, cfg.train)
    pool = render_pool(spec, cfg.train.pool_size, cfg.train.seed, "clip", frames=BACKGROUND_FRAMES)
    start = time.perf_counter()
    losses = train_tiny_clip(clip_model.wrap(model, cfg.model_name), pool, meta["trained_from"]["prompts"], cfg.train,
                             on_step=log_loss)
    meta["training"] = {"seconds": time.perf_counter() - start, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
    return model, meta


def prepare_clip(params: Params, out: Path, previous: Path | None = None, log_loss=None) -> dict[str, float]:
    """Write the CLIP folder `out` (`previous`: this stage's last folder); returns the figures for
    metrics/clip.json."""
    dataset, cfg = params.dataset, params.clip
    template = dataset.prompt_template
    if cfg.source == "tiny":
        model, meta = _tiny_clip(params, previous, log_loss)
        state_dict, eval_count, seed = model.state_dict(), cfg.train.eval_scenes, cfg.train.seed
    else:
        model = clip_model.load_pretrained(cfg.model_name, cfg.weights)
        meta = {"source": "pretrained", "model_name": cfg.model_name, "weights": str(Path(cfg.weights).resolve())}
        state_dict, eval_count, seed = None, cfg.eval_scenes, 0
    clip = clip_model.wrap(model, cfg.model_name)
    clip_model.freeze(clip.model)
    meta.update(image_size=clip.image_size, mean=clip.mean.flatten().tolist(), std=clip.std.flatten().tolist(),
                prompt_template=template)

    class_prompts = prompts(template, dataset.prompt_names)
    background_prompts = prompts(template, dataset.background_prompt_names)
    texts = {
        "class_names": dataset.class_names,
        "class_prompts": class_prompts,
        "class_embeddings": clip.encode_texts(class_prompts),
        "background_names": dataset.background_prompt_names,
        "background_prompts": background_prompts,
        "background_embeddings": clip.encode_texts(background_prompts),
    }
    metrics = {f"train_{key}": value for key, value in meta.get("training", {}).items()}
    if dataset.name == "synthetic":
        spec = clip_world(dataset, cfg.train) if cfg.source == "tiny" else world_spec(dataset)
        metrics.update(probe_world(clip, spec, template, eval_count, seed))
    else:
        records = split_records(dataset, dataset.eval_split, limit=eval_count)
        metrics.update(dataset_report(clip, records, texts["class_embeddings"], texts["background_embeddings"]))
    clip_model.save_clip(out, meta, texts, state_dict)
    return metrics
