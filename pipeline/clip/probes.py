"""How well a CLIP can supervise CLIMS, measured on held-out renders of the synthetic world
(clip_report; a real dataset's images: dataset_report).

- object_top1 / object_top1_masked: zero-shot over the object prompts, for the tight crop of
  each object and for the scene masked to the object (as CLIMS's fg = P * image).
- background_top1 / background_top1_masked: zero-shot over the background prompts, for a frame
  of one background kind and for the scene masked to each background region (>= 5 % of it).
- context_margin: cosine with the context prompt of an object masked together with its
  context, minus that of the object masked alone (CBS needs this to fire); left out, with the
  other context figures, where no held-out object sits on its context (eval_context_pairs 0).
- hole_margin: mean cosine with the class prompt of tight object crops, minus the 95th
  percentile of that cosine for scenes with the class cut out by its exact mask (BTM needs it).
- part_margin: cosine with the class prompt of an object masked whole, minus that of its
  distinctive part masked alone (a head, a sail): OTM needs it to spread P over the body.
- body_margin: cosine with the class prompt of the scene with only the part cut out, minus that
  of the scene with the whole object cut out: BTM needs it to see a body P left behind.
- cosine quantiles of objects masked alone against background prompts, from which CBS's tau
  is set for this CLIP.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.clip.model import FrozenClip
from pipeline.clip.views import ScenePool
from pipeline.data.synthetic import WorldSpec, render_background


def _cosines(clip: FrozenClip, images: torch.Tensor, masks: torch.Tensor | None, texts: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            m = None if masks is None else masks[start : start + 256]
            out.append(clip.encode_images(images[start : start + 256], m) @ texts.T)
    return torch.cat(out) if out else torch.zeros(0, texts.shape[0])


def _tight_crop(image: torch.Tensor, mask: torch.Tensor, margin: int = 2) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    size = mask.shape[-1]
    y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, size)
    x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, size)
    crop = image[:, y0:y1, x0:x1][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]


def clip_report(
    clip: FrozenClip, spec: WorldSpec, pool: ScenePool, class_texts: torch.Tensor, background_texts: torch.Tensor
) -> dict[str, float]:
    """All figures above for a CLIP, given the embeddings of its class and background prompts."""
    images = pool.images.float() / 255.0
    crops, object_masks, context_masks, holes, instance_class, instance_scene = [], [], [], [], [], []
    part_masks, with_part = [], []
    region_masks, region_kind, region_scene = [], [], []
    for i in range(len(pool)):
        label, inst, ground = pool.labels[i], pool.instances[i], pool.backgrounds[i]
        for j, class_id in enumerate(pool.instance_classes[i], start=1):
            mask = inst == j
            if mask.sum() < 4:
                continue
            context = (ground == pool.contexts[class_id - 1]) & (label == 0)
            crops.append(_tight_crop(images[i], mask))
            object_masks.append(mask)
            context_masks.append(mask | context if context.sum() >= 8 else None)
            holes.append(label != class_id)
            part = mask & pool.parts[i]
            if part.sum() >= 2 and (mask & ~part).sum() >= 2:
                part_masks.append(part)
                with_part.append(len(instance_class))
            instance_class.append(class_id - 1)
            instance_scene.append(i)
        for kind in torch.unique(ground[label == 0]).tolist():
            region = (ground == kind) & (label == 0)
            if region.float().mean() >= 0.05:
                region_masks.append(region)
                region_kind.append(kind)
                region_scene.append(i)

    as_masks = lambda ms: torch.stack(ms).float().unsqueeze(1)  # noqa: E731
    cls = torch.tensor(instance_class)
    scenes = images[instance_scene]
    crop_cos = _cosines(clip, torch.stack(crops), None, class_texts)
    masked_cos = _cosines(clip, scenes, as_masks(object_masks), class_texts)
    hole_cos = _cosines(clip, scenes, as_masks(holes), class_texts)
    alone_bg = _cosines(clip, scenes, as_masks(object_masks), background_texts)

    with_context = [n for n, m in enumerate(context_masks) if m is not None]
    context = {}
    if with_context:  # a world without co-occurrence may place no held-out object on its context
        rows = torch.arange(len(with_context))
        context_kind = torch.tensor([pool.contexts[instance_class[n]] for n in with_context])
        together = _cosines(clip, scenes[with_context], as_masks([context_masks[n] for n in with_context]),
                            background_texts)[rows, context_kind]
        alone = alone_bg[with_context][rows, context_kind]
        context = {"context_margin": float((together - alone).mean()), "cos_context_together_mean": float(together.mean()),
                   "cos_context_alone_mean": float(alone.mean())}

    frames = torch.stack(
        [
            torch.from_numpy(render_background(spec, kind, np.random.default_rng([kind, n]))).permute(2, 0, 1)
            for kind in range(len(spec.backgrounds))
            for n in range(max(4, len(pool) // 20))
        ]
    ).float() / 255.0
    frame_kind = torch.arange(len(spec.backgrounds)).repeat_interleave(frames.shape[0] // len(spec.backgrounds))
    frame_cos = _cosines(clip, frames, None, background_texts)
    region_cos = _cosines(clip, images[region_scene], as_masks(region_masks), background_texts)

    n = torch.arange(len(cls))
    own_crop = crop_cos[n, cls]
    part_cls = cls[with_part]
    part_alone = _cosines(clip, scenes[with_part], as_masks(part_masks), class_texts)[torch.arange(len(with_part)), part_cls]
    without_part = _cosines(clip, scenes[with_part], 1 - as_masks(part_masks), class_texts)[torch.arange(len(with_part)), part_cls]
    # Object alone vs background prompts whose background it does not show: where CBS must stay silent.
    silent = alone_bg.clone()
    silent[torch.arange(len(cls)), torch.tensor([pool.contexts[c] for c in instance_class])] = float("nan")
    silent = silent[~silent.isnan()]
    return {
        "object_top1": float((crop_cos.argmax(1) == cls).float().mean()),
        "object_top1_masked": float((masked_cos.argmax(1) == cls).float().mean()),
        "background_top1": float((frame_cos.argmax(1) == frame_kind).float().mean()),
        "background_top1_masked": float((region_cos.argmax(1) == torch.tensor(region_kind)).float().mean()),
        **context,
        "hole_margin": float(own_crop.mean() - torch.quantile(hole_cos[n, cls], 0.95)),
        "cos_object_crop_mean": float(own_crop.mean()),
        "cos_object_masked_mean": float(masked_cos[n, cls].mean()),
        "cos_hole_p95": float(torch.quantile(hole_cos[n, cls], 0.95)),
        "part_margin": float((masked_cos[n, cls][with_part] - part_alone).mean()),
        "body_margin": float((without_part - hole_cos[n, cls][with_part]).mean()),
        "cos_part_alone_mean": float(part_alone.mean()),
        "cos_without_part_mean": float(without_part.mean()),
        "cos_object_vs_background_p95": float(torch.quantile(silent, 0.95)),
        "cos_object_vs_background_p99": float(torch.quantile(silent, 0.99)),
        "eval_instances": len(cls),
        "eval_context_pairs": len(with_context),
        "eval_background_regions": len(region_kind),
    }


def dataset_report(clip: FrozenClip, records: list, class_texts: torch.Tensor, background_texts: torch.Tensor) -> dict[str, float]:
    """Zero-shot figures on a real dataset's images (whole images resized to the CLIP's input):

    - object_top1: the share of images whose best class prompt names one of their classes;
    - cos_present_mean / cos_absent_mean: cosine with the prompts of an image's classes / of the others;
    - cos_background_p50 / cos_background_p99: cosines of whole images with the background
      prompts, the scale on which CBS's tau sits (the reference: 0.26 on VOC with ViT-B/32).
    """
    from pipeline.data.images import load_image

    records = [r for r in records if r.class_ids]
    size = clip.image_size
    images = torch.stack([F.interpolate(load_image(r.image_path)[None], size=(size, size), mode="bilinear",
                                        align_corners=False)[0] for r in records])
    cos = _cosines(clip, images, None, class_texts)
    present = torch.zeros_like(cos, dtype=torch.bool)
    for n, record in enumerate(records):
        present[n, [c - 1 for c in record.class_ids]] = True
    background = _cosines(clip, images, None, background_texts).flatten()
    return {
        "object_top1": float(present[torch.arange(len(records)), cos.argmax(1)].float().mean()),
        "cos_present_mean": float(cos[present].mean()),
        "cos_absent_mean": float(cos[~present].mean()),
        "cos_background_p50": float(torch.quantile(background, 0.5)),
        "cos_background_p99": float(torch.quantile(background, 0.99)),
        "eval_images": len(records),
    }
