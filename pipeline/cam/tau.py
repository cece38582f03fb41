"""The CBS threshold tau, derived from the CLIP's own cosines."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError

TAU_LOW, TAU_HIGH = "cos_object_vs_background_p99", "cos_context_together_mean"


def resolve_tau(loss_cfg, clip_metrics: Path) -> tuple[float, dict]:
    """The CBS threshold: the configured number, or for 'auto' the CLIP's own boundary between a
    lone object (p99 of its cosines with background prompts) and an object shown with its
    context (the mean cosine with the context's prompt): halfway between the two."""
    if loss_cfg.tau != "auto":
        return float(loss_cfg.tau), {}
    if not clip_metrics.is_file():
        raise UserError(f"{clip_metrics}: missing; clims_loss.tau 'auto' reads the CLIP's cosines from it (run prepare_clip)")
    figures = json.loads(clip_metrics.read_text())
    missing = [k for k in (TAU_LOW, TAU_HIGH) if k not in figures]
    if missing:
        why = " (no held-out render showed an object on its context: raise clip.train.eval_scenes)" \
            if figures.get("eval_context_pairs") == 0 else ""
        raise UserError(f"{clip_metrics}: lacks {missing} for clims_loss.tau 'auto'{why}; set tau to a number")
    low, high = figures[TAU_LOW], figures[TAU_HIGH]
    return (low + high) / 2, {f"tau_{TAU_LOW}": low, f"tau_{TAU_HIGH}": high}
