"""The CAM net's training modes: which BatchNorm layers keep their statistics and affine, and the
CLIMS net's head with or without a bias."""
import pytest
import torch
import torch.nn as nn

from pipeline.cam.ray_train import clims_net_from
from tiny_scenes import SMALL, cam_net


def _after_one_step(frozen_stem: bool, batchnorm_stats: str):
    """(stem BN, a later BN): whether each one's running mean and its weight moved in one SGD step."""
    net = cam_net()
    backbone, head = net.parameter_groups(frozen_stem, batchnorm_stats)
    optimiser = torch.optim.SGD([{"params": backbone}, {"params": head}], lr=0.5)
    norms = [m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    stem, later = [m for m in net.backbone.stem.modules() if isinstance(m, nn.BatchNorm2d)][0], norms[-1]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in (stem, later)]
    net.train()
    torch.manual_seed(1)
    net(torch.rand(4, 3, 32, 32) * 3).pow(2).mean().backward()
    optimiser.step()
    return [(not torch.equal(m.running_mean, mean), not torch.equal(m.weight, weight))
            for m, (mean, weight) in zip((stem, later), before)]


@pytest.mark.parametrize("frozen_stem, batchnorm_stats, stem_moves, later_moves", [
    (False, "batch", (True, True), (True, True)),          # the synthetic baseline
    (True, "running_stem", (False, False), (True, True)),  # the synthetic CLIMS net
    (True, "batch", (True, False), (True, True)),          # the reference's CLIMS net: bn1's statistics move, its affine not
    (False, "running", (False, False), (False, False)),    # the reference's baseline: IRN's FixedBatchNorm
])
def test_batchnorm_modes_fix_what_they_say(frozen_stem, batchnorm_stats, stem_moves, later_moves):
    stem, later = _after_one_step(frozen_stem, batchnorm_stats)
    assert stem == stem_moves and later == later_moves


def test_clims_head_starts_as_the_baseline_with_or_without_a_bias():
    baseline = cam_net()
    images = torch.rand(2, 3, 32, 32)
    expected = baseline(images)
    without = clims_net_from(baseline, SMALL, None).eval()
    assert without.classifier.bias is None  # the reference's head
    torch.testing.assert_close(without(images), expected)
    shifted = clims_net_from(baseline, SMALL, -4.0).eval()
    assert shifted.classifier.bias.tolist() == [-4.0] * 3
    torch.testing.assert_close(shifted(images), expected - 4.0)
    scaled = clims_net_from(baseline, SMALL, -4.0, head_scale=0.1).eval()
    torch.testing.assert_close(scaled(images), 0.1 * expected - 4.0)
    torch.testing.assert_close(baseline(images), expected)  # the baseline's own head is left alone


@pytest.mark.parametrize("name", ["small_resnet", "resnet50"])
def test_activation_checkpointing_gives_the_same_outputs_gradients_and_statistics(name):
    """distributed.activation_checkpointing: block outputs kept, the rest recomputed in the
    backward pass, each batch counted once in BatchNorm's running statistics."""
    import copy

    from pipeline.nets.backbone import build_backbone
    from pipeline.nets.cam_net import CamNet
    from pipeline.params import BackboneSection

    cfg = SMALL if name == "small_resnet" else BackboneSection(name="resnet50", strides=[2, 2, 2, 1], widths=None, blocks=None, weights=None)
    torch.manual_seed(0)
    plain = CamNet(build_backbone(cfg), 3, bias=True).train()
    recomputed = copy.deepcopy(plain)
    recomputed.backbone.checkpointing = True
    images = torch.rand(2, 3, 64, 64)
    outputs = []
    for net in (plain, recomputed):
        out = net(images)
        out.pow(2).mean().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[0], outputs[1])
    for (key, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=key)
    for (key, a), b in zip(plain.state_dict().items(), recomputed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)  # running means, variances and batch counts


def _receptive_field(blocks: list[int]) -> int:
    """How many input columns reach the centre cell of the output (the support of its gradient)."""
    from pipeline.nets.backbone import small_resnet

    torch.manual_seed(0)
    net = small_resnet([8, 8, 16, 16], blocks, [1, 2, 1, 1]).eval()
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = net(image)
    out[0, :, out.shape[-2] // 2, out.shape[-1] // 2].sum().backward()
    columns = torch.nonzero(image.grad.abs().sum((0, 1, 2)))
    return int(columns.max() - columns.min() + 1)


def test_a_small_resnet_without_its_last_layers_sees_less_of_the_image():
    # stem conv 3 and max-pool 3/2: 5 px; each BasicBlock at jump 2 adds 8, at jump 4 16 (layer2's
    # strided conv adds 4): 25 px with layers 3 and 4 left out, 57 with every layer
    assert _receptive_field([1, 1, 0, 0]) == 25
    assert _receptive_field([1, 1, 1, 1]) == 57
    from pipeline.nets.backbone import small_resnet

    shallow = small_resnet([8, 8, 16, 16], [1, 1, 0, 0], [1, 2, 1, 1])
    assert shallow.out_channels == 8 and shallow(torch.rand(1, 3, 64, 64)).shape == (1, 8, 16, 16)


def test_a_left_out_layer_cannot_carry_a_stride():
    from pydantic import ValidationError

    from pipeline.params import BackboneSection

    with pytest.raises(ValidationError, match="layer3 has no blocks to carry its stride"):
        BackboneSection(name="small_resnet", strides=[1, 2, 2, 1], widths=[8, 8, 16, 16], blocks=[1, 1, 0, 0], weights=None)
    with pytest.raises(ValidationError, match="at least one block"):
        BackboneSection(name="small_resnet", strides=[1, 1, 1, 1], widths=[8, 8, 16, 16], blocks=[0, 0, 0, 0], weights=None)
