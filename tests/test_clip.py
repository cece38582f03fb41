from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.clip import model as clip_model
from pipeline.clip.views import visibility_targets
from pipeline.errors import UserError
from pipeline.params import TinyClipArchitecture

SMALL = TinyClipArchitecture.model_validate(
    {
        "embed_dim": 32,
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 1},
    }
)


@pytest.fixture(scope="module")
def small_clip():
    torch.manual_seed(0)
    return clip_model.wrap(clip_model.freeze(clip_model.build_tiny("test-small", SMALL)), "test-small")


def test_visibility_targets_hand_computed():
    concepts = torch.zeros(1, 2, 4, 4)  # one object class, one background kind
    concepts[0, 0, :2, :2] = 1  # 4 object pixels
    concepts[0, 1] = 1 - concepts[0, 0]  # 12 background pixels
    view = concepts.clone()
    view[0, 0, 0, :] = 0  # half the object hidden
    view[0, 1, 2:, :] = 0  # 8 of the 12 background pixels hidden
    targets = visibility_targets(concepts, view, torch.tensor([1.0]), 1, background_ref=0.5, object_ramp=(0.0, 1.0))
    torch.testing.assert_close(targets, torch.tensor([[2 / 4, 4 / 8]]))
    # A zoomed view counts pixels of the original image: a 2x zoom covers a quarter of the area.
    zoomed = visibility_targets(concepts, view * 4, torch.tensor([0.25]), 1, background_ref=0.5, object_ramp=(0.0, 1.0))
    torch.testing.assert_close(zoomed, targets)
    # The ramp: half visible on a 0.25..0.75 ramp is half-way; a quarter visible counts as absent.
    ramped = visibility_targets(concepts, view, torch.tensor([1.0]), 1, background_ref=0.5, object_ramp=(0.25, 0.75))
    assert ramped[0, 0] == 0.5
    view[0, 0, 1, 0] = 0  # one of 4 object pixels left
    assert visibility_targets(concepts, view, torch.tensor([1.0]), 1, object_ramp=(0.25, 0.75))[0, 0] == 0.0


def test_a_visible_part_counts_as_the_object_when_asked():
    concepts = torch.zeros(1, 2, 4, 4)
    concepts[0, 0, :2] = 1  # 8 object pixels, the first 2 its distinctive part
    concepts[0, 1] = 1 - concepts[0, 0]
    part_maps = torch.zeros(1, 1, 4, 4)
    part_maps[0, 0, 0, :2] = 1
    only_the_part = concepts * 0
    only_the_part[0, 0, 0, :2] = 1
    args = (concepts, only_the_part, torch.tensor([1.0]), 1)
    assert visibility_targets(*args, object_ramp=(0.0, 1.0))[0, 0] == 2 / 8  # a quarter of the object
    assert visibility_targets(*args, object_ramp=(0.0, 1.0), parts=(part_maps, part_maps))[0, 0] == 1.0
    half_the_part = part_maps.clone()
    half_the_part[0, 0, 0, 0] = 0
    # Half the part on a 0.2..0.7 ramp: 0.6 (the object's own share, 2/8, would give 0.1).
    assert visibility_targets(*args, parts=(part_maps, half_the_part))[0, 0].item() == pytest.approx(0.6)


def test_purity_lowers_an_object_by_the_share_of_the_view_that_is_something_else():
    concepts = torch.zeros(1, 2, 4, 4)  # one object class, one background kind
    concepts[0, 0, :2, :2] = 1  # 4 object pixels
    concepts[0, 1] = 1 - concepts[0, 0]  # 12 background pixels
    whole = visibility_targets(concepts, concepts, torch.tensor([1.0]), 1, background_ref=0.5, purity=0.4)
    # The whole object shown beside 12 background pixels: 12 / 16 of the view is something else.
    torch.testing.assert_close(whole, torch.tensor([[1 - 0.4 * 12 / 16, 1.0]]))
    exact = concepts.clone()
    exact[0, 1] = 0  # the object alone: nothing else to lower it
    assert visibility_targets(concepts, exact, torch.tensor([1.0]), 1, purity=0.4)[0, 0] == 1.0
    spilled = exact.clone()
    spilled[0, 1, 2, :] = 1  # 4 background pixels beside the 4 of the object
    assert visibility_targets(concepts, spilled, torch.tensor([1.0]), 1, purity=0.4)[0, 0].item() == pytest.approx(0.8)
    # Without purity the same view is the whole object; with it, half shown on a 0..1 ramp is halved again.
    assert visibility_targets(concepts, spilled, torch.tensor([1.0]), 1)[0, 0] == 1.0
    half = spilled.clone()
    half[0, 0, 0, :] = 0  # 2 object pixels and 4 others
    targets = visibility_targets(concepts, half, torch.tensor([1.0]), 1, object_ramp=(0.0, 1.0), purity=0.4)
    assert targets[0, 0].item() == pytest.approx(0.5 * (1 - 0.4 * 4 / 6))


def test_the_absent_pull_charges_only_objects_a_view_does_not_show():
    """The sigmoid BCE plus absent_weight * mean relu(cos)^2 over the (view, object) pairs whose
    target is 0: a view's background concepts and the objects it shows are not charged, and an
    absent object already below 0 costs nothing but still counts in the mean."""
    from types import SimpleNamespace

    from pipeline.clip.train import multilabel_loss

    # Concepts: one object (text e0), one background (text e1). Views' cosines with the object:
    # 0.6 (absent), -0.5 (absent), 0.8 (shown); with the background 0.8, 0.87, 0.6 (the last one
    # absent, and not charged).
    angle = lambda c: [c, (1 - c * c) ** 0.5]  # noqa: E731
    features = torch.tensor([angle(0.6), angle(-0.5), angle(0.8)])
    texts = torch.eye(2)
    targets = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    weights = torch.ones(3, 2)
    model = SimpleNamespace(logit_scale=torch.tensor(10.0).log(), logit_bias=torch.tensor(-5.0))
    clip = SimpleNamespace(model=model, encode_images=lambda images: images)

    plain = multilabel_loss(clip, features, texts, targets, weights, num_classes=1)
    logits = 10 * features @ texts.T - 5
    assert torch.isclose(plain, F.binary_cross_entropy_with_logits(logits, targets))
    pulled = multilabel_loss(clip, features, texts, targets, weights, num_classes=1, absent_weight=2.0)
    assert torch.isclose(pulled - plain, torch.tensor(2.0 * (0.6**2 + 0.0) / 2))


def test_masking_is_in_pixel_space_and_differentiable(small_clip):
    images = torch.rand(2, 3, 32, 32)
    black = small_clip.encode_images(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(small_clip.encode_images(images, torch.zeros(2, 1, 32, 32)), black)
    masks = torch.full((2, 1, 32, 32), 0.5, requires_grad=True)
    text = small_clip.encode_texts(["a photo of a boat.", "a photo of water."])
    (small_clip.encode_images(images, masks) @ text.T).sum().backward()
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in small_clip.model.parameters())


def test_clip_folder_round_trip(tmp_path, small_clip):
    texts = {"class_names": ["boat"], "class_embeddings": small_clip.encode_texts(["a photo of boat."])}
    meta = {"source": "tiny", "model_name": "test-small", "open_clip_config": clip_model.tiny_open_clip_config(SMALL)}
    clip_model.save_clip(tmp_path, meta, texts, small_clip.model.state_dict())
    loaded, loaded_texts = clip_model.load_clip(tmp_path)
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_images(images), small_clip.encode_images(images))
    torch.testing.assert_close(loaded_texts["class_embeddings"], texts["class_embeddings"])
    assert loaded_texts["class_names"] == ["boat"] and not loaded.model.training


def test_a_tiny_clip_built_or_loaded_does_not_warn_of_random_weights(tmp_path, small_clip, caplog):
    """open_clip warns "Model initialized randomly" for every architecture built without a
    checkpoint; a tiny CLIP is trained or given its own weights next, so the line is not shown,
    and only while it is built."""
    import logging

    meta = {"source": "tiny", "model_name": "test-small", "open_clip_config": clip_model.tiny_open_clip_config(SMALL)}
    clip_model.save_clip(tmp_path, meta, {"class_names": []}, small_clip.model.state_dict())
    caplog.set_level(logging.WARNING)
    clip_model.build_tiny("test-quiet", SMALL)
    clip_model.load_clip(tmp_path)
    assert caplog.records == []
    logging.warning("Model other initialized randomly.")
    assert [record.getMessage() for record in caplog.records] == ["Model other initialized randomly."]


def test_an_architecture_registered_at_run_time_leaves_no_file_and_stays_known(tmp_path, monkeypatch):
    """The tiny CLIP's open_clip config is written to a temporary file for open_clip to read; the
    file is gone afterwards, and the architecture still builds after another one is registered."""
    import tempfile

    import open_clip

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wider = SMALL.model_copy(update={"embed_dim": 48})
    clip_model.build_tiny("test-registry-a", SMALL)
    clip_model.build_tiny("test-registry-b", wider)
    assert list(tmp_path.iterdir()) == []
    sizes = {name: open_clip.create_model(name, pretrained=None).text_projection.shape for name in ("test-registry-a", "test-registry-b")}
    assert sizes == {"test-registry-a": (32, 32), "test-registry-b": (32, 48)}


def test_pretrained_weights_from_a_local_file(tmp_path, small_clip):
    weights = tmp_path / "small.pt"
    torch.save(small_clip.model.state_dict(), weights)
    model = clip_model.load_pretrained("test-small", weights)
    for key, value in small_clip.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)

    with pytest.raises(UserError, match=r"missing\.pt: CLIP weights file not found"):
        clip_model.load_pretrained("test-small", tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match=r"wrong\.pt: not an open_clip checkpoint for test-small"):
        clip_model.load_pretrained("test-small", tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="not an open_clip architecture"):
        clip_model.load_pretrained("no-such-net", weights)
    torch.save({"state_dict": small_clip.model.state_dict(), "note": Path("made elsewhere")}, tmp_path / "pickled.pt")
    with pytest.raises(UserError) as error:  # refused by weights_only: what the file should hold, not torch's advice
        clip_model.load_pretrained("test-small", tmp_path / "pickled.pt")
    assert str(error.value) == (f"{tmp_path / 'pickled.pt'}: not an open_clip checkpoint for test-small (it holds Python "
                                "objects besides tensors; save the model's state_dict() instead)")


def test_missing_clip_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="run the prepare_clip stage first"):
        clip_model.load_clip(tmp_path)


def _zero_shot(clip, spec, prompts, pool):
    from pipeline.clip.probes import clip_report

    with torch.no_grad():
        texts = F.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)
    k = len(spec.classes)
    return clip_report(clip, spec, pool, texts[:k], texts[k:])


def test_the_context_figures_are_left_out_where_no_object_sits_on_its_context():
    """A world without co-occurrence (and no distractor patches) shows no context at all: the
    report leaves the context figures out rather than fail or invent them."""
    from pipeline.clip.views import render_pool
    from pipeline.data.synthetic import WorldSpec

    contexts = ("water", "rails", "sky", "road", "grass", "trees")
    torch.manual_seed(0)
    clip = clip_model.wrap(clip_model.build_tiny("test-context", SMALL), "test-context")
    reports = {}
    for cooccurrence in (0.0, 1.0):
        spec = WorldSpec(64, ("boat", "train", "plane", "car", "cow", "bird"), contexts, contexts + ("sand", "wall", "snow"),
                         cooccurrence=cooccurrence, distractor=0.0)
        prompts = [f"a photo of {name}." for name in spec.classes + spec.backgrounds]
        reports[cooccurrence] = _zero_shot(clip, spec, prompts, render_pool(spec, 6, 0, "clip-eval"))
    never, always = reports[0.0], reports[1.0]
    assert never["eval_context_pairs"] == 0 and never["eval_instances"] > 0
    assert not {"context_margin", "cos_context_together_mean", "cos_context_alone_mean"} & set(never)
    assert np.isfinite(never["hole_margin"]) and np.isfinite(never["object_top1"])
    assert always["eval_context_pairs"] > 0
    assert always["context_margin"] == pytest.approx(always["cos_context_together_mean"] - always["cos_context_alone_mean"])


def test_tiny_clip_learns_on_a_short_run():
    """A few dozen steps on the world already lift zero-shot accuracy far above chance."""
    from pipeline.clip.train import train_tiny_clip
    from pipeline.clip.views import render_pool
    from pipeline.data.synthetic import WorldSpec
    from pipeline.params import TinyClipTraining

    contexts = ("water", "rails", "sky", "road", "grass", "trees")
    spec = WorldSpec(64, ("boat", "train", "plane", "car", "cow", "bird"), contexts, contexts + ("sand", "wall", "snow"))
    prompts = [f"a photo of {name}." for name in spec.classes + spec.backgrounds]
    held_out = render_pool(spec, 60, 0, "clip-eval")
    torch.manual_seed(0)
    clip = clip_model.wrap(clip_model.build_tiny("test-learn", SMALL), "test-learn")
    before = _zero_shot(clip, spec, prompts, held_out)
    train = TinyClipTraining(seed=0, steps=250, batch_size=48, lr=0.005, weight_decay=0.0, warmup_steps=5,
                             pool_size=300, cooccurrence=0.3, eval_scenes=60, part_views=0.0)
    losses = train_tiny_clip(clip, render_pool(spec, 300, 0, "clip", frames=0.1), prompts, train)
    after = _zero_shot(clip, spec, prompts, held_out)
    assert np.mean(losses[-10:]) < np.mean(losses[:5])
    # Chance is 1/6 for objects and 1/9 for backgrounds; this run measured 0.65 and 0.72.
    assert after["object_top1"] >= 0.45 > before["object_top1"]
    assert after["background_top1_masked"] >= 0.5 > before["background_top1_masked"]


def test_training_only_the_used_token_rows_matches_training_the_whole_table(monkeypatch):
    """The used-rows table is a speed-up only: the same weights as the whole table's training
    (this machine: the same to the bit over 300 steps of the default CLIP), the rows no prompt
    uses left as initialised, and the model's own nn.Embedding back in place."""
    import contextlib
    import copy

    from pipeline.clip import train as clip_train
    from pipeline.clip.views import render_pool
    from pipeline.data.synthetic import WorldSpec
    from pipeline.params import TinyClipTraining

    spec = WorldSpec(64, ("boat", "cow"), ("water", "grass"), ("water", "grass", "sand"))
    prompts = [f"a photo of {name}." for name in spec.classes + spec.backgrounds]
    pool = render_pool(spec, 24, 0, "clip", frames=0.1)
    train = TinyClipTraining(seed=0, steps=4, batch_size=8, lr=0.005, weight_decay=0.05, warmup_steps=2,
                             pool_size=24, cooccurrence=0.3, eval_scenes=8, part_views=0.1)
    torch.manual_seed(0)
    initial = clip_model.build_tiny("test-rows", SMALL)
    used = clip_model.wrap(copy.deepcopy(initial), "test-rows")
    clip_train.train_tiny_clip(used, pool, prompts, train)
    monkeypatch.setattr(clip_train, "used_token_rows", lambda model, tokens: contextlib.nullcontext())
    whole = clip_model.wrap(copy.deepcopy(initial), "test-rows")
    clip_train.train_tiny_clip(whole, pool, prompts, train)

    assert type(used.model.token_embedding) is torch.nn.Embedding
    assert set(used.model.state_dict()) == set(whole.model.state_dict())
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(used.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    rows = used.tokenizer(prompts).unique()
    unused = torch.ones(initial.token_embedding.num_embeddings, dtype=torch.bool)
    unused[rows] = False
    table, before = used.model.token_embedding.weight, initial.token_embedding.weight
    assert torch.equal(table[unused], before[unused])
    words = rows[rows != 0]  # id 0 pads the prompts after their end token, which reads nothing after it
    assert (table[words] - before[words]).abs().amax(dim=1).min() > 1e-4  # every word's row trained


@pytest.fixture(scope="module")
def one_object_pool():
    from pipeline.clip.views import render_pool
    from pipeline.data.synthetic import WorldSpec

    contexts = ("water", "rails", "sky", "road", "grass", "trees")
    spec = WorldSpec(64, ("boat", "train", "plane", "car", "cow", "bird"), contexts, contexts + ("sand",),
                     min_objects=1, max_objects=1, cooccurrence=1.0)
    return render_pool(spec, 40, 0, "views")


def _views_of(pool, kind, n=256):
    from pipeline.clip.views import VIEW_KINDS, sample_views

    probs = [1.0 if k == kind else 0.0 for k in VIEW_KINDS]
    images, targets, weights = sample_views(pool, n, torch.Generator().manual_seed(1), view_probs=probs)
    assert weights[:, :6].min() == (4.0 if kind == "hole" else 2.0) and weights[:, 6:].max() == 1.0
    return images, targets


def test_hole_views_never_show_the_object(one_object_pool):
    images, targets = _views_of(one_object_pool, "hole")
    assert images.shape == (256, 3, 64, 64)
    assert targets[:, :6].max() == 0.0  # the only object is always cut out, rims included
    assert targets[:, 6:].max(1).values.min() > 0  # while its surroundings are seen


def test_object_views_show_the_object_and_crops_zoom_in(one_object_pool):
    _, targets = _views_of(one_object_pool, "object_crop")
    assert targets[:, :6].max(1).values.mean() > 0.8
    _, targets = _views_of(one_object_pool, "object_context")
    # Half the views are random zoom-ins, which cut some objects out; the rest show it whole.
    assert targets[:, :6].max(1).values.mean() > 0.6
    # With co-occurrence 1 the context is always there, and it is shown with the object.
    assert (targets[:, 6:12].max(1).values > 0.5).float().mean() > 0.8


def test_part_views_show_a_part_alone_or_the_body_without_it():
    """A part alone is too little of the object to count (its target stays low); the body
    without its part is most of it (high): the CLIP learns that a head is not the whole bird."""
    from pipeline.clip.views import VIEW_KINDS, VIEW_PROBS, render_pool, sample_views, view_probs
    from pipeline.data.synthetic import WorldSpec

    contexts = ("water", "rails", "sky", "road", "grass", "trees")
    spec = WorldSpec(64, ("boat", "train", "plane", "car", "cow", "bird"), contexts, contexts + ("sand",),
                     min_objects=1, max_objects=1, plain_bodies=True)
    pool = render_pool(spec, 40, 0, "views")
    probs = view_probs(1.0)
    assert probs[VIEW_KINDS.index("part")] == 1.0 and sum(probs) == pytest.approx(1.0)
    assert view_probs(0.1) == pytest.approx([0.9 * p for p in VIEW_PROBS[:-1]] + [0.1]) and view_probs(0.0) == VIEW_PROBS
    _, targets, _ = sample_views(pool, 256, torch.Generator().manual_seed(1), view_probs=probs)
    shown = targets[:, :6].max(1).values
    low, high = (shown < 0.5).float().mean(), (shown > 0.7).float().mean()
    # Half the views show the part (under half of most objects), half the body (over half).
    assert 0.3 < low < 0.7 and 0.25 < high < 0.7 and low + high > 0.85, (low, high)
    # With part_is_object the same views (the flag draws no random numbers) count a part as the object.
    _, as_object, _ = sample_views(pool, 256, torch.Generator().manual_seed(1), view_probs=probs, part_is_object=True)
    assert (as_object >= targets).all() and torch.equal(as_object[:, 6:], targets[:, 6:])
    shown_as_object = as_object[:, :6].max(1).values
    assert (shown_as_object[shown < 0.5] > 0.7).float().mean() > 0.3  # (crops and eroded masks cut some parts out)
    # An earlier ramp (an object counts from 10 % of it visible, fully from 40 %) raises every
    # object's target and no background's: a part alone now counts in part.
    _, earlier, _ = sample_views(pool, 256, torch.Generator().manual_seed(1), view_probs=probs, object_ramp=(0.1, 0.4))
    assert (earlier >= targets).all() and torch.equal(earlier[:, 6:], targets[:, 6:])
    assert earlier[:, :6].max(1).values[shown < 0.5].mean() > shown[shown < 0.5].mean() + 0.15  # (0.08 -> 0.27)


def test_prepare_clip_with_pretrained_weights_writes_the_same_outputs(tmp_path, small_clip, base_params):
    from pipeline.clip.prepare import prepare_clip
    from pipeline.params import validate

    weights = tmp_path / "pretrained.pt"
    torch.save(small_clip.model.state_dict(), weights)
    base_params["clip"] = {"source": "pretrained", "model_name": "test-small", "weights": str(weights), "eval_scenes": 12}
    metrics = prepare_clip(validate(base_params), tmp_path / "clip")
    loaded, texts = clip_model.load_clip(tmp_path / "clip")
    torch.testing.assert_close(texts["class_embeddings"], small_clip.encode_texts(texts["class_prompts"]))
    assert texts["background_names"][:2] == ["water", "rails"] and 0.0 <= metrics["object_top1"] <= 1.0
    assert not (tmp_path / "clip" / clip_model.WEIGHTS_FILE).exists()  # the weights stay where they are


@pytest.mark.parametrize("group, weights, architecture", [  # vit_b32: tests/test_real_data.py, with dataset=voc12
    ("vit_b16", "ViT-B-16-openai.pt", "ViT-B-16-quickgelu"),
    ("rn50x4", "RN50x4-openai.pt", "RN50x4-quickgelu"),
])
def test_missing_pretrained_weights_stop_the_stage_with_one_line(tmp_path, mlflow_uri, group, weights, architecture):
    import yaml

    from conftest import REPO, run_stage
    from pipeline.config import compose

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose([f"clip={group}"], conf_dir=REPO / "conf")))
    result = run_stage("prepare_clip", tmp_path, mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: weights/clip/{weights}: CLIP weights file not found "
        f"(clip.weights: an open_clip checkpoint for {architecture})"
    )
    assert not (tmp_path / "artifacts").exists()


def test_the_clip_learns_from_a_world_with_its_own_clutter(base_params):
    """clip.train.clutter sets the share of the CLIP's renders with an unlabelled headless body
    (none: the dataset's); the dataset keeps its own clutter for the data."""
    from pipeline.clip.prepare import clip_world
    from pipeline.clip.views import render_pool
    from pipeline.params import validate

    def clip_renders(dataset_clutter, clip_clutter):
        base_params["dataset"].update(plain_bodies=True, clutter=dataset_clutter)
        base_params["clip"]["train"]["clutter"] = clip_clutter
        params = validate(base_params)
        assert params.dataset.clutter == dataset_clutter
        return render_pool(clip_world(params.dataset, params.clip.train), 12, 0, "clip").images

    own = clip_renders(1.0, 0.0)
    assert torch.equal(own, clip_renders(0.0, None))  # as if the dataset had no clutter
    assert torch.equal(clip_renders(1.0, None), clip_renders(0.0, 1.0))
    assert not torch.equal(own, clip_renders(1.0, None))


def micro_clip(raw: dict) -> dict:
    """The committed params with a tiny CLIP that trains in three steps."""
    raw["clip"]["architecture"] = {
        "embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8},
        "text": {"context_length": 16, "width": 16, "heads": 2, "layers": 1}}
    raw["clip"]["train"].update(steps=3, batch_size=8, pool_size=16, eval_scenes=10, warmup_steps=1)
    return raw


def prepare_clip_runner(folder: Path):
    """run(raw params, out, previous=None) -> (metrics, training steps logged, weights) of
    prepare_clip writing folder/out, with folder/previous as its earlier output."""
    from pipeline.clip.prepare import prepare_clip
    from pipeline.params import validate

    def run(raw, out, previous=None):
        steps = []
        metrics = prepare_clip(validate(raw), folder / out, previous and folder / previous, log_loss=lambda s, _: steps.append(s))
        return metrics, steps, torch.load(folder / out / clip_model.WEIGHTS_FILE, weights_only=True)

    return run


def test_a_rerun_takes_over_the_tiny_clip_only_when_its_renders_are_the_same(tmp_path, base_params):
    """DVC reruns prepare_clip for any dataset change; the tiny CLIP is retrained only when what
    it learns from changes (its settings, what the renders look like, its code)."""
    import copy

    base_params = micro_clip(base_params)
    run = prepare_clip_runner(tmp_path)
    first, trained, weights = run(base_params, "first")
    split_only = copy.deepcopy(base_params)
    split_only["dataset"].update(num_train=7, seed=3, cooccurrence=0.5)
    again, retrained, same = run(split_only, "second", "first")
    assert trained == [0, 1, 2] and retrained == []
    assert again["train_seconds"] == first["train_seconds"]
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    looks = copy.deepcopy(base_params)
    looks["dataset"]["distractor"] = 0.5  # the renders change
    _, retrained, _ = run(looks, "third", "first")
    assert retrained == [0, 1, 2]


def test_a_shipped_clip_is_taken_over_bit_for_bit_and_only_from_its_own_settings(tmp_path, base_params, monkeypatch):
    """A shipped CLIP holds only the token rows its prompts use; taken over, it is the trained
    CLIP to the bit. Any other setting, or `clip.shipped: false`, trains one."""
    import copy

    from pipeline.clip import shipped

    monkeypatch.setattr(shipped, "TENSORS", tmp_path / "shipped.pt")
    monkeypatch.setattr(shipped, "META", tmp_path / "shipped.json")
    base_params = micro_clip(base_params)
    prepare = prepare_clip_runner(tmp_path)

    def run(raw, out, previous=None):
        return prepare(raw, out, previous)[1:]

    trained, weights = run(base_params, "trained")
    shipped.ship(tmp_path / "trained")
    tensors = torch.load(shipped.TENSORS, weights_only=True)
    assert tensors["token_rows"].shape == (len(tensors["token_ids"]), 16) and len(tensors["token_ids"]) < 60

    taken, same = run(base_params, "taken")
    assert trained == [0, 1, 2] and taken == []
    assert set(same) == set(weights) and all(torch.equal(weights[k], same[k]) for k in weights)
    kept, _ = run(base_params, "kept", previous="taken")  # a rerun keeps it, and says where it came from
    assert kept == [] and (tmp_path / "kept" / "clip.json").read_text() == (tmp_path / "taken" / "clip.json").read_text()

    not_shipped = copy.deepcopy(base_params)
    not_shipped["clip"]["shipped"] = False
    retrained, _ = run(not_shipped, "not_shipped", previous="taken")  # not even from a folder that took it over
    reseeded = copy.deepcopy(base_params)
    reseeded["clip"]["train"]["seed"] = 1
    other_seed, _ = run(reseeded, "reseeded")
    assert retrained == [0, 1, 2] and other_seed == [0, 1, 2]

    shipped.TENSORS.write_bytes(shipped.TENSORS.read_bytes()[:-8])  # a shipping cut short
    with pytest.raises(UserError, match="shipped.pt: missing or not the tensors shipped.json describes"):
        run(base_params, "half_shipped")


def test_the_shipped_clip_is_the_one_the_default_settings_and_code_train():
    """The default's prepare_clip takes over the shipped CLIP; after a change of the CLIP's
    settings or training code, train it once and ship it again (python -m pipeline.clip.shipped)."""
    import json

    from conftest import REPO
    from pipeline.clip import shipped
    from pipeline.clip.prepare import trained_from
    from pipeline.params import load_params

    shipped_from = json.loads(shipped.META.read_text())["trained_from"]
    assert shipped_from == trained_from(load_params(REPO / "params.yaml")), "the shipped CLIP is stale"
