"""The default tiny CLIP, shipped with the code.

prepare_clip trains the tiny CLIP in 5-6 minutes of 2 cores, half of the default pipeline. A real
CLIMS run downloads its CLIP; the default takes over the one shipped here (TENSORS, META), which
prepare_clip trained from the default settings, as long as it was trained from exactly this run's
settings, world, prompts and training code (`trained_from`, pipeline/clip/prepare.py). Any other
setting, seed or an edited training module trains a new one; `clip.shipped: false` always does.

Only the token rows the prompts use are shipped (3.8 MiB instead of 29): the ~49k others
never receive a gradient, so training leaves them as initialised, and they are rebuilt that way.

    python -m pipeline.clip.shipped artifacts/clip    # ship the CLIP a prepare_clip run wrote
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline.clip import model as clip_model
from pipeline.errors import UserError
from pipeline.io import file_digest, save_torch, write_json

HERE = Path(__file__).resolve().parent
TENSORS, META = HERE / "tiny_default.pt", HERE / "tiny_default.json"
TABLE = "token_embedding.weight"


def take_over(trained_from: dict, model: torch.nn.Module) -> dict | None:
    """Load the shipped CLIP into `model` (built and initialised from the training seed) if it was
    trained from `trained_from`; returns its training figures, else None (model untouched)."""
    if not META.is_file():
        return None
    meta = json.loads(META.read_text())
    if meta["trained_from"] != trained_from:
        return None
    if not TENSORS.is_file() or file_digest(TENSORS) != meta["tensors_sha256"]:
        raise UserError(f"{TENSORS}: missing or not the tensors {META.name} describes; ship the CLIP again")
    shipped = torch.load(TENSORS, map_location="cpu", weights_only=True)
    used, rows = shipped.pop("token_ids"), shipped.pop("token_rows")
    state = model.state_dict()
    if set(shipped) | {TABLE} != set(state):
        raise UserError(f"{TENSORS}: its tensors are not the tiny CLIP's ({sorted(set(state) ^ (set(shipped) | {TABLE}))})")
    table = state[TABLE].clone()
    table[used] = rows
    model.load_state_dict({**shipped, TABLE: table})
    return meta["training"]


def ship(folder: Path) -> None:
    """Write TENSORS and META from the tiny CLIP in `folder` (a prepare_clip output)."""
    if not (folder / clip_model.META_FILE).is_file():
        raise UserError(f"{folder / clip_model.META_FILE}: no CLIP there (the output folder of prepare_clip)")
    meta = json.loads((folder / clip_model.META_FILE).read_text())
    if meta.get("source") != "tiny" or "trained_from" not in meta:
        raise UserError(f"{folder / clip_model.META_FILE}: not a trained tiny CLIP")
    state = torch.load(folder / clip_model.WEIGHTS_FILE, map_location="cpu", weights_only=True)
    import open_clip

    clip_model.register_config(meta["model_name"], meta["open_clip_config"])  # the tokenizer's context length
    used = open_clip.get_tokenizer(meta["model_name"])(meta["trained_from"]["prompts"]).unique()
    tensors = {k: v for k, v in state.items() if k != TABLE}
    save_torch(TENSORS, {**tensors, "token_ids": used, "token_rows": state[TABLE][used].clone()})
    # the tensors' digest in META: a half-done shipping is refused, never taken over
    write_json(META, {"trained_from": meta["trained_from"], "training": meta["training"], "tensors_sha256": file_digest(TENSORS)})
    print(f"shipped the tiny CLIP of {folder}: {TENSORS.name} ({TENSORS.stat().st_size / 2**20:.1f} MiB), {META.name}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pipeline.clip.shipped FOLDER  (a prepare_clip output, e.g. artifacts/clip)")
    try:
        ship(Path(sys.argv[1]))
    except UserError as error:
        raise SystemExit(f"error: {error}")
