"""The CLIMS training step against the original formulation, side by side on the same inputs.

original: three CLIP image passes per step (the foreground stack, the background stack, and the
          foreground stack again for CBS) and the text encoder re-run every step for the class
          and background prompts;
batched:  pipeline.cam.losses.ClimsLoss, one CLIP pass over foreground and background views
          together, text embeddings computed once by prepare_clip.
Both are checked to give equal losses and equal gradients (in float32) before timing; the
original then runs in float32 as its code does, the batched step in --precision (bf16:
pipeline.precision's autocast and channels_last).

    python benchmarks/clims_step.py [--arch tiny|real] [--batch 16] [--steps 20] [--device cpu|cuda]
                                    [--precision fp32|bf16] [--clip ViT-B-16-quickgelu]

tiny: the default's nets, with the CLIP in artifacts/clip and the images in data/ when they
exist (else a freshly initialised tiny CLIP and random images: the timing does not depend on
the weights). real: the voc12 group's ResNet-50 (strides 2, 2, 2, 1) at 512-pixel crops and an
open_clip CLIP (ViT-B/16 by default), randomly initialised, VOC's 20 classes with 1.5 per
image on average (27 pairs in a batch of 16, as VOC's statistics give), random images.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from common import REPO, write_results

sys.path.insert(0, str(REPO))  # runs from a checkout that is not installed (a GPU machine's torch)
from pipeline.cam.losses import ClimsLoss, btm_loss, cbs_loss_thresholded, otm_loss, reg_loss
from pipeline.nets.cam_net import build_cam_net
from pipeline.params import load_params
from pipeline.precision import autocast, prepared_images, prepared_net

REAL_CLIP = "ViT-B-16-quickgelu"  # --arch real's default: 196 patches a view (the voc12 group's ViT-B/32: 49)


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


def real_setup(params, args, device):
    """The voc12 group's params, a random CLIP of `args.clip` and a batch of random 512-pixel crops."""
    import open_clip

    from pipeline.clip import model as clip_model
    from pipeline.config import compose
    from pipeline.params import validate

    voc = validate(compose(["dataset=voc12"], REPO / "conf"))
    clip = clip_model.wrap(clip_model.freeze(open_clip.create_model(args.clip, pretrained=None)), args.clip)
    clip.model.to(device)
    template = voc.dataset.prompt_template
    prompts = ([template.format(c) for c in voc.dataset.prompt_names], [template.format(b) for b in voc.dataset.background_prompt_names])
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(args.batch, len(voc.dataset.class_names))
    for i in range(args.batch):  # 1 or 2 classes per image, 27 pairs in 16 images
        labels[i, torch.randperm(labels.shape[1], generator=generator)[: 1 + (i % 16 < 11)]] = 1
    images = torch.rand(args.batch, 3, voc.train_clims.crop_size, voc.train_clims.crop_size, generator=generator)
    return voc, (clip, *prompts), images, labels


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
    parser.add_argument("--arch", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--clip", default=REAL_CLIP, help="--arch real: the open_clip architecture")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the batched step's")
    args = parser.parse_args()
    device = torch.device(args.device)
    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)

    if args.arch == "real":
        params, (clip, class_prompts, background_prompts), images, labels = real_setup(params, args, device)
    else:
        clip, class_prompts, background_prompts = load_supervisor(params, device)
        images, labels = load_batch(params, args.batch)
    images, labels = images.to(device), labels.to(device)
    weights = params.clims_loss.weights
    with torch.no_grad():
        class_embeddings, background_embeddings = clip.encode_texts(class_prompts), clip.encode_texts(background_prompts)
    batched = ClimsLoss(clip, class_embeddings, background_embeddings, weights, "improved", args.tau).to(device)
    net = build_cam_net(params.backbone.model_copy(update={"weights": None}), len(params.dataset.class_names), bias=True).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)

    def losses(kind, precision="fp32"):
        if kind == "batched":
            with autocast(device, precision):
                masks = torch.sigmoid(net(prepared_images(images, precision)).float())
                return batched(images, masks, labels)
        masks = torch.sigmoid(net(images))
        return original_losses(clip, class_prompts, background_prompts, weights, args.tau, images, masks, labels)

    # Same inputs, same losses, same gradients, in true float32: a GPU's convolutions default to
    # TF32 (a 10-bit mantissa), under which the two differ by more than their summation orders.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    grads = {}
    for kind in ("original", "batched"):
        net.zero_grad()
        terms = losses(kind)
        terms["loss"].backward()
        grads[kind] = (terms, torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    # relative (to the loss, to the largest gradient): summation orders differ between one and three CLIP passes
    difference = {name: abs(float(grads["original"][0][name].detach() - grads["batched"][0][name].detach()))
                  / max(1.0, abs(float(grads["original"][0][name].detach()))) for name in ("otm", "btm", "cbs", "reg", "loss")}
    gradient_difference = float((grads["original"][1] - grads["batched"][1]).abs().max() / grads["original"][1].abs().max())
    assert max(difference.values()) < 1e-4 and gradient_difference < 1e-4, (difference, gradient_difference)

    def step(kind, precision="fp32"):
        def run():
            optimizer.zero_grad(set_to_none=True)
            losses(kind, precision)["loss"].backward()
            optimizer.step()
        return run

    seconds = {"original": timed(step("original"), args.steps, device)}
    prepared_net(net, args.precision)
    seconds["batched"] = timed(step("batched", args.precision), args.steps, device)
    report = {
        "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "arch": args.arch, **({"clip": args.clip, "crop": images.shape[-1]} if args.arch == "real" else {}),
        "precision": {"original": "fp32", "batched": args.precision}, "batch": args.batch, "pairs": int(labels.sum()),
        "original_ms": 1000 * seconds["original"], "batched_ms": 1000 * seconds["batched"],
        "speedup": seconds["original"] / seconds["batched"],
        "images_per_second": {kind: args.batch / s for kind, s in seconds.items()},
        "max_relative_loss_difference": max(difference.values()), "max_relative_gradient_difference": gradient_difference,
    }
    suffix = "" if args.arch == "tiny" else f"_real_{args.precision}"
    if args.arch == "real" and args.clip != REAL_CLIP:
        suffix += "_" + args.clip.removesuffix("-quickgelu").lower().replace("-", "_")  # ViT-B-32: _vit_b_32
    write_results(f"clims_step_{device.type}{suffix}", report)


if __name__ == "__main__":
    main()
