"""The synthetic world: rendered scenes in which objects sit on the background they co-occur with.

Each object class is drawn as a distinct shape/colour/texture (skimage.draw) and, with
probability `cooccurrence`, on its context background placed where that context really is
(water under and around the boat, rails under the train, sky around the plane, ...). Every
pixel's ground truth is known: the object class, the instance and the background kind under it.
Rendering is deterministic given (seed, split, index).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import draw

# Base colours of the background kinds; each kind also has its own texture (see _TEXTURES).
BACKGROUND_KINDS = ("water", "rails", "sky", "road", "grass", "trees", "sand", "wall", "snow")
OBJECT_KINDS = ("boat", "train", "plane", "car", "cow", "bird")

# Object size (pixels on a 64-pixel canvas) and the vertical range of its centre (fraction of height).
_OBJECT_SIZE = (14.0, 22.0)
_VERTICAL_RANGE = {
    "boat": (0.45, 0.7), "train": (0.45, 0.75), "plane": (0.2, 0.55),
    "car": (0.45, 0.75), "cow": (0.4, 0.7), "bird": (0.2, 0.55),
}


@dataclass(frozen=True)
class WorldSpec:
    """What a world looks like and how its scenes are composed."""

    image_size: int
    classes: tuple[str, ...]  # object kind per class id 1..K
    contexts: tuple[str, ...]  # context background kind per class (same order)
    backgrounds: tuple[str, ...]  # background kind per background id 0..B-1
    min_objects: int = 1
    max_objects: int = 3
    cooccurrence: float = 0.85
    distractor: float = 0.2  # probability of a context region with no object on it
    # The parts world: bodies in one plain colour, so that only a part tells the class apart ...
    plain_bodies: bool = False
    clutter: float = 0.0  # ... and the probability of an unlabelled headless body in a scene
    # Objects this many times the plain world's 14-22 px (so they span more cells of a stride-4 map); their
    # contexts keep the size they have beside an unscaled object, anchored at the object's ground.
    object_scale: float = 1.0

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in OBJECT_KINDS]
        unknown += [b for b in self.backgrounds if b not in BACKGROUND_KINDS]
        if unknown:
            raise ValueError(f"unknown world kinds {unknown}; objects: {OBJECT_KINDS}, backgrounds: {BACKGROUND_KINDS}")
        missing = [c for c in self.contexts if c not in self.backgrounds]
        if missing:
            raise ValueError(f"context backgrounds {missing} are not in backgrounds {list(self.backgrounds)}")
        if not 0 < self.object_scale * _OBJECT_SIZE[1] < 64 - 2:
            raise ValueError(f"object_scale {self.object_scale}: objects must fit the image (at most {62 / _OBJECT_SIZE[1]:.2f})")
        if not self.neutral_backgrounds:
            raise ValueError("at least one background must be nobody's context (the neutral ground)")

    @property
    def neutral_backgrounds(self) -> tuple[int, ...]:
        return tuple(i for i, b in enumerate(self.backgrounds) if b not in self.contexts)

    def context_id(self, class_id: int) -> int:
        return self.backgrounds.index(self.contexts[class_id - 1])


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W uint8, class id per pixel, 0 = background
    instances: np.ndarray  # H x W uint8, instance index + 1 per pixel, 0 = none
    background: np.ndarray  # H x W uint8, background kind id under every pixel (objects included)
    instance_classes: list[int]  # class id per instance
    instance_has_context: list[bool]  # whether each instance got its context region
    parts: np.ndarray | None = None  # H x W bool, the objects' distinctive parts (heads, sails, ...)

    @property
    def class_ids(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.label) if c != 0)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, split, image)."""
    return np.random.default_rng([seed, sum(ord(c) << (8 * i) for i, c in enumerate(split)), index])


# --------------------------------------------------------------------------- textures
def _noise(rng, size, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    n = max(2, size // scale + 2)
    coarse = rng.random((n, n))
    pos = np.linspace(0, n - 1.001, size)
    i0 = pos.astype(int)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f


def _texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A full-canvas texture (H x W x 3 float in [0, 1]) of one background kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) * (64.0 / size)
    phase = rng.uniform(0, 2 * np.pi)
    fine = rng.random((size, size))
    if kind == "water":
        waves = 0.5 + 0.5 * np.sin(yy * 1.3 + 1.2 * np.sin(xx * 0.35 + phase))
        rgb = [0.12, 0.32, 0.72] + 0.16 * waves[..., None] * [0.6, 0.9, 1.0]
    elif kind == "rails":
        gravel = 0.42 + 0.16 * fine
        rgb = np.stack([gravel, gravel * 0.95, gravel * 0.85], -1)
        ties = ((xx + phase) % 5) < 1.6
        rgb[ties] = [0.38, 0.22, 0.1]
        rails = ((yy + phase) % 7) < 1.2
        rgb[rails] = [0.82, 0.82, 0.86]
    elif kind == "sky":
        clouds = np.clip(_noise(rng, size, 12) * 1.6 - 0.8, 0, 1)[..., None]
        rgb = (1 - clouds) * ([0.36, 0.6, 0.95] - 0.1 * yy[..., None] / 64) + clouds * [0.9, 0.93, 0.98]
    elif kind == "road":
        asphalt = 0.3 + 0.08 * fine
        rgb = np.repeat(asphalt[..., None], 3, -1)
        dashes = (np.abs((yy + phase) % 16 - 8) < 0.8) & (((xx + 3 * phase) % 10) < 5)
        rgb[dashes] = [0.95, 0.85, 0.2]
    elif kind == "grass":
        blades = rng.random(size)[None, :] * 0.6 + 0.4 * fine
        rgb = [0.18, 0.45, 0.12] + blades[..., None] * [0.12, 0.25, 0.06]
    elif kind == "trees":
        leaves = _noise(rng, size, 4)
        rgb = [0.05, 0.2, 0.07] + leaves[..., None] * [0.1, 0.28, 0.08]
        trunks = ((xx + 4 * phase) % 21) < 1.5
        rgb[trunks] = [0.3, 0.18, 0.08]
    elif kind == "sand":
        rgb = [0.82, 0.7, 0.48] + (0.1 * fine + 0.08 * _noise(rng, size, 10))[..., None] - 0.09
    elif kind == "wall":
        row = (yy + phase) // 4
        mortar = (((yy + phase) % 4) < 0.9) | (((xx + 4 * (row % 2) + phase) % 8) < 0.9)
        rgb = [0.62, 0.3, 0.22] + 0.08 * fine[..., None] - 0.04
        rgb[mortar] = [0.8, 0.78, 0.72]
    elif kind == "snow":
        drifts = 0.12 * _noise(rng, size, 8) + 0.25 * (fine > 0.93)
        rgb = [0.95, 0.95, 0.95] - drifts[..., None] * [1.0, 0.95, 0.85]
    else:  # pragma: no cover - WorldSpec rejects unknown kinds
        raise ValueError(kind)
    return np.clip(np.asarray(rgb, dtype=np.float64) * rng.uniform(0.94, 1.06, 3), 0, 1)


# --------------------------------------------------------------------------- objects
class _Painter:
    """Draws one object: coordinates are in units of the object size, relative to its centre."""

    def __init__(self, image, mask, cx, cy, s, flip, tint):
        self.image, self.mask = image, mask
        self.cx, self.cy, self.s, self.flip, self.tint = cx, cy, s, flip, tint
        self.part = np.zeros_like(mask)  # where the distinctive part shows
        self.drawing_part = False

    def _xy(self, dx, dy):
        return self.cx + self.flip * np.asarray(dx) * self.s, self.cy + np.asarray(dy) * self.s

    def _fill(self, rr, cc, colour):
        h, w = self.mask.shape
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        rr, cc = rr[keep], cc[keep]
        self.image[rr, cc] = np.clip(np.asarray(colour) * self.tint, 0, 1)
        self.mask[rr, cc] = True
        self.part[rr, cc] = self.drawing_part

    def poly(self, pts, colour):
        x, y = self._xy(*np.asarray(pts, dtype=float).T)
        self._fill(*draw.polygon(y, x, self.mask.shape), colour)

    def ellipse(self, dx, dy, rx, ry, colour):
        x, y = self._xy(dx, dy)
        self._fill(*draw.ellipse(y, x, max(ry * self.s, 1.0), max(rx * self.s, 1.0), self.mask.shape), colour)

    def rect(self, x0, y0, x1, y1, colour):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)


# Where each object meets its ground (units of its size below its centre): the waterline of
# the boat, the wheels of train and car, the hooves of the cow; the span of the plane and bird.
_GROUND_LINE = {"boat": 0.15, "train": 0.29, "plane": 0.45, "car": 0.31, "cow": 0.42, "bird": 0.16}


# Every object is a list of primitives, drawn in order: (role, shape, coordinates, colour). The
# roles matter in the parts world only: "body" is painted in PLAIN there, "part" keeps its colour
# and is all that tells the class apart (a sail, a cab, a tail fin, a cabin, a head), "detail"
# (wheels) keeps its colour and stays with the body. Headless clutter is body and detail alone.
PLAIN = (0.6, 0.52, 0.66)  # a muted violet grey: no background kind is near it


def _shapes(kind: str, rng: np.random.Generator) -> list[tuple[str, str, tuple, tuple]]:
    if kind == "boat":
        return [("part", "rect", (-0.03, -0.6, 0.02, 0.0), (0.25, 0.15, 0.08)),
                ("part", "poly", ([(0.05, -0.58), (0.05, -0.05), (0.38, -0.05)],), (0.97, 0.97, 0.92)),
                ("body", "poly", ([(-0.5, 0.0), (0.5, 0.0), (0.32, 0.25), (-0.32, 0.25)],), (0.5, 0.26, 0.1)),
                ("body", "rect", (-0.45, 0.07, 0.45, 0.11), (0.85, 0.8, 0.7))]
    if kind == "train":
        red, yellow = (0.82, 0.12, 0.1), (0.98, 0.9, 0.35)
        cab = 0.35  # the front from here on is the cab
        return ([("body", "rect", (-0.8, -0.25, cab, 0.2), red), ("part", "rect", (cab, -0.25, 0.8, 0.2), red),
                 ("part", "poly", ([(0.8, -0.25), (0.95, -0.05), (0.95, 0.2), (0.8, 0.2)],), red)]
                + [("part" if x >= cab else "body", "rect", (x, -0.17, x + 0.13, -0.03), yellow) for x in np.arange(-0.7, 0.7, 0.24)]
                + [("detail", "ellipse", (x, 0.22, 0.07, 0.07), (0.1, 0.1, 0.1)) for x in (-0.6, -0.3, 0.3, 0.6)])
    if kind == "plane":
        body, blue = (0.72, 0.74, 0.8), (0.15, 0.2, 0.55)
        return [("body", "poly", ([(-0.05, 0.0), (0.18, 0.0), (-0.12, 0.45), (-0.28, 0.45)],), body),
                ("body", "poly", ([(-0.05, 0.0), (0.18, 0.0), (-0.12, -0.45), (-0.28, -0.45)],), body),
                ("part", "poly", ([(-0.5, 0.0), (-0.36, 0.0), (-0.48, -0.25), (-0.56, -0.25)],), blue),
                ("body", "ellipse", (0.0, 0.0, 0.52, 0.09), body),
                ("part", "rect", (-0.4, -0.015, 0.45, 0.025), blue)]
    if kind == "car":
        yellow = (0.95, 0.78, 0.1)
        return [("part", "poly", ([(-0.3, -0.05), (-0.2, -0.27), (0.18, -0.27), (0.3, -0.05)],), yellow),
                ("part", "poly", ([(-0.17, -0.07), (-0.12, -0.22), (0.12, -0.22), (0.2, -0.07)],), (0.55, 0.8, 0.95)),
                ("body", "rect", (-0.5, -0.06, 0.5, 0.2), yellow)] + [
                ("detail", "ellipse", (x, 0.2, 0.11, 0.11), (0.08, 0.08, 0.08)) for x in (-0.3, 0.3)]
    if kind == "cow":
        white, black = (0.96, 0.95, 0.93), (0.06, 0.05, 0.05)
        return ([("body", "rect", (x, 0.1, x + 0.07, 0.42), white) for x in (-0.3, -0.18, 0.16, 0.28)]
                + [("body", "ellipse", (0.0, 0.0, 0.4, 0.22), white), ("part", "ellipse", (0.46, -0.14, 0.13, 0.1), white)]
                + [("body", "ellipse", (rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.1), 0.1, 0.07), black) for _ in range(3)]
                + [("part", "ellipse", (0.52, -0.13, 0.05, 0.05), (0.85, 0.55, 0.55))])
    if kind == "bird":
        orange = (0.95, 0.48, 0.08)
        return [("part", "poly", ([(0.38, -0.18), (0.56, -0.1), (0.38, -0.05)],), (0.98, 0.88, 0.15)),
                ("body", "ellipse", (0.0, 0.0, 0.32, 0.16), orange), ("part", "ellipse", (0.3, -0.12, 0.11, 0.11), orange),
                ("body", "poly", ([(-0.15, -0.02), (0.12, -0.02), (-0.1, -0.35)],), (0.7, 0.25, 0.05)),
                ("part", "ellipse", (0.33, -0.14, 0.03, 0.03), (0.0, 0.0, 0.0))]
    raise ValueError(kind)  # pragma: no cover


def _draw_object(kind: str, p: _Painter, rng: np.random.Generator, plain: bool = False, headless: bool = False) -> None:
    """Draw one object; `plain` paints its body in PLAIN, `headless` leaves its part out."""
    for role, shape, args, colour in _shapes(kind, rng):
        if role == "part" and headless:
            continue
        p.drawing_part = role == "part"
        getattr(p, shape)(*args, PLAIN if plain and role == "body" else colour)


def _context_region(kind: str, cx, cy, s, t, size, rng) -> np.ndarray:
    """Where an object of size s has its context: water around and under the boat, rails under the
    train, ... The context is as large as beside an object of size t (t = s unless objects are
    scaled up), sits at the object's own ground line and, where it surrounds the object, still
    reaches past its rim."""
    ground = cy + _GROUND_LINE[kind] * s
    mask = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "boat":  # water from the waterline down, wider than the hull
        top = ground + 0.6 * np.sin(xx * 0.8)
        mask = (yy >= top) & (np.abs(xx - cx) <= max(1.3 * t, 0.6 * s)) & (yy <= ground + 0.8 * t)
    elif kind in ("train", "car"):  # a strip across the whole image under the vehicle
        mask = (yy >= ground - 0.18 * t) & (yy <= ground + 0.22 * t)
    elif kind == "cow":  # a field patch under and around the cow, ragged top
        top = ground - 0.37 * t + 1.5 * np.sin(xx * 1.1 + rng.uniform(0, 6))
        mask = (yy >= top) & (np.abs(xx - cx) <= max(1.1 * t, 0.6 * s)) & (yy <= ground + 0.45 * t)
    elif kind == "plane":  # an open sky halo around the plane, just beyond the wings at least
        mask[draw.ellipse(cy, cx, max(0.8 * t, 0.45 * s), max(1.0 * t, 0.6 * s), mask.shape)] = True
    elif kind == "bird":  # foliage around the bird: a clump of disks, wide enough to hold a large bird
        for _ in range(5):
            r = rng.uniform(0.35, 0.55) * t + 0.2 * (s - t)
            mask[draw.disk((cy + rng.uniform(-0.4, 0.4) * t, cx + rng.uniform(-0.5, 0.5) * t), r, shape=mask.shape)] = True
    return mask


def _distractor_region(size, rng) -> np.ndarray:
    """A context background with nothing on it: a band or a blob somewhere."""
    yy, xx = np.mgrid[0:size, 0:size]
    if rng.random() < 0.5:
        y0 = rng.uniform(0.1, 0.8) * size
        return (yy >= y0) & (yy <= y0 + rng.uniform(0.12, 0.25) * size)
    return ((yy - rng.uniform(0.2, 0.8) * size) / rng.uniform(0.1, 0.2) / size) ** 2 + (
        (xx - rng.uniform(0.2, 0.8) * size) / rng.uniform(0.1, 0.25) / size
    ) ** 2 <= 1


def render_background(spec: WorldSpec, background_id: int, rng: np.random.Generator) -> np.ndarray:
    """A frame filled with one background kind and nothing else (uint8 H x W x 3)."""
    image = _texture(spec.backgrounds[background_id], rng, spec.image_size)
    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    return (image * 255 + 0.5).astype(np.uint8)


def render_scene(spec: WorldSpec, rng: np.random.Generator) -> Scene:
    size = spec.image_size
    unit = size / 64.0
    n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    class_ids = [int(c) for c in rng.integers(1, len(spec.classes) + 1, n_objects)]

    # Place objects (centre, size, flip) with little overlap; rejected ones are dropped. Clutter
    # (a headless body of some class) is placed last, the same way, and drawn under the objects.
    placed: list[tuple[int, float, float, float, int]] = []
    headless: list[tuple[int, float, float, float, int]] = []
    clutter = [int(rng.integers(1, len(spec.classes) + 1))] if spec.clutter > 0 and rng.random() < spec.clutter else []
    for n, class_id in enumerate(class_ids + clutter):
        kind = spec.classes[class_id - 1]
        for _ in range(20):
            s = rng.uniform(*_OBJECT_SIZE) * unit * spec.object_scale
            cx = rng.uniform(0.5 * s + 1, size - 0.5 * s - 1)
            cy = rng.uniform(*_VERTICAL_RANGE[kind]) * size
            if all(abs(cx - ox) > 0.55 * (s + os) or abs(cy - oy) > 0.4 * (s + os) for _, ox, oy, os, _ in placed + headless):
                (placed if n < len(class_ids) else headless).append((class_id, cx, cy, s, 1 if rng.random() < 0.5 else -1))
                break

    # Background layer: neutral ground, distractor regions, then each object's context.
    background = np.full((size, size), spec.neutral_backgrounds[rng.integers(len(spec.neutral_backgrounds))], np.uint8)
    if rng.random() < spec.distractor:
        background[_distractor_region(size, rng)] = spec.context_id(int(rng.integers(1, len(spec.classes) + 1)))
    has_context = []
    for class_id, cx, cy, s, flip in placed:
        drawn = rng.random() < spec.cooccurrence
        if drawn:
            kind = spec.classes[class_id - 1]
            background[_context_region(kind, cx, cy, s, s / spec.object_scale, size, rng)] = spec.context_id(class_id)
        has_context.append(drawn)
    image = np.zeros((size, size, 3))
    for kind_id in np.unique(background):
        where = background == kind_id
        image[where] = _texture(spec.backgrounds[kind_id], rng, size)[where]

    for class_id, cx, cy, s, flip in headless:
        painter = _Painter(image, np.zeros((size, size), bool), cx, cy, s, flip, rng.uniform(0.9, 1.1, 3))
        _draw_object(spec.classes[class_id - 1], painter, rng, plain=True, headless=True)

    # Objects on top; a later object hides an earlier one where they overlap.
    label = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    parts = np.zeros((size, size), bool)
    for index, (class_id, cx, cy, s, flip) in enumerate(placed):
        mask = np.zeros((size, size), bool)
        painter = _Painter(image, mask, cx, cy, s, flip, rng.uniform(0.9, 1.1, 3))
        _draw_object(spec.classes[class_id - 1], painter, rng, plain=spec.plain_bodies)
        label[mask] = class_id
        instances[mask] = index + 1
        parts[mask] = painter.part[mask]

    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    return Scene(
        image=(image * 255 + 0.5).astype(np.uint8),
        label=label,
        instances=instances,
        background=background,
        instance_classes=[p[0] for p in placed],
        instance_has_context=has_context,
        parts=parts,
    )
