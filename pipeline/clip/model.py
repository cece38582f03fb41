"""The frozen CLIP that supervises CLIMS: building, saving, loading and masked-image encoding.

A CLIP folder (the prepare_clip stage's output) holds `clip.json` (architecture, weights file,
normalisation), the weights of a model trained here (`weights.pt`), and `text_embeddings.pt`
with the L2-normalised embedding of every prompt the later stages need, computed once.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.io import atomic_path, save_torch

# OpenAI CLIP's pixel statistics; the tiny CLIP is trained with the same normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
META_FILE, WEIGHTS_FILE, TEXT_FILE = "clip.json", "weights.pt", "text_embeddings.pt"


def tiny_open_clip_config(arch) -> dict:
    """An open_clip model config (the JSON format of open_clip/model_configs) for the tiny CLIP."""
    vision, text = arch.vision, arch.text
    return {
        "embed_dim": arch.embed_dim,
        # A sigmoid (multi-label) objective: p(visible) = sigmoid(10 * cosine - 5), 0.5 at cosine 0.5.
        # The scale stays fixed in training (see train_tiny_clip).
        "init_logit_scale": 2.302585,  # log(10)
        "init_logit_bias": -5.0,
        "vision_cfg": {
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "width": vision.width,
            "layers": vision.layers,
            "head_width": vision.head_width,
        },
        "text_cfg": {"context_length": text.context_length, "width": text.width, "heads": text.heads, "layers": text.layers},
    }


def register_config(name: str, config: dict) -> None:
    """Make an architecture known to open_clip at run time (its public add_model_config API).
    open_clip reads the file into its registry at once and keeps entries whose file is gone, so
    the file does not outlive the call (one folder per process was left in the temp dir)."""
    import open_clip

    with tempfile.TemporaryDirectory(prefix="open_clip_cfg_") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


@dataclass
class FrozenClip:
    """A CLIP model with its input size and normalisation; encodes masked images in pixel space."""

    model: torch.nn.Module
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    tokenizer: object

    def encode_images(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings of `images` (N,3,H,W in [0,1]) multiplied by `masks` (N,1,H,W).

        Masking happens in pixel space, before CLIP's own normalisation (a masked pixel is black,
        as in the CLIP's training); gradients flow into the masks.
        """
        x = images if masks is None else images * masks
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.encode_prepared((x - self.mean.to(x)) / self.std.to(x))

    def encode_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of inputs already at the CLIP's size and scale (no resize, no
        normalisation): what the reference feeds its CLIP."""
        return F.normalize(self.model.encode_image(x), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_text(self.tokenizer(texts).to(device)), dim=-1)


def wrap(model: torch.nn.Module, model_name: str) -> FrozenClip:
    import open_clip

    cfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return FrozenClip(
        model=model,
        image_size=int(size),
        mean=torch.tensor(cfg.get("mean", CLIP_MEAN)).view(1, 3, 1, 1),
        std=torch.tensor(cfg.get("std", CLIP_STD)).view(1, 3, 1, 1),
        tokenizer=open_clip.get_tokenizer(model_name),
    )


def build_tiny(model_name: str, arch) -> torch.nn.Module:
    return _tiny_architecture(model_name, tiny_open_clip_config(arch))


def _tiny_architecture(model_name: str, config: dict) -> torch.nn.Module:
    """The tiny CLIP's architecture with fresh weights, about to be trained or given its own.
    open_clip warns "Model initialized randomly" on the root logger whenever it builds one
    without a pretrained checkpoint; here that is expected, and the line alarmed users."""
    import open_clip

    def not_the_random_init_warning(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    register_config(model_name, config)
    root = logging.getLogger()
    root.addFilter(not_the_random_init_warning)
    try:
        return open_clip.create_model(model_name, pretrained=None)
    finally:
        root.removeFilter(not_the_random_init_warning)


def load_pretrained(model_name: str, weights: str | Path) -> torch.nn.Module:
    """An open_clip architecture with weights from a local file; never downloads."""
    import open_clip

    weights = Path(weights)
    if model_name not in open_clip.list_models():
        raise UserError(f"clip.model_name: '{model_name}' is not an open_clip architecture")
    if not weights.is_file():
        raise UserError(f"{weights}: CLIP weights file not found (clip.weights: an open_clip checkpoint for {model_name})")
    try:
        return open_clip.create_model(model_name, pretrained=str(weights), weights_only=True)
    except Exception as exc:  # a wrong or corrupt file: say which and what was expected
        if "weights_only" in str(exc):  # torch's own advice (to load it unsafely) is not ours to give
            reason = "it holds Python objects besides tensors; save the model's state_dict() instead"
        else:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        raise UserError(f"{weights}: not an open_clip checkpoint for {model_name} ({reason})") from None


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_clip(folder: Path, meta: dict, text_embeddings: dict, state_dict: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        save_torch(folder / WEIGHTS_FILE, state_dict)
    save_torch(folder / TEXT_FILE, text_embeddings)
    with atomic_path(folder / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def load_clip(folder: str | Path, device: str | torch.device = "cpu") -> tuple[FrozenClip, dict]:
    """The frozen CLIP and its cached text embeddings, as prepare_clip left them."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{meta_path}: no CLIP here (run the prepare_clip stage first)")
    meta = json.loads(meta_path.read_text())
    if meta["source"] == "tiny":
        model = _tiny_architecture(meta["model_name"], meta["open_clip_config"])
        model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    else:
        model = load_pretrained(meta["model_name"], meta["weights"])
    texts = torch.load(folder / TEXT_FILE, map_location="cpu", weights_only=True)
    return wrap(freeze(model.to(device)), meta["model_name"]), texts
