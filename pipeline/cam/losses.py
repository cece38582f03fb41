"""The CLIMS losses, computed from one batched pass of the frozen CLIP.

For every positive (image n, class k) pair of a batch, the foreground view P[n,k] * image and
the background view (1 - P[n,k]) * image go through CLIP's image encoder together, once; the
text embeddings are the ones prepare_clip cached. With s the cosine of L2-normalised features
(no logit scale, no softmax), c(s) = clamp(s, 1e-4, 0.9999) and w_k a class's pair weight
(`class_weights`, 1 unless set; the camera-ready VOC group: 3 for sofa, dining table, chair):

  L_OTM = mean over pairs of w_k * -log c(s(fg, t_k))        the object should be in the foreground
  L_BTM = mean over pairs of w_k * -log(1 - c(s(bg, t_k)))   and none of it left in the background
  L_CBS = background prompts b_l that the foreground should not match:
          improved:     sum over pairs and all prompts of 1[s(fg, b_l) > tau] * -log(1 - c(s))
          camera_ready: sum over pairs of the mean over the pair's class's own prompts (no
                        threshold; pairs of classes without prompts add nothing)
  L_REG = mean of P over pixels and every class channel, present or not (both variants)

The reference's camera-ready code takes no clamp: a foreground cosine <= 0 makes its loss NaN.
Here the clamp stays in both variants: OpenAI CLIP's image-text cosines (about 0.1-0.4) never
reach it, so the figures agree, and where a cosine does the term is finite with no gradient.

What CLIP sees (`clip_input`): "pixels" resizes P to the image (align_corners=False) and masks
the image in [0, 1], so a masked pixel is black, as the tiny CLIP saw in training; CLIP's own
normalisation follows. "imagenet" is the improved reference's: P and the ImageNet-normalised
image are resized to CLIP's input (bilinear, align_corners=True) and multiplied there, so a
masked pixel is 0 in ImageNet space (ImageNet's mean colour), and that goes to CLIP without its
normalisation. "clip" is the camera-ready reference's: the same with CLIP's own mean and std in
place of ImageNet's (a masked pixel is CLIP's mean colour).

The reference takes the log of raw cosines, which suits OpenAI CLIP (its image-text cosines
stay around 0.15-0.35). A CLIP trained with a sigmoid loss has cosines from about -0.5 to 0.9:
a dark or empty foreground scores below the 1e-4 clamp, where -log has no gradient left, and
a pair whose mask dies there never recovers. With `score` set, every s above is the CLIP's own
probability sigmoid(scale * cosine + bias) that the concept is visible; it stays in (0, 1)
with a gradient everywhere, and CBS still fires on the cosine test s > tau.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.nets.backbone import ImageNetNormalise
from pipeline.params import LossWeights

CLAMP = (1e-4, 0.9999)
TERMS = ("otm", "btm", "cbs", "reg")


def _neg_log(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(x.clamp(*CLAMP))


def _neg_log_complement(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(1 - x.clamp(*CLAMP))


# Each term per pair (and per background prompt for CBS); the losses below reduce them over a
# batch, benchmarks/loss_pulls.py reads them pair by pair.
def otm_terms(s_fg_class: torch.Tensor) -> torch.Tensor:
    return _neg_log(s_fg_class)


def btm_terms(s_bg_class: torch.Tensor) -> torch.Tensor:
    return _neg_log_complement(s_bg_class)


def cbs_terms_thresholded(s_fg_backgrounds: torch.Tensor, tau: float, firing: torch.Tensor | None = None) -> torch.Tensor:
    """Improved variant, per (pair, prompt): the term where the cosine exceeds tau, else 0
    (`firing` gives that test when the scores are not the cosines themselves)."""
    terms = _neg_log_complement(s_fg_backgrounds)
    return terms * (s_fg_backgrounds > tau if firing is None else firing)


def otm_loss(s_fg_class: torch.Tensor, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
    terms = otm_terms(s_fg_class)
    return (terms if pair_weights is None else terms * pair_weights).mean()


def btm_loss(s_bg_class: torch.Tensor, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
    terms = btm_terms(s_bg_class)
    return (terms if pair_weights is None else terms * pair_weights).mean()


def cbs_loss_thresholded(s_fg_backgrounds: torch.Tensor, tau: float, firing: torch.Tensor | None = None) -> torch.Tensor:
    """Improved variant: a sum over (pair, prompt) of the terms whose cosine exceeds tau."""
    return cbs_terms_thresholded(s_fg_backgrounds, tau, firing).sum()


def cbs_loss_per_class(s_fg_backgrounds: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """Camera-ready variant: the sum over pairs of each pair's mean over its class's prompts
    (rows of prompt_mask; a pair whose class has none adds nothing)."""
    terms = _neg_log_complement(s_fg_backgrounds) * prompt_mask
    return (terms.sum(1) / prompt_mask.sum(1).clamp(min=1)).sum()


def reg_loss(masks: torch.Tensor) -> torch.Tensor:
    """Mean of P over every class channel, present or absent, and every pixel."""
    return masks.mean()


class ClimsLoss(nn.Module):
    """Weighted CLIMS losses for a batch: images in [0, 1], masks P = sigmoid(logits), labels."""

    def __init__(self, clip, class_embeddings: torch.Tensor, background_embeddings: torch.Tensor,
                 weights: LossWeights, variant: str = "improved", tau: float = 0.26,
                 class_prompt_mask: torch.Tensor | None = None, score: tuple[float, float] | None = None,
                 clip_input: str = "pixels", class_weights: torch.Tensor | None = None, workers: int = 1):
        """`score` (scale, bias): score pairs by the CLIP's own sigmoid(scale * cosine + bias)
        instead of the cosine (see module doc); tau stays a cosine. `clip_input`: "pixels",
        "imagenet" or "clip" (module doc). `class_weights` (C,): each class's pair weight in
        OTM and BTM. `workers`: the DDP workers sharing the batch. L_CBS is a sum over the
        batch's pairs, not a mean: each worker sums its share, and DDP averages the workers'
        gradients, so the term is multiplied by `workers` to weigh what it weighs on one."""
        super().__init__()
        if variant not in ("improved", "camera_ready"):
            raise ValueError(f"unknown CLIMS variant {variant!r}")
        if clip_input not in ("pixels", "imagenet", "clip"):
            raise ValueError(f"unknown clip_input {clip_input!r}")
        if variant == "camera_ready" and class_prompt_mask is None:
            raise ValueError("the camera_ready variant needs each class's background prompts")
        self.clip, self.weights, self.variant, self.tau, self.score = clip, weights, variant, tau, score
        self.workers = workers
        self.clip_input, self.imagenet = clip_input, ImageNetNormalise()
        self.register_buffer("class_embeddings", class_embeddings)
        self.register_buffer("background_embeddings", background_embeddings)
        self.register_buffer("class_prompt_mask", class_prompt_mask if class_prompt_mask is not None else torch.zeros(0))
        self.register_buffer("class_weights", class_weights)

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] in the space the reference masks them in (clip_input imagenet or clip)."""
        if self.clip_input == "imagenet":
            return self.imagenet(images)
        return (images - self.clip.mean.to(images)) / self.clip.std.to(images)

    def views(self, images: torch.Tensor, masks: torch.Tensor, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The foreground views of the pairs (image n, class k), then their background views, as
        CLIP's encoder takes them."""
        if self.clip_input == "pixels":
            pair_images = images[n]
            pair_masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)[n, k].unsqueeze(1)
        else:
            size = (self.clip.image_size, self.clip.image_size)
            pair_images = F.interpolate(self.normalised(images), size=size, mode="bilinear", align_corners=True)[n]
            pair_masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=True)[n, k].unsqueeze(1)
        return torch.cat([pair_images * pair_masks, pair_images * (1 - pair_masks)])

    def similarities(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor):
        """Cosines for every positive pair from one CLIP pass over all fg and bg views."""
        n, k = labels.nonzero(as_tuple=True)
        views = self.views(images, masks, n, k)
        features = self.clip.encode_images(views) if self.clip_input == "pixels" else self.clip.encode_prepared(views)
        with torch.autocast(features.device.type, enabled=False):  # cosines in float32, whatever CLIP ran in
            if features.dtype != torch.float32:  # bf16 autocast: unit length again, in float32
                features = F.normalize(features.float(), dim=-1)
            fg, bg = features[: len(n)], features[len(n) :]
            texts = self.class_embeddings[k]
            return k, (fg * texts).sum(-1), (bg * texts).sum(-1), fg @ self.background_embeddings.T

    def scores(self, cosines: torch.Tensor) -> torch.Tensor:
        return cosines if self.score is None else torch.sigmoid(self.score[0] * cosines + self.score[1])

    def forward(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        k, cos_fg, cos_bg, cos_fg_backgrounds = self.similarities(images, masks, labels)
        s_fg, s_bg, s_fg_backgrounds = self.scores(cos_fg), self.scores(cos_bg), self.scores(cos_fg_backgrounds)
        if self.variant == "improved":
            cbs = cbs_loss_thresholded(s_fg_backgrounds, self.tau, firing=cos_fg_backgrounds > self.tau)
        else:
            cbs = cbs_loss_per_class(s_fg_backgrounds, self.class_prompt_mask[k])
        pair_weights = None if self.class_weights is None else self.class_weights[k]
        terms = {"otm": otm_loss(s_fg, pair_weights), "btm": btm_loss(s_bg, pair_weights), "cbs": cbs * self.workers,
                 "reg": reg_loss(masks)}
        terms["loss"] = sum(getattr(self.weights, name) * terms[name] for name in TERMS)
        return terms
