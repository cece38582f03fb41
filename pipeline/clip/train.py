"""Train the tiny CLIP on views of the synthetic world with a multi-label image-text objective.

Every concept prompt is scored against every view by a sigmoid of (scale * cosine + bias), as in
SigLIP, with the view's visibility of that concept as the (soft) target: each visible object and
background is a positive for its own prompt, so several concepts can be present at once.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.clip.model import FrozenClip
from pipeline.clip.views import ScenePool, sample_views, view_probs


def multilabel_loss(
    clip: FrozenClip, images: torch.Tensor, text_features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
    num_classes: int, absent_weight: float = 0.0,
):
    """Weighted sigmoid BCE over every (view, concept) pair, plus `absent_weight` times the mean
    of relu(cosine)^2 over the pairs of a view and one of the first `num_classes` concepts (the
    objects) that it does not show. The sigmoid stops pushing once an absent object's cosine is
    below about 0.2, so what is left there is whatever the view has in common with the object (a
    bird's trees score higher than sand); CLIMS reads raw cosines, and L_BTM pays for that."""
    image_features = clip.encode_images(images)
    model = clip.model
    # (scale * features) @ texts, the order the default CLIP was trained in: scaling the product
    # instead moves the weights' last bits, and every figure downstream with them.
    logits = model.logit_scale.exp() * image_features @ text_features.T + model.logit_bias
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    if absent_weight:
        cosines = image_features @ text_features[:num_classes].T
        absent = targets[:, :num_classes] == 0
        loss = loss + absent_weight * F.relu(cosines[absent]).square().mean()
    return loss


class UsedTokenRows(torch.nn.Module):
    """A token embedding holding only the rows of the tokens the prompts use. The tiny CLIP's
    table has a row for each of the tokenizer's ~49k tokens (6.3 M of its 7.3 M parameters) and
    all but ~30 get no gradient, yet AdamW, gradient clipping and the dense embedding gradient
    touch every row at every step."""

    def __init__(self, table: torch.nn.Embedding, tokens: torch.Tensor):
        super().__init__()
        self.used = tokens.unique()
        self.rows = torch.nn.Parameter(table.weight.detach()[self.used].clone())
        lookup = torch.full((table.num_embeddings,), -1, dtype=torch.long)
        lookup[self.used] = torch.arange(len(self.used))
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lookup[ids], self.rows)


@contextlib.contextmanager
def used_token_rows(model: torch.nn.Module, tokens: torch.Tensor):
    """Train `model` with a token table of the rows `tokens` use; the trained rows are written
    back into the full table on exit, the others left as initialised (as full-table training
    leaves them: no gradient and no weight decay ever reach them)."""
    table = model.token_embedding
    model.token_embedding = UsedTokenRows(table, tokens)
    try:
        yield
    finally:
        with torch.no_grad():
            table.weight[model.token_embedding.used] = model.token_embedding.rows
        model.token_embedding = table


def train_tiny_clip(
    clip: FrozenClip,
    pool: ScenePool,
    prompts: list[str],
    train,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Optimise `clip.model` in place for `train.steps` steps; returns the loss per step."""
    torch.manual_seed(train.seed)
    model = clip.model.train()
    tokens = clip.tokenizer(prompts)
    with used_token_rows(model, tokens):
        losses = _optimise(clip, pool, tokens, train, on_step)
    model.eval()
    return losses


def _optimise(clip: FrozenClip, pool: ScenePool, tokens: torch.Tensor, train, on_step) -> list[float]:
    generator = torch.Generator().manual_seed(train.seed)
    model = clip.model
    # A learnable temperature grows and squeezes all cosines into a narrow band (seen: scale 20,
    # positives at 0.55, negatives at 0.33); a fixed one makes the cosines themselves separate,
    # which is what CLIMS's losses read.
    model.logit_scale.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in trainable if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=train.lr
    )

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    probs = view_probs(train.part_views)
    losses = []
    for step in tqdm(range(train.steps), desc="train tiny CLIP", unit="step", mininterval=5):
        images, targets, weights = sample_views(pool, train.batch_size, generator, probs, train.part_is_object,
                                                  train.object_ramp, train.purity)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
        loss = multilabel_loss(clip, images, text_features, targets, weights, pool.num_classes, train.absent_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
