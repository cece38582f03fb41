"""Training views for the tiny CLIP: scenes seen whole, cropped, masked and holed, with targets
saying how much of each concept is visible.

Concepts are the object classes followed by the background kinds. A view is a scene times a
mask (soft, as CLIMS's P is) and then a crop; its target for a concept is the fraction of that
object that stays visible, or for a background the visible area relative to `background_ref`
of the image. A CLIP trained on these targets has cosines that track visibility, and
object-shaped holes do not give an object away (they are targets of 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.synthetic import Scene, WorldSpec, render_background, render_scene, scene_rng

BACKGROUND_FRAMES = 0.1  # share of the training pool that shows one background and no object
VIEW_KINDS = ("whole", "object", "object_crop", "object_context", "hole", "background", "blob", "dimmed")
VIEW_PROBS = (0.10, 0.18, 0.10, 0.14, 0.20, 0.12, 0.06, 0.10)


@dataclass
class ScenePool:
    """Scenes rendered once, as tensors: the image and every pixel's class, instance and background."""

    images: torch.Tensor  # N,3,H,W uint8
    labels: torch.Tensor  # N,H,W int64 class ids
    instances: torch.Tensor  # N,H,W int64 instance ids (0 none)
    backgrounds: torch.Tensor  # N,H,W int64 background kinds
    instance_classes: list[list[int]]
    num_classes: int
    num_backgrounds: int
    contexts: tuple[int, ...]  # background id of each class's context (index = class id - 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def concept_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """One-hot visible concept per pixel: B, K+Bg, H, W (objects first, then backgrounds)."""
        labels, backgrounds = self.labels[idx], self.backgrounds[idx]
        objects = F.one_hot(labels, self.num_classes + 1)[..., 1:]
        ground = F.one_hot(backgrounds, self.num_backgrounds) * (labels == 0).unsqueeze(-1)
        return torch.cat([objects, ground], -1).permute(0, 3, 1, 2).float()


def _background_frame(spec: WorldSpec, rng: np.random.Generator) -> Scene:
    """A frame of one background kind with no object (CLIP also sees backgrounds alone)."""
    kind = int(rng.integers(len(spec.backgrounds)))
    zeros = np.zeros((spec.image_size, spec.image_size), np.uint8)
    return Scene(render_background(spec, kind, rng), zeros, zeros, zeros + kind, [], [])


def render_pool(spec: WorldSpec, count: int, seed: int, split: str, frames: float = 0.0) -> ScenePool:
    """`count` scenes, the last `frames` fraction of them background-only frames."""
    n_frames = int(round(count * frames))
    scenes = [render_scene(spec, scene_rng(seed, split, i)) for i in range(count - n_frames)]
    scenes += [_background_frame(spec, scene_rng(seed, f"{split}-frame", i)) for i in range(n_frames)]
    stack = lambda arrays: torch.from_numpy(np.stack(arrays))  # noqa: E731
    return ScenePool(
        images=stack([s.image for s in scenes]).permute(0, 3, 1, 2).contiguous(),
        labels=stack([s.label for s in scenes]).long(),
        instances=stack([s.instances for s in scenes]).long(),
        backgrounds=stack([s.background for s in scenes]).long(),
        instance_classes=[s.instance_classes for s in scenes],
        num_classes=len(spec.classes),
        num_backgrounds=len(spec.backgrounds),
        contexts=tuple(spec.context_id(c) for c in range(1, len(spec.classes) + 1)),
    )


def _blob(size: int, rng: np.random.Generator) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, ry, rx = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.4), rng.uniform(0.08, 0.4)
    return torch.from_numpy((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()


def _box(mask: torch.Tensor, margin: int = 2) -> tuple[float, float, float]:
    """Centre (x, y) and side of a square around a mask, in pixels."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    side = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1 + 2 * margin
    return (float(xs.min() + xs.max()) + 1) / 2, (float(ys.min() + ys.max()) + 1) / 2, float(side)


def _mask(pool: ScenePool, i: int, kind: str, rng: np.random.Generator):
    """One hard mask (H,W) of the given view kind for scene i, and a crop box for object crops."""
    label, inst, ground = pool.labels[i], pool.instances[i], pool.backgrounds[i]
    size = label.shape[-1]
    visible = [j for j in range(1, len(pool.instance_classes[i]) + 1) if bool((inst == j).any())]
    if kind in ("object", "object_crop", "object_context", "hole") and visible:
        j = int(rng.choice(visible))
        class_id = pool.instance_classes[i][j - 1]
        if kind == "object":
            return (inst == j).float(), None
        if kind == "object_crop":  # the tight crop of an object, unmasked
            return torch.ones(size, size), _box(inst == j)
        if kind == "object_context":
            return ((inst == j) | ((ground == pool.contexts[class_id - 1]) & (label == 0))).float(), None
        return (label != class_id).float(), None
    if kind == "background":
        kinds = torch.unique(ground[label == 0])
        return ((ground == int(rng.choice(kinds.numpy()))) & (label == 0)).float(), None
    if kind == "blob":
        return _blob(size, rng), None
    if kind == "dimmed":
        return torch.full((size, size), rng.uniform(0.15, 0.9)), None
    return torch.ones(size, size), None


def _jitter(masks: torch.Tensor, kinds: list[str], rng: np.random.Generator) -> torch.Tensor:
    """Make hard masks look like predicted ones: grown or shrunk edges, blur, partial strength.

    A hole is only ever grown: a shrunk hole shows the object's rim, and a rim captioned as
    part of the object would teach the CLIP to read objects from their silhouettes.
    """
    out = []
    for m, kind in zip(masks, kinds):
        m = m[None, None]
        r = int(rng.integers(0, 3))
        if rng.random() < 0.35 and r and kind != "hole":
            m = F.max_pool2d(m, 2 * r + 1, 1, r)  # dilate
        elif rng.random() < 0.25 and r:
            m = -F.max_pool2d(-m, 2 * r + 1, 1, r)  # erode
        if rng.random() < 0.5 and kind != "hole":
            m = F.avg_pool2d(m, 3, 1, 1, count_include_pad=False)
        if rng.random() < 0.25:
            m = m * rng.uniform(0.5, 1.0)
        if rng.random() < 0.2:
            m = m + (1 - m) * rng.uniform(0.0, 0.2)
        out.append(m[0, 0])
    return torch.stack(out)


def _crop_grid(boxes: list, size: int, rng: np.random.Generator, p_crop: float = 0.5):
    """Crops (the given boxes, else random zoom-ins) and flips as sampling grids; returns the grid
    and each view's area relative to the whole image."""
    batch = len(boxes)
    scale = np.where(rng.random(batch) < p_crop, rng.uniform(0.3, 1.0, batch), 1.0)
    flip = np.where(rng.random(batch) < 0.5, -1.0, 1.0)
    tx = rng.uniform(-1, 1, batch) * (1 - scale)
    ty = rng.uniform(-1, 1, batch) * (1 - scale)
    for n, box in enumerate(boxes):
        if box is not None:  # normalised coordinates: -1..1 across the image
            scale[n] = min(1.0, box[2] / size)
            tx[n], ty[n] = 2 * box[0] / size - 1, 2 * box[1] / size - 1
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.from_numpy(scale * flip)
    theta[:, 1, 1] = torch.from_numpy(scale)
    theta[:, 0, 2] = torch.from_numpy(tx)
    theta[:, 1, 2] = torch.from_numpy(ty)
    grid = F.affine_grid(theta.float(), [batch, 1, size, size], align_corners=False)
    return grid, torch.from_numpy(scale**2).float()


def visibility_targets(
    concepts: torch.Tensor, views: torch.Tensor, area_scale: torch.Tensor, num_classes: int, background_ref: float
) -> torch.Tensor:
    """Targets in [0,1]: visible share of each object; visible background area over the reference."""
    seen = views.sum((2, 3)) * area_scale[:, None]  # in pixels of the original image
    total = concepts.sum((2, 3))
    size = concepts.shape[-1] * concepts.shape[-2]
    objects = seen[:, :num_classes] / total[:, :num_classes].clamp(min=1.0)
    grounds = seen[:, num_classes:] / (background_ref * size)
    return torch.cat([objects, grounds], 1).clamp(0.0, 1.0)


def sample_views(pool: ScenePool, batch: int, rng: np.random.Generator, background_ref: float = 0.04):
    """A batch of training views: images (B,3,S,S in [0,1]) and visibility targets (B,K+Bg)."""
    idx = torch.from_numpy(rng.integers(0, len(pool), batch))
    kinds = rng.choice(len(VIEW_KINDS), batch, p=VIEW_PROBS)
    kinds = [VIEW_KINDS[k] for k in kinds]
    masks, boxes = zip(*[_mask(pool, int(i), kind, rng) for i, kind in zip(idx, kinds)])
    masks = _jitter(torch.stack(masks), kinds, rng).unsqueeze(1)
    images = pool.images[idx].float() / 255.0
    concepts = pool.concept_maps(idx)
    grid, area_scale = _crop_grid(list(boxes), images.shape[-1], rng)
    views = F.grid_sample(images * masks, grid, mode="bilinear", align_corners=False)
    seen = F.grid_sample(concepts * masks, grid, mode="bilinear", align_corners=False)
    return views, visibility_targets(concepts, seen, area_scale, pool.num_classes, background_ref)
