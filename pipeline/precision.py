"""Where a stage's nets run and in what precision (`distributed.use_gpu`, `distributed.precision`).

fp32 runs as written. bf16 runs the nets under autocast (convolutions and matrix products in
bfloat16, reductions and losses in float32) with the nets and their image batches in
channels_last, the layout tensor cores read without a transpose. Gradients and the weights stay
float32, so no loss scaling is needed (bfloat16 has float32's exponent range).
"""
from __future__ import annotations

import contextlib

import torch

from pipeline.errors import UserError


def stage_device(use_gpu: bool) -> torch.device:
    """The GPU when the params ask for one and there is one, else the CPU."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def required_device(use_gpu: bool) -> torch.device:
    """As stage_device, but a missing GPU is an error (training in this process: Ray would wait
    for a GPU worker instead)."""
    if use_gpu and not torch.cuda.is_available():
        raise UserError("distributed.use_gpu is true but torch sees no CUDA device; set -S distributed.use_gpu=false")
    return stage_device(use_gpu)


def autocast(device: torch.device, precision: str):
    """The context a net's forward pass (and its loss) runs in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepared_net(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The net in the memory layout its precision runs fastest in (in place)."""
    return net.to(memory_format=torch.channels_last) if precision == "bf16" else net


def prepared_images(images: torch.Tensor, precision: str) -> torch.Tensor:
    """An (N, 3, H, W) batch in the layout of prepared_net."""
    return images.contiguous(memory_format=torch.channels_last) if precision == "bf16" and images.dim() == 4 else images


def forward(net: torch.nn.Module, images: torch.Tensor, precision: str = "fp32"):
    """An inference pass: the net's outputs (a tensor or a dict of them) in float32, whatever
    precision the net ran in, so what follows (multi-scale sums, the walk, the CRF) is float32."""
    with autocast(images.device, precision):
        out = net(prepared_images(images, precision))
    return {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
