"""bf16 autocast (distributed.precision) against float32: the same losses and gradients within
bfloat16's precision (8 bits of mantissa: ~0.4 % per rounding), for every training step."""
from functools import partial

import pytest
import torch
import yaml

from conftest import REPO
from pipeline.cam.train import baseline_step, clims_step
from pipeline.irn.affinity import forward_offsets
from pipeline.irn.train import boundary_step
from pipeline.nets.boundary import BoundaryNet, boundary_map
from pipeline.nets.backbone import build_backbone
from pipeline.nets.cam_net import build_cam_net
from pipeline.nets.deeplab import build_seg_net
from pipeline.params import BackboneSection
from pipeline.precision import autocast, forward, prepared_images, prepared_net
from pipeline.seg.train import seg_step
from test_cam_losses import _loss, tiny_clip  # noqa: F401 (a fixture)

CPU = torch.device("cpu")
# Measured on this suite's nets: losses within 0.42 % (relative) of float32's; with BatchNorm's
# statistics fixed, gradients at a cosine >= 0.9995 with float32's (norm of the difference
# <= 3.4 %). With batch statistics a randomly initialised net's gradient is not comparable: BN's
# backward subtracts the upstream gradient's projections, and on these tiny nets what is left
# is of the size of bf16's rounding (seg: cosine 0.80), as on any bf16 run. The bounds leave
# room for another CPU's kernels.
LOSS_RTOL, GRAD_COSINE = 0.02, 0.995


def backbone():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["backbone"]
    return BackboneSection.model_validate({**raw, "widths": [8, 8, 16, 16]})


def step_in(precision: str, net, step, images, targets):
    """The step's terms and the flattened gradient of its loss, in `precision`."""
    net.zero_grad()
    with autocast(CPU, precision):
        terms = step(prepared_net(net, precision), prepared_images(images, precision), targets)
    terms["loss"].backward()
    grad = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    return {k: float(v.detach()) for k, v in terms.items()}, grad


def cases(clip):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    cam_net = build_cam_net(backbone(), 4, bias=True)
    grid = torch.randint(0, 3, (4, 16, 16))
    pixels = torch.randint(0, 3, (4, 64, 64))
    return {
        "baseline": (cam_net, baseline_step, images, labels),
        "clims": (cam_net, lambda net, x, y: clims_step(net, _loss(clip, "improved"), x, y), images, labels),
        "irn": (BoundaryNet(build_backbone(backbone()), 8), partial(boundary_step, offsets=forward_offsets(4)), images, grid),
        "seg": (build_seg_net(build_backbone(backbone()), 3, [2, 4], 8), partial(seg_step, balanced=True), images, pixels),
    }


@pytest.mark.parametrize("name", ["baseline", "clims", "irn", "seg"])
def test_bf16_steps_agree_with_fp32(tiny_clip, name):  # noqa: F811
    net, step, images, targets = cases(tiny_clip)[name]
    for mode in ("train", "eval"):  # eval: BatchNorm's statistics fixed, for the gradients
        net.train(mode == "train")
        state = {k: v.clone() for k, v in net.state_dict().items()}
        exact, exact_grad = step_in("fp32", net, step, images, targets)
        net.load_state_dict(state)
        fast, fast_grad = step_in("bf16", net, step, images, targets)
        for key, value in exact.items():
            assert fast[key] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-3), (mode, key)
    assert torch.nn.functional.cosine_similarity(exact_grad, fast_grad, dim=0) > GRAD_COSINE
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)


def test_inference_passes_return_float32_close_to_fp32():
    net = BoundaryNet(build_backbone(backbone()), 8).eval()
    images = torch.rand(2, 3, 64, 64)
    exact = boundary_map(net, images)
    fast = boundary_map(prepared_net(net, "bf16"), images, "bf16")
    assert fast.dtype == torch.float32 and (fast - exact).abs().max() < 0.02
    out = forward(build_seg_net(build_backbone(backbone()), 3, [2, 4], 8).eval(), images, "bf16")
    assert out["out"].dtype == torch.float32
