"""Training views for the tiny CLIP: scenes seen whole, cropped, masked and holed, with targets
saying how much of each concept is visible.

Concepts are the object classes followed by the background kinds. A view is a scene times a
mask (soft, as CLIMS's P is) and then a crop; its target for a concept rises with the share of
that object that stays visible (OBJECT_RAMP), or for a background with its visible area
(BACKGROUND_REF of the image counts as fully there). A CLIP trained on these targets has
cosines that track visibility, and object-shaped holes do not give an object away (they are
targets of 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.synthetic import Scene, WorldSpec, render_background, render_scene, scene_rng

# An object counts as absent below 20 % visible and as fully there from 70 %, linearly between:
# a rim or a dark ghost left by a loose hole is not the object, and a mask need not be
# pixel-perfect to show it. Without the ramp, partly visible objects made the CLIP hedge
# (crops scored 0.57, holes 0.54). The default of clip.train.object_ramp.
OBJECT_RAMP = (0.2, 0.7)
BACKGROUND_REF = 0.04  # a background counts as fully there from 4 % of the image
BACKGROUND_FRAMES = 0.1  # share of the training pool that shows one background and no object
VIEW_KINDS = ("whole", "object", "object_crop", "object_context", "hole", "background", "blob", "dimmed", "part")
VIEW_PROBS = (0.10, 0.16, 0.10, 0.14, 0.26, 0.12, 0.05, 0.07, 0.0)


def view_probs(part_views: float) -> tuple[float, ...]:
    """VIEW_PROBS with `part_views` of the views showing an object's part alone or its body alone
    (the parts world: the CLIP learns that a head is not the whole bird)."""
    return tuple(p * (1 - part_views) for p in VIEW_PROBS[:-1]) + (part_views,)


@dataclass
class ScenePool:
    """Scenes rendered once, as tensors: the image and every pixel's class, instance and background."""

    images: torch.Tensor  # N,3,H,W uint8
    labels: torch.Tensor  # N,H,W int64 class ids
    instances: torch.Tensor  # N,H,W int64 instance ids (0 none)
    backgrounds: torch.Tensor  # N,H,W int64 background kinds
    parts: torch.Tensor  # N,H,W bool, the objects' distinctive parts
    instance_classes: list[list[int]]
    instance_has_context: list[list[bool]]
    num_classes: int
    num_backgrounds: int
    contexts: tuple[int, ...]  # background id of each class's context (index = class id - 1)

    def __post_init__(self):
        # Lookup tables for sampling views without per-scene Python loops.
        most = max(1, max(len(c) for c in self.instance_classes))
        self.instance_class_table = torch.zeros(len(self), most, dtype=torch.long)
        self.context_instances = torch.zeros(len(self), most, dtype=torch.bool)
        for i, (classes, context) in enumerate(zip(self.instance_classes, self.instance_has_context)):
            self.instance_class_table[i, : len(classes)] = torch.tensor(classes, dtype=torch.long)
            self.context_instances[i, : len(context)] = torch.tensor(context, dtype=torch.bool)
        ids = torch.arange(1, most + 1).view(1, -1, 1, 1)
        self.visible_instances = (self.instances.unsqueeze(1) == ids).flatten(2).any(2)
        free = (self.labels == 0).unsqueeze(1)
        kinds = torch.arange(self.num_backgrounds).view(1, -1, 1, 1)
        self.grounds_present = ((self.backgrounds.unsqueeze(1) == kinds) & free).flatten(2).any(2)
        self.context_table = torch.tensor(self.contexts, dtype=torch.long)

    def __len__(self) -> int:
        return self.images.shape[0]

    def concept_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """One-hot visible concept per pixel: B, K+Bg, H, W (objects first, then backgrounds)."""
        labels, backgrounds = self.labels[idx], self.backgrounds[idx]
        concept = torch.where(labels > 0, labels - 1, self.num_classes + backgrounds)
        maps = torch.zeros(idx.shape[0], self.num_classes + self.num_backgrounds, *labels.shape[1:])
        return maps.scatter_(1, concept.unsqueeze(1), 1.0)


def _background_frame(spec: WorldSpec, rng: np.random.Generator) -> Scene:
    """A frame of one background kind with no object (CLIP also sees backgrounds alone)."""
    kind = int(rng.integers(len(spec.backgrounds)))
    zeros = np.zeros((spec.image_size, spec.image_size), np.uint8)
    return Scene(render_background(spec, kind, rng), zeros, zeros, zeros + kind, [], [], zeros.astype(bool))


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
        parts=stack([s.parts for s in scenes]),
        instance_classes=[s.instance_classes for s in scenes],
        instance_has_context=[s.instance_has_context for s in scenes],
        num_classes=len(spec.classes),
        num_backgrounds=len(spec.backgrounds),
        contexts=tuple(spec.context_id(c) for c in range(1, len(spec.classes) + 1)),
    )


def _pick(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One allowed column per row, uniformly at random (rows with none give column 0)."""
    scores = torch.rand(allowed.shape, generator=generator) + allowed.float()
    return scores.argmax(1)


def _blobs(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random ellipses, one per view."""
    centre, radius = torch.rand(2, batch, 2, generator=generator)
    centre, radius = 0.1 + 0.8 * centre, 0.08 + 0.32 * radius
    grid = (torch.arange(size) + 0.5) / size
    dy = (grid.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)) / radius[:, 0].view(-1, 1, 1)
    dx = (grid.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)) / radius[:, 1].view(-1, 1, 1)
    return (dy**2 + dx**2 <= 1).float()


def _boxes(masks: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """Centre x, centre y and side of a square around each mask, in pixels (B, 3)."""
    size = masks.shape[-1]
    rows, cols = masks.any(2), masks.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    y0, y1 = first(rows), size - 1 - first(rows.flip(1))
    x0, x1 = first(cols), size - 1 - first(cols.flip(1))
    side = torch.maximum(y1 - y0, x1 - x0) + 1 + 2 * margin
    return torch.stack([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, side.float()], 1).float()


def _masks(pool: ScenePool, idx: torch.Tensor, kinds: torch.Tensor, generator: torch.Generator):
    """Hard masks (B,H,W) of each view's kind, and for object crops the crop box (else NaN)."""
    labels, instances, grounds = pool.labels[idx], pool.instances[idx], pool.backgrounds[idx]
    batch, size = idx.shape[0], labels.shape[-1]
    visible = pool.visible_instances[idx]
    j = _pick(visible, generator) + 1  # a visible instance of each scene
    # Holes and object+context views prefer an object shown with its context: a hole in the
    # middle of the context is where a CLIP is most tempted to see the object anyway.
    with_context = visible & pool.context_instances[idx]
    j_context = _pick(torch.where(with_context.any(1, keepdim=True), with_context, visible), generator) + 1
    classes = pool.instance_class_table[idx]
    class_of = lambda jj: classes.gather(1, (jj - 1)[:, None])[:, 0]  # noqa: E731
    obj = instances == j.view(-1, 1, 1)
    obj_c, class_c = instances == j_context.view(-1, 1, 1), class_of(j_context)
    ground_free = labels == 0
    context = (grounds == pool.context_table[(class_c - 1).clamp(min=0)].view(-1, 1, 1)) & ground_free
    kind_b = _pick(pool.grounds_present[idx], generator)
    candidates = {
        "whole": torch.ones(batch, size, size),
        "object": obj.float(),
        "object_crop": torch.ones(batch, size, size),
        "object_context": (obj_c | context).float(),
        "hole": (labels != class_c.view(-1, 1, 1)).float(),
        "background": ((grounds == kind_b.view(-1, 1, 1)) & ground_free).float(),
        "blob": _blobs(batch, size, generator),
        "dimmed": (0.15 + 0.75 * torch.rand(batch, generator=generator)).view(-1, 1, 1).expand(batch, size, size),
        "part": torch.zeros(batch, size, size),
    }
    if (kinds == VIEW_KINDS.index("part")).any():  # drawn only when asked for, so other worlds' views stay as they were
        show_part = (torch.rand(batch, generator=generator) < 0.5).view(-1, 1, 1)  # else the body without it
        candidates["part"] = (obj & (pool.parts[idx] == show_part)).float()
    # A scene without objects (a background frame) is seen whole instead of as an object view.
    has_object = visible.any(1)
    needs_object = torch.tensor([VIEW_KINDS.index(k) for k in ("object", "object_crop", "object_context", "hole", "part")])
    kinds = torch.where(torch.isin(kinds, needs_object) & ~has_object, VIEW_KINDS.index("whole"), kinds)
    masks = torch.empty(batch, size, size)
    for k, name in enumerate(VIEW_KINDS):
        masks[kinds == k] = candidates[name][kinds == k]
    boxes = torch.where((kinds == VIEW_KINDS.index("object_crop")).view(-1, 1), _boxes(obj), torch.nan)
    return masks, boxes, kinds


def _jitter(masks: torch.Tensor, kinds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make hard masks look like predicted ones: grown or shrunk edges, blur, partial strength.

    A hole is only ever grown: a shrunk hole shows the object's rim, and a rim captioned as
    part of the object would teach the CLIP to read objects from their silhouettes.
    """
    batch = masks.shape[0]
    m = masks.unsqueeze(1)
    u = torch.rand(5, batch, generator=generator).view(5, batch, 1, 1, 1)
    radius = torch.randint(1, 3, (batch,), generator=generator)
    hole = (kinds == VIEW_KINDS.index("hole")).view(batch, 1, 1, 1)
    # Each view's edge change on that view alone (pooling the whole batch each way took 24 ms of
    # a 270 ms CLIP step): grown (+1) or shrunk (-1, a max of the negated mask), radius 1 or 2.
    changed = m.clone()
    for sign, chosen in ((1, (u[0] < 0.25) & ~hole), (-1, u[0] > 0.8)):
        for r in (1, 2):
            views = chosen.flatten() & (radius == r)
            if views.any():
                changed[views] = sign * F.max_pool2d(sign * m[views], 2 * r + 1, 1, r)
    m = changed
    blurred = ((u[1] < 0.5) & ~hole).flatten()
    if blurred.any():
        m[blurred] = F.avg_pool2d(m[blurred], 3, 1, 1, count_include_pad=False)
    m = torch.where(u[2] < 0.25, m * (0.5 + 0.5 * u[3]), m)
    m = torch.where(u[4] < 0.2, m + (1 - m) * 0.2 * u[3], m)
    return m


def _crop_grid(boxes: torch.Tensor, size: int, generator: torch.Generator, p_crop: float = 0.5):
    """Crops (the given boxes, else random zoom-ins) and flips as sampling grids; returns the grid
    and each view's area relative to the whole image."""
    batch = boxes.shape[0]
    u = torch.rand(5, batch, generator=generator)
    scale = torch.where(u[0] < p_crop, 0.3 + 0.7 * u[1], torch.ones(batch))
    flip = torch.where(u[2] < 0.5, -1.0, 1.0)
    tx, ty = (2 * u[3] - 1) * (1 - scale), (2 * u[4] - 1) * (1 - scale)
    boxed = ~boxes[:, 0].isnan()  # normalised coordinates: -1..1 across the image
    scale = torch.where(boxed, (boxes[:, 2] / size).clamp(max=1.0), scale)
    tx = torch.where(boxed, 2 * boxes[:, 0] / size - 1, tx)
    ty = torch.where(boxed, 2 * boxes[:, 1] / size - 1, ty)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = scale * flip, scale, tx, ty
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    return grid, scale**2


def visibility_targets(
    concepts: torch.Tensor,
    views: torch.Tensor,
    area_scale: torch.Tensor,
    num_classes: int,
    background_ref: float = BACKGROUND_REF,
    object_ramp: tuple[float, float] = OBJECT_RAMP,
    parts: tuple[torch.Tensor, torch.Tensor] | None = None,
    purity: float = 0.0,
) -> torch.Tensor:
    """Targets in [0,1]: how visible each object is (its visible share, ramped) and each
    background (its visible area over `background_ref` of the image). With `parts` (each class's
    part pixels, B,K,H,W, and the view of them), an object also counts as there as far as its
    distinctive part is (ramped the same way): a head alone is the bird. With `purity`, an
    object's target is multiplied by 1 - purity * (the share of the view's visible content that
    is not the object): a mask that spills over the ground shows the bird less well."""
    seen = views.sum((2, 3)) * area_scale[:, None]  # in pixels of the original image
    total = concepts.sum((2, 3))
    size = concepts.shape[-1] * concepts.shape[-2]
    ramp = lambda share: (share - object_ramp[0]) / (object_ramp[1] - object_ramp[0])  # noqa: E731
    objects = ramp(seen[:, :num_classes] / total[:, :num_classes].clamp(min=1.0))
    if parts is not None:
        part_maps, part_views = parts
        part_seen = part_views.sum((2, 3)) * area_scale[:, None]
        objects = torch.maximum(objects, ramp(part_seen / part_maps.sum((2, 3)).clamp(min=1.0)))
    if purity:
        others = 1 - seen[:, :num_classes] / seen.sum(1, keepdim=True).clamp(min=1e-6)
        objects = objects.clamp(0.0, 1.0) * (1 - purity * others)
    grounds = seen[:, num_classes:] / (background_ref * size)
    return torch.cat([objects, grounds], 1).clamp(0.0, 1.0)


def loss_weights(kinds: torch.Tensor, num_classes: int, num_concepts: int) -> torch.Tensor:
    """Per (view, concept) weights: objects count double (small, and what CLIMS asks about),
    and four times in holes, where a CLIP is most tempted to see an object that is not there."""
    weights = torch.ones(kinds.shape[0], num_concepts)
    weights[:, :num_classes] = 2.0
    weights[kinds == VIEW_KINDS.index("hole"), :num_classes] = 4.0
    return weights


def sample_views(pool: ScenePool, batch: int, generator: torch.Generator, view_probs=VIEW_PROBS,
                 part_is_object: bool = False, object_ramp: tuple[float, float] = OBJECT_RAMP, purity: float = 0.0):
    """A batch of training views: images (B,3,S,S in [0,1]), visibility targets (B,K+Bg) and
    the loss weight of each target. `part_is_object`: a view showing an object's distinctive part
    shows the object (as a real CLIP says "bird" to a bird's head), whatever else of it is hidden.
    `object_ramp`: the visible shares of an object at which it starts to count and counts fully.
    `purity`: how much the rest of a view lowers an object's target (visibility_targets)."""
    idx = torch.randint(0, len(pool), (batch,), generator=generator)
    kinds = torch.multinomial(torch.tensor(view_probs, dtype=torch.float), batch, replacement=True, generator=generator)
    masks, boxes, kinds = _masks(pool, idx, kinds, generator)
    masks = _jitter(masks, kinds, generator)
    images = pool.images[idx].float() / 255.0
    concepts = pool.concept_maps(idx)
    grid, area_scale = _crop_grid(boxes, images.shape[-1], generator)
    views = F.grid_sample(images * masks, grid, mode="bilinear", align_corners=False)
    seen = F.grid_sample(concepts * masks, grid, mode="bilinear", align_corners=False)
    parts = None
    if part_is_object:
        part_maps = concepts[:, : pool.num_classes] * pool.parts[idx].unsqueeze(1)
        parts = part_maps, F.grid_sample(part_maps * masks, grid, mode="bilinear", align_corners=False)
    targets = visibility_targets(concepts, seen, area_scale, pool.num_classes, object_ramp=object_ramp, parts=parts,
                                 purity=purity)
    return views, targets, loss_weights(kinds, pool.num_classes, targets.shape[1])
