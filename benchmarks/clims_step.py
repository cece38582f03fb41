"""The CLIMS training step against the original formulation, side by side on the same inputs.

original: three CLIP image passes per step (the foreground stack, the background stack, and the
          foreground stack again for CBS) and the text encoder re-run every step for the class
          and background prompts;
batched:  pipeline.cam.losses.ClimsLoss, one CLIP pass over foreground and background views
          together, text embeddings computed once by prepare_clip.
Both are checked to give equal losses and equal gradients before timing.

    python benchmarks/clims_step.py [--batch 16] [--steps 20] [--device cpu|cuda]

Uses the CLIP in artifacts/clip and the images in data/ when they exist (else a freshly
initialised tiny CLIP and random images: the timing does not depend on the weights).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import REPO, write_results
from pipeline.cam.losses import ClimsLoss, btm_loss, cbs_loss_thresholded, otm_loss, reg_loss
from pipeline.nets.cam_net import build_cam_net
from pipeline.params import load_params



def load_supervisor(params, device):
    from pipeline.clip import model as clip_model

    folder = REPO / "artifacts" / "clip"
    if (folder / "clip.json").is_file():
        clip, texts = clip_model.load_clip(folder, device)
        return clip, texts["class_prompts"], texts["background_prompts"]
    clip = clip_model.wrap(clip_model.freeze(clip_model.build_tiny(params.clip.model_name, params.clip.architecture)), params.clip.model_name)
    clip.model.to(device)
    template = params.dataset.prompt_template
    return clip, [template.format(c) for c in params.dataset.class_names], [template.format(b) for b in params.dataset.background_prompt_names]


def load_batch(params, batch: int):
    from pipeline.data.images import load_image
    from pipeline.data.training_sets import multi_hot
    from pipeline.data.manifest import read_manifest

    manifest = REPO / "data" / "train.parquet"
    num_classes = len(params.dataset.class_names)
    if manifest.is_file():
        records = [r for r in read_manifest(manifest) if r.class_ids][:batch]
        return torch.stack([load_image(r.image_path) for r in records]), torch.stack([multi_hot(r.class_ids, num_classes) for r in records])
    size = params.dataset.image_size
    labels = (torch.rand(batch, num_classes) < 0.3).float()
    labels[labels.sum(1) == 0, 0] = 1
    return torch.rand(batch, 3, size, size), labels


def original_losses(clip, class_prompts, background_prompts, weights, tau, images, masks, labels):
    """The original formulation: three image passes, text encoded anew."""
    class_embeddings = F.normalize(clip.model.encode_text(clip.tokenizer(class_prompts).to(images.device)), dim=-1)
    background_embeddings = F.normalize(clip.model.encode_text(clip.tokenizer(background_prompts).to(images.device)), dim=-1)
    n, k = labels.nonzero(as_tuple=True)
    pair_masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)[n, k].unsqueeze(1)
    fg = clip.encode_images(images[n] * pair_masks)
    bg = clip.encode_images(images[n] * (1 - pair_masks))
    fg_again = clip.encode_images(images[n] * pair_masks)
    terms = {
        "otm": otm_loss((fg * class_embeddings[k]).sum(-1)),
        "btm": btm_loss((bg * class_embeddings[k]).sum(-1)),
        "cbs": cbs_loss_thresholded(fg_again @ background_embeddings.T, tau),
        "reg": reg_loss(masks),
    }
    terms["loss"] = sum(getattr(weights, name) * terms[name] for name in ("otm", "btm", "cbs", "reg"))
    return terms


def timed(step, steps: int, device) -> float:
    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tau", type=float, default=0.3)
    args = parser.parse_args()
    device = torch.device(args.device)
    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)

    clip, class_prompts, background_prompts = load_supervisor(params, device)
    weights = params.clims_loss.weights
    with torch.no_grad():
        class_embeddings, background_embeddings = clip.encode_texts(class_prompts), clip.encode_texts(background_prompts)
    batched = ClimsLoss(clip, class_embeddings, background_embeddings, weights, "improved", args.tau).to(device)
    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), len(params.dataset.class_names), bias=True).to(device)
    images, labels = (t.to(device) for t in load_batch(params, args.batch))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)

    def losses(kind):
        masks = torch.sigmoid(net(images))
        if kind == "batched":
            return batched(images, masks, labels)
        return original_losses(clip, class_prompts, background_prompts, weights, args.tau, images, masks, labels)

    # Same inputs, same losses, same gradients.
    grads = {}
    for kind in ("original", "batched"):
        net.zero_grad()
        terms = losses(kind)
        terms["loss"].backward()
        grads[kind] = (terms, torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    difference = {name: abs(float(grads["original"][0][name].detach() - grads["batched"][0][name].detach()))
                  for name in ("otm", "btm", "cbs", "reg", "loss")}
    gradient_difference = float((grads["original"][1] - grads["batched"][1]).abs().max())
    assert max(difference.values()) < 1e-4 and gradient_difference < 1e-4, (difference, gradient_difference)

    def step(kind):
        def run():
            optimizer.zero_grad(set_to_none=True)
            losses(kind)["loss"].backward()
            optimizer.step()
        return run

    seconds = {kind: timed(step(kind), args.steps, device) for kind in ("original", "batched")}
    report = {
        "device": str(device), "batch": args.batch, "pairs": int(labels.sum()),
        "original_ms": 1000 * seconds["original"], "batched_ms": 1000 * seconds["batched"],
        "speedup": seconds["original"] / seconds["batched"],
        "max_loss_difference": max(difference.values()), "max_gradient_difference": gradient_difference,
    }
    write_results(f"clims_step_{device.type}", report)


if __name__ == "__main__":
    main()
