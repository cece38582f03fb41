"""The CLIMS losses against hand-computed values, and the batched CLIP pass against a per-pair loop."""
import math
import sys

import pytest
import torch
import yaml

from conftest import REPO
from pipeline.cam.losses import ClimsLoss, btm_loss, cbs_loss_per_class, cbs_loss_thresholded, otm_loss, reg_loss
from pipeline.params import LossWeights


def test_otm_and_btm_by_hand():
    s = torch.tensor([0.5, 0.25])
    assert otm_loss(s).item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    # BTM: -log(1 - s); a negative cosine is clamped to 1e-4 (no object left in the background)
    s_bg = torch.tensor([0.5, -0.2])
    assert btm_loss(s_bg).item() == pytest.approx((math.log(2) - math.log(1 - 1e-4)) / 2)
    # a cosine of 1 is clamped to 0.9999: finite
    assert otm_loss(torch.tensor([1.0])).item() == pytest.approx(-math.log(0.9999), rel=1e-3)  # float32
    assert btm_loss(torch.tensor([1.0])).item() == pytest.approx(-math.log(1e-4), rel=1e-4)


def test_cbs_threshold_counts_only_cosines_above_tau_and_sums():
    s = torch.tensor([[0.30, 0.10], [0.50, 0.26]], requires_grad=True)
    loss = cbs_loss_thresholded(s, tau=0.26)
    assert loss.item() == pytest.approx(-math.log(0.70) - math.log(0.50))  # 0.26 is not above 0.26
    loss.backward()
    assert s.grad[0, 1] == 0 and s.grad[1, 1] == 0  # below or at tau: no gradient at all
    assert s.grad[0, 0] == pytest.approx(1 / 0.70) and s.grad[1, 0] == pytest.approx(1 / 0.50)


def test_cbs_camera_ready_sums_each_pairs_mean_over_its_class_prompts():
    s = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.1, 0.1], [0.5, 0.5, 0.5]])
    own = torch.tensor([[True, True, False], [False, False, False], [False, False, True]])
    expected = (-math.log(0.5) - math.log(0.8)) / 2 + -math.log(0.5)  # the pair without prompts adds nothing
    assert cbs_loss_per_class(s, own).item() == pytest.approx(expected)
    assert cbs_loss_per_class(s, torch.zeros_like(own)).item() == 0


def test_reg_is_the_mean_over_every_class_channel_present_or_not():
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0] = 0.5  # present
    masks[0, 2] = 1.0  # absent but switched on
    assert reg_loss(masks).item() == pytest.approx((0.5 * 4 + 1.0 * 4) / 12)


class _FixedClip:
    """A stand-in CLIP whose image features are given per view (fg views, then bg views)."""

    image_size, mean, std = 2, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)

    def __init__(self, features: torch.Tensor):
        self.features = features

    def encode_prepared(self, views: torch.Tensor) -> torch.Tensor:
        assert len(views) == len(self.features)
        return self.features


def test_camera_ready_weights_a_chair_pair_three_times_by_hand():
    """VOC's camera-ready groups: a batch of a chair (image 0) and a dog (image 1). Feature axes
    0..2 are the chair, dog and 'river' texts; fg cosines 0.4 (chair) and 0.2 (dog), bg cosines
    0.3 and 0.1; the dog has 'river' as its own background prompt at a cosine of 0.25."""
    texts = torch.eye(4)[:2]  # classes: chair, dog
    backgrounds = torch.eye(4)[2:3]  # one prompt: river
    fg = torch.tensor([[0.4, 0.0, 0.0, 0.9165], [0.0, 0.2, 0.25, 0.9474]])
    bg = torch.tensor([[0.3, 0.0, 0.0, 0.9539], [0.0, 0.1, 0.0, 0.9950]])
    clip = _FixedClip(torch.cat([fg, bg]))
    loss_fn = ClimsLoss(clip, texts, backgrounds, LossWeights(otm=10.0, btm=25.0, cbs=29.5, reg=1.15), "camera_ready",
                        class_prompt_mask=torch.tensor([[False], [True]]), clip_input="clip",
                        class_weights=torch.tensor([3.0, 1.0]))
    masks = torch.full((2, 2, 2, 2), 0.5)
    out = loss_fn(torch.rand(2, 3, 4, 4), masks, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    otm = (3 * -math.log(0.4) + -math.log(0.2)) / 2  # the mean of the weighted terms, not / (3 + 1)
    btm = (3 * -math.log(0.7) + -math.log(0.9)) / 2
    cbs = -math.log(0.75)  # only the dog pair has prompts
    assert out["otm"].item() == pytest.approx(otm, rel=1e-5) and out["btm"].item() == pytest.approx(btm, rel=1e-5)
    assert out["cbs"].item() == pytest.approx(cbs, rel=1e-5) and out["reg"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(10 * otm + 25 * btm + 29.5 * cbs + 1.15 * 0.5, rel=1e-5)


def test_a_cosine_at_or_below_zero_gives_a_finite_loss_without_gradient():
    """The reference's camera-ready takes log(cosine) unclamped: NaN for a cosine <= 0. Here the
    clamp gives -log(1e-4) and no gradient; above 1e-4 the two agree."""
    s = torch.tensor([-0.1, 0.0, 0.3], requires_grad=True)
    loss = otm_loss(s)
    loss.backward()
    assert loss.item() == pytest.approx((2 * -math.log(1e-4) - math.log(0.3)) / 3, rel=1e-5)
    assert s.grad[0] == 0 and s.grad[1] == 0 and s.grad[2] == pytest.approx(-1 / (3 * 0.3))


@pytest.fixture(scope="module")
def tiny_clip():
    from pipeline.clip.model import build_tiny, freeze, wrap
    from pipeline.params import TinyClipArchitecture

    raw = yaml.safe_load((REPO / "params.yaml").read_text())["clip"]["architecture"]
    raw.update(embed_dim=32, vision={**raw["vision"], "width": 32, "layers": 1, "head_width": 16},
               text={**raw["text"], "width": 32, "layers": 1, "heads": 2})
    torch.manual_seed(0)
    model = build_tiny("clims-test-tiny", TinyClipArchitecture.model_validate(raw))
    return wrap(freeze(model), "clims-test-tiny")


def _loss(clip, variant):
    torch.manual_seed(1)
    classes = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    backgrounds = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    own = torch.rand(4, 5) < 0.5
    return ClimsLoss(clip, classes, backgrounds, LossWeights(otm=10.0, btm=24.0, cbs=1.0, reg=0.2), variant, tau=0.0, class_prompt_mask=own)


@pytest.mark.parametrize("variant", ["improved", "camera_ready"])
def test_one_batched_clip_pass_equals_a_loop_over_pairs(tiny_clip, variant):
    loss_fn = _loss(tiny_clip, variant)
    torch.manual_seed(2)
    images, masks = torch.rand(3, 3, 64, 64), torch.rand(3, 4, 16, 16)
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    batched = loss_fn(images, masks, labels)

    # the same losses, one pair and one view at a time, text embeddings looked up per pair
    otm, btm, cbs = [], [], []
    for n, k in labels.nonzero().tolist():
        mask = torch.nn.functional.interpolate(masks[n : n + 1, k : k + 1], size=(64, 64), mode="bilinear", align_corners=False)
        fg = tiny_clip.encode_images(images[n : n + 1] * mask)[0]
        bg = tiny_clip.encode_images(images[n : n + 1] * (1 - mask))[0]
        otm.append(-torch.log((fg @ loss_fn.class_embeddings[k]).clamp(1e-4, 0.9999)))
        btm.append(-torch.log(1 - (bg @ loss_fn.class_embeddings[k]).clamp(1e-4, 0.9999)))
        terms = -torch.log(1 - (loss_fn.background_embeddings @ fg).clamp(1e-4, 0.9999))
        if variant == "improved":
            cbs.append((terms * (loss_fn.background_embeddings @ fg > 0.0)).sum())
        elif loss_fn.class_prompt_mask[k].any():
            cbs.append(terms[loss_fn.class_prompt_mask[k]].mean())
    expected = {"otm": torch.stack(otm).mean(), "btm": torch.stack(btm).mean(), "cbs": torch.stack(cbs).sum()}
    for name, value in expected.items():
        assert batched[name].item() == pytest.approx(value.item(), abs=1e-5), name
    assert batched["otm"].item() > 0 and batched["cbs"].item() > 0  # the comparison is not vacuous


def test_clip_input_of_a_4x4_image_by_hand():
    """The reference's CLIP input: P and the ImageNet-normalised image resized to CLIP's size with
    align_corners=True (4 x 4 -> 2 x 2 keeps the four corners), multiplied there; a masked pixel is
    0, ImageNet's mean colour. The project's: P times the image in [0, 1] (a masked pixel black)."""
    from types import SimpleNamespace

    weights = LossWeights(otm=1.0, btm=1.0, cbs=1.0, reg=1.0)
    clip = SimpleNamespace(image_size=2)
    embeddings = torch.eye(3)
    reference = ClimsLoss(clip, embeddings, embeddings, weights, clip_input="imagenet")
    image = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).repeat(1, 1, 4, 4)  # ImageNet's mean colour
    image[0, :, 0, 0] += torch.tensor([0.229, 2 * 0.224, -0.225])  # normalised: (1, 2, -1) at the top-left corner
    image[0, :, 3, 3] = 0.0  # black at the bottom-right corner
    masks = torch.tensor([[0.5, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)  # P at CLIP's 2 x 2 already
    views = reference.views(image, masks, torch.tensor([0]), torch.tensor([0]))
    fg, bg = views[0], views[1]
    torch.testing.assert_close(fg[:, 0, 0], torch.tensor([0.5, 1.0, -0.5]))  # P 0.5 x (1, 2, -1)
    torch.testing.assert_close(bg[:, 0, 0], torch.tensor([0.5, 1.0, -0.5]))
    torch.testing.assert_close(fg[:, 0, 1], torch.zeros(3))  # the mean colour is 0 whatever P is
    black = -torch.tensor([0.485 / 0.229, 0.456 / 0.224, 0.406 / 0.225])
    torch.testing.assert_close(fg[:, 1, 1], torch.zeros(3))  # P = 0: masked, 0 in ImageNet space
    torch.testing.assert_close(bg[:, 1, 1], black)  # black shows in the background view
    # the project's input stays in [0, 1] at the image's size: the masked corner is black (0)
    pixels = ClimsLoss(clip, embeddings, embeddings, weights).views(image, masks, torch.tensor([0]), torch.tensor([0]))
    assert pixels.shape == (2, 3, 4, 4) and pixels[0, :, 3, 3].abs().max() == 0 and pixels.min() >= 0
    # the camera-ready reference's: the same in CLIP's normalisation, where CLIP's mean colour is 0
    clip.mean, clip.std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.25, 0.2, 0.1]).view(1, 3, 1, 1)
    camera_ready = ClimsLoss(clip, embeddings, embeddings, weights, clip_input="clip")
    fg, bg = camera_ready.views(image, masks, torch.tensor([0]), torch.tensor([0]))
    top_left = (image[0, :, 0, 0] - clip.mean.flatten()) / clip.std.flatten()
    torch.testing.assert_close(fg[:, 0, 0], 0.5 * top_left)
    torch.testing.assert_close(bg[:, 1, 1], -torch.tensor([0.5 / 0.25, 0.4 / 0.2, 0.3 / 0.1]))  # black, P = 0
    torch.testing.assert_close(fg[:, 1, 1], torch.zeros(3))


@pytest.mark.parametrize("clip_input", ["pixels", "imagenet", "clip"])
def test_gradients_reach_the_masks_through_the_frozen_clip(tiny_clip, clip_input):
    loss_fn = _loss(tiny_clip, "improved")
    loss_fn.clip_input = clip_input
    masks = torch.rand(2, 4, 16, 16, requires_grad=True)
    out = loss_fn(torch.rand(2, 3, 64, 64), masks, torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]]))
    out["loss"].backward()
    assert masks.grad[0, 0].abs().sum() > 0 and masks.grad[1, 1].abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.model.parameters())


def test_two_ddp_workers_halves_average_to_one_workers_gradient(tiny_clip):
    """DDP averages the workers' gradients: with the batch split in two (the same number of pairs
    each), the mean of the halves' mask gradients is the whole batch's, L_CBS (a sum) included."""
    images = torch.rand(4, 3, 64, 64)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]])  # 3 pairs in each half
    masks = torch.rand(4, 4, 16, 16, requires_grad=True)
    whole = _loss(tiny_clip, "improved")
    whole(images, masks, labels)["loss"].backward()
    expected, masks.grad = masks.grad.clone(), None
    halves = _loss(tiny_clip, "improved")
    halves.workers = 2
    for part in (slice(0, 2), slice(2, 4)):
        (halves(images[part], masks[part], labels[part])["loss"] / 2).backward()  # DDP's average over 2
    torch.testing.assert_close(masks.grad, expected)


def test_clip_checkpointing_gives_the_same_losses_and_mask_gradients(tiny_clip):
    loss_fn = _loss(tiny_clip, "improved")
    images, labels = torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    masks = torch.rand(2, 4, 16, 16)
    results = []
    for checkpointing in (False, True):
        tiny_clip.model.set_grad_checkpointing(checkpointing)
        leaf = masks.clone().requires_grad_()
        terms = loss_fn(images, leaf, labels)
        terms["loss"].backward()
        results.append((terms["loss"].detach(), leaf.grad))
    tiny_clip.model.set_grad_checkpointing(False)
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


def test_clip_sigmoid_scores_keep_a_gradient_where_the_cosine_clamp_has_none(tiny_clip):
    classes = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    plain = ClimsLoss(tiny_clip, classes, classes, LossWeights(otm=1.0, btm=0.0, cbs=0.0, reg=0.0), "improved", tau=0.0)
    scored = ClimsLoss(tiny_clip, classes, classes, LossWeights(otm=1.0, btm=0.0, cbs=0.0, reg=0.0), "improved", tau=0.0, score=(10.0, -5.0))
    cos = torch.tensor([-0.3, 0.5], requires_grad=True)
    assert scored.scores(cos)[1].item() == pytest.approx(0.5)  # sigmoid(10 * 0.5 - 5)
    otm_loss(plain.scores(cos)).backward()
    assert cos.grad[0] == 0  # the reference: below the 1e-4 clamp, nothing pulls the mask back
    cos.grad = None
    otm_loss(scored.scores(cos)).backward()
    assert cos.grad[0] < -4  # -d/ds log sigmoid(10 s - 5) = -10 (1 - p): about -10 here, halved by the mean


def test_tau_auto_is_halfway_between_the_clip_figures(tmp_path):
    import json

    from pipeline.cam.tau import resolve_tau
    from pipeline.errors import UserError
    from pipeline.params import ClimsLossSection

    cfg = ClimsLossSection(variant="improved", score="cosine", weights={"otm": 10.0, "btm": 24.0, "cbs": 1.0, "reg": 0.2},
                          tau="auto", class_backgrounds=None)
    figures = tmp_path / "clip.json"
    figures.write_text(json.dumps({"cos_object_vs_background_p99": 0.1, "cos_context_together_mean": 0.7}))
    tau, recorded = resolve_tau(cfg, figures)
    assert tau == pytest.approx(0.4) and recorded["tau_cos_context_together_mean"] == 0.7
    assert resolve_tau(cfg.model_copy(update={"tau": 0.26}), figures)[0] == 0.26
    with pytest.raises(UserError, match="missing.json: missing"):
        resolve_tau(cfg, tmp_path / "missing.json")
    # a CLIP probed where no object sat on its context: the figure is absent, and the error says why
    figures.write_text(json.dumps({"cos_object_vs_background_p99": 0.1, "eval_context_pairs": 0}))
    with pytest.raises(UserError, match=r"clip.json: lacks \['cos_context_together_mean'\] .*raise clip.train.eval_scenes"):
        resolve_tau(cfg, figures)


def test_voc_camera_ready_params_build_the_references_loss(tiny_clip):
    """dataset=voc12 with clims_loss=camera_ready, as `clims_loss_from` builds the loss from
    prepare_clip's texts: the 3x pair weights, boat's and train's own prompts, CLIP-space views."""
    from pipeline.cam.train import clims_loss_from
    from pipeline.config import compose
    from pipeline.params import validate

    params = validate(compose(["dataset=voc12", "clims_loss=camera_ready"], conf_dir=REPO / "conf"))
    names, backgrounds = params.dataset.class_names, params.dataset.background_prompt_names
    torch.manual_seed(0)
    texts = {"class_embeddings": torch.nn.functional.normalize(torch.randn(20, 32), dim=-1),
             "background_embeddings": torch.nn.functional.normalize(torch.randn(len(backgrounds), 32), dim=-1),
             "background_names": backgrounds}
    loss_fn = clims_loss_from(params, tiny_clip, texts, tau=0.26)
    weighted = {names[i] for i in (loss_fn.class_weights == 3).nonzero().flatten().tolist()}
    assert weighted == {"chair", "diningtable", "sofa"} and int((loss_fn.class_weights == 1).sum()) == 17
    own = {names[k]: [backgrounds[b] for b in row.nonzero().flatten().tolist()] for k, row in enumerate(loss_fn.class_prompt_mask) if row.any()}
    assert own == {"boat": ["river", "water", "lake", "sea", "building"], "train": ["railroad", "railway", "branches", "tree"]}
    assert (loss_fn.variant, loss_fn.clip_input, loss_fn.score) == ("camera_ready", "clip", None)
    labels = torch.zeros(2, 20)
    labels[0, [3, 8]] = 1  # a boat and a chair
    labels[1, 18] = 1  # a train
    out = loss_fn(torch.rand(2, 3, 64, 64), torch.rand(2, 20, 16, 16), labels)
    assert all(torch.isfinite(out[term]) for term in ("otm", "btm", "cbs", "reg", "loss")) and out["cbs"] > 0


def test_loss_pulls_scores_each_pair_as_training_does(tiny_clip):
    """benchmarks/loss_pulls.py's per-pair terms are the training loss of a batch holding that pair alone."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loss_pulls import pair_terms

    loss_fn = _loss(tiny_clip, "improved")
    loss_fn.score = (10.0, -5.0)  # the default's clip_sigmoid path
    torch.manual_seed(3)
    images, masks, class_ids = torch.rand(2, 3, 64, 64), (torch.rand(2, 64, 64) > 0.5).float(), torch.tensor([2, 4])
    terms = pair_terms(loss_fn, images, class_ids, masks, num_classes=4)
    for n, k in enumerate(class_ids.tolist()):
        labels, planes = torch.zeros(1, 4), torch.zeros(1, 4, 64, 64)
        labels[0, k - 1], planes[0, k - 1] = 1, masks[n]
        alone = loss_fn(images[n : n + 1], planes, labels)
        for name in ("otm", "btm", "cbs", "reg"):
            assert terms[name][n].item() == pytest.approx(alone[name].item(), abs=1e-5), name
    assert terms["cbs"].min() > 0  # tau 0: every prompt fires, so the CBS comparison is not vacuous


def test_loss_pulls_half_and_box_masks_by_hand():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loss_pulls import boxes, left_halves

    instances = torch.zeros(4, 8, dtype=torch.long)
    instances[1:3, 0:4] = 1  # columns 0-3: centre 1.5, keeps 0 and 1
    instances[0:4, 5:8] = 2  # columns 5-7: centre 6, keeps 5
    instances[1, 3] = 0  # a notch: the box still covers it
    exact = instances > 0
    half = left_halves(instances, exact)
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[1:3, 0:2] = True
    expected[0:4, 5] = True
    assert torch.equal(half, expected)
    box = torch.zeros(4, 8, dtype=torch.bool)
    box[1:3, 0:4] = True
    box[0:4, 5:8] = True
    assert torch.equal(boxes(instances, exact), box) and not torch.equal(box, exact)
