import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.synthetic import PLAIN, WorldSpec, render_background, render_scene, scene_rng

CLASSES = ("boat", "train", "plane", "car", "cow", "bird")
CONTEXTS = ("water", "rails", "sky", "road", "grass", "trees")
BACKGROUNDS = CONTEXTS + ("sand", "wall", "snow")


def spec(**kw):
    return WorldSpec(64, CLASSES, CONTEXTS, BACKGROUNDS, **kw)


def test_rendering_is_deterministic_per_seed_split_and_index():
    a = render_scene(spec(), scene_rng(3, "train", 7))
    b = render_scene(spec(), scene_rng(3, "train", 7))
    for field in ("image", "label", "instances", "background"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.instance_classes == b.instance_classes
    others = [render_scene(spec(), scene_rng(*key)) for key in [(4, "train", 7), (3, "val", 7), (3, "train", 8)]]
    assert all(not np.array_equal(a.image, o.image) for o in others)


def test_masks_agree_with_image_level_labels():
    world = spec()
    counts = []
    for i in range(60):
        s = render_scene(world, scene_rng(0, "train", i))
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        present = set(np.unique(s.label).tolist()) - {0}
        assert set(s.class_ids) == present and 1 <= len(present) <= 3
        # Object pixels are exactly the instance pixels, and each instance has one class.
        np.testing.assert_array_equal(s.label > 0, s.instances > 0)
        for j in np.unique(s.instances[s.instances > 0]):
            assert set(np.unique(s.label[s.instances == j])) == {s.instance_classes[j - 1]}
        counts.append(len(s.instance_classes))
    assert min(counts) == 1 and max(counts) == 3


@pytest.mark.parametrize("object_scale", [1.0, 2.0])
def test_context_background_sits_beside_its_object(object_scale):
    world = spec(cooccurrence=1.0, distractor=0.0, object_scale=object_scale)
    near_fractions = []
    for i in range(40):
        s = render_scene(world, scene_rng(1, "train", i))
        for j, class_id in enumerate(s.instance_classes, start=1):
            obj = s.instances == j
            if obj.sum() < 10:
                continue
            context = (s.background == world.context_id(class_id)) & (s.label == 0)
            ring = ndimage.binary_dilation(obj, iterations=2) & ~obj
            assert (context & ring).sum() > 0, f"{CLASSES[class_id - 1]} in scene {i} does not touch its context"
            near = ndimage.binary_dilation(obj, iterations=12)
            near_fractions.append((context & near).sum() / max(context.sum(), 1))
    # Most of an object's context lies within 12 px of an object (bands under vehicles span the image).
    assert np.median(near_fractions) > 0.5


@pytest.mark.parametrize("cooccurrence, expect_context", [(0.0, False), (1.0, True)])
def test_cooccurrence_controls_context(cooccurrence, expect_context):
    world = spec(cooccurrence=cooccurrence, distractor=0.0)
    context_ids = {world.context_id(c) for c in range(1, 7)}
    seen = [
        bool(set(np.unique(render_scene(world, scene_rng(0, "val", i)).background).tolist()) & context_ids)
        for i in range(30)
    ]
    assert all(seen) if expect_context else not any(seen)


def _object_and_context_pixels(world: WorldSpec, scenes: int) -> np.ndarray:
    """(object pixels, pixels of its context) per single-object scene, the context on a neutral ground."""
    counts = []
    for i in range(scenes):
        s = render_scene(world, scene_rng(5, "train", i))
        context = (s.background == world.context_id(s.instance_classes[0])) & (s.label == 0)
        counts.append(((s.label > 0).sum(), context.sum()))
    return np.array(counts, float)


def test_object_scale_grows_the_objects_and_keeps_their_contexts():
    one = dict(min_objects=1, max_objects=1, cooccurrence=1.0, distractor=0.0)
    default = _object_and_context_pixels(spec(**one), 60)
    large = _object_and_context_pixels(spec(**one, object_scale=2.0), 60)
    # Same scenes (same draws), each object twice the size: four times the pixels.
    assert 3.5 < np.median(large[:, 0] / default[:, 0]) < 4.5
    # The context covers about as much of the image as beside a default-sized object (a band under a
    # train, a patch of grass: the same size, anchored at the object's ground) ...
    assert 0.6 < large[:, 1].sum() / default[:, 1].sum() < 1.6
    # ... so an object is no longer a small thing in a large context (0.17 of it by default, 0.72 here).
    assert np.median(large[:, 0] / large[:, 1]) > 3 * np.median(default[:, 0] / default[:, 1])
    with pytest.raises(ValueError, match="object_scale 3.0: objects must fit the image"):
        spec(object_scale=3.0)


def test_background_kinds_and_objects_look_different():
    world = spec()
    means = np.array([render_background(world, k, np.random.default_rng(k)).reshape(-1, 3).mean(0) for k in range(9)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    # Two kinds may share a mean colour only if their textures differ; no two are identical frames.
    assert (distances + np.eye(9) * 1e9).min() > 5


def test_world_spec_rejects_unknown_kinds_and_missing_neutral_ground():
    with pytest.raises(ValueError, match="unknown world kinds"):
        WorldSpec(64, ("boat", "dragon"), ("water", "sky"), ("water", "sky", "sand"))
    with pytest.raises(ValueError, match="neutral"):
        WorldSpec(64, ("boat", "plane"), ("water", "sky"), ("water", "sky"))


def _near_plain(image: np.ndarray) -> np.ndarray:
    """Pixels within the tint and noise of the plain body colour."""
    return np.abs(image / 255.0 - np.asarray(PLAIN)).max(-1) < 0.1


def test_parts_world_only_a_part_carries_the_class_colour_and_clutter_is_unlabelled():
    plain_share, clutter_pixels, body_plain = {c: [] for c in range(1, 7)}, [], []
    for i in range(80):
        s = render_scene(spec(plain_bodies=True, clutter=1.0), scene_rng(2, "train", i))
        for j, class_id in enumerate(s.instance_classes, start=1):
            obj = s.instances == j
            if obj.sum() >= 40:
                plain_share[class_id].append(_near_plain(s.image)[obj].mean())
        clutter_pixels.append((_near_plain(s.image) & (s.label == 0)).sum())
        # The scene's part map: inside objects only (clutter has none), never plain; the rest of an
        # object (body, wheels) mostly plain.
        assert not (s.parts & (s.label == 0)).any() and not _near_plain(s.image)[s.parts].any()
        body_plain.append(_near_plain(s.image)[(s.label > 0) & ~s.parts].mean())
        assert s.label.max() > 0 and set(s.class_ids) == set(np.unique(s.label).tolist()) - {0}
    # Every class: the body is plain, the part (a tenth to a half of the object: a head, a fin, a sail) is not.
    for class_id, shares in plain_share.items():
        assert 0.5 < np.median(shares) < 0.95, (CLASSES[class_id - 1], np.median(shares))
    assert np.mean(body_plain) > 0.85
    # A headless plain body lies on the ground, unlabelled, in most scenes (placement may fail).
    assert np.mean(np.array(clutter_pixels) >= 20) > 0.8
    # The ordinary world has neither: its objects wear their own colours all over.
    ordinary = [render_scene(spec(), scene_rng(2, "train", i)) for i in range(20)]
    assert np.mean([_near_plain(s.image)[s.label > 0].mean() for s in ordinary]) < 0.05
