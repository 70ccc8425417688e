"""Networks of design 3: key/shape contract, SDCLR branches against plain copies, pruning,
checkpoint loading."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import PruneMask, SDCLR, SimCLR, build_model, load_pretrained
from models.resnet_prune_multibn import PrunableConv2d
from models.utils import Normalize
from utils import InputError, rng_state

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'reference_state_dict.json')


def shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def randomise_batch_norms(model, seed=0):
    """Distinct affine parameters and running statistics in every BN (both of each pair)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def plain_copy(sdclr, branch):
    """A SimCLR (plain Conv2d/BatchNorm) holding SDCLR's dense (0) or pruned (1) branch:
    BN index `branch`, and for the pruned branch conv weights multiplied by their masks."""
    masks = {f'{name}.weight': m.prune_mask for name, m in sdclr.named_modules()
             if isinstance(m, nn.Conv2d)}
    state = {}
    for key, value in sdclr.state_dict().items():
        if f'bn_list.{1 - branch}.' in key:
            continue
        if branch == 1 and key in masks:
            value = value * masks[key]
        key = (key.replace(f'bn_list.{branch}.', '').replace('downsample.conv.', 'downsample.0.')
               .replace('downsample.bn.', 'downsample.1.').replace('backbone.fc.', 'projector.'))
        state[key] = value
    plain = SimCLR()
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def all_conv_magnitudes(model):
    return np.concatenate([m.weight.detach().abs().numpy().ravel()
                           for m in model.modules() if isinstance(m, nn.Conv2d)])


# ---------------------------------------------------------------- structure

@pytest.mark.parametrize('cls', [SimCLR, SDCLR])
def test_state_dict_keys_and_shapes_equal_reference(cls):
    with open(REFERENCE) as f:
        reference = json.load(f)[cls.__name__]
    assert shapes(cls()) == reference


@pytest.mark.parametrize('cls', [SimCLR, SDCLR])
@pytest.mark.parametrize('network, dim', [('resnet18', 512), ('resnet50', 2048)])
def test_feature_and_projection_sizes(cls, network, dim):
    torch.manual_seed(0)
    model = cls(network=network).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert model.features(x).shape == (2, dim)
        assert model(x).shape == (2, 128)
    head = model.projector if cls is SimCLR else model.backbone.fc
    assert head.fc1.weight.shape == (dim, dim) and head.fc2.weight.shape == (128, dim)
    assert head.fc2.bias is None


def test_resnet50_uses_bottlenecks():
    state = shapes(SimCLR(network='resnet50'))
    assert state['backbone.layer1.0.conv3.weight'] == [256, 64, 1, 1]
    assert state['backbone.layer1.0.downsample.0.weight'] == [256, 64, 1, 1]
    assert state['backbone.layer4.0.conv2.weight'] == [512, 512, 3, 3]
    assert sum(k.endswith('conv1.weight') and k.startswith('backbone.layer') for k in state) == 16
    assert 'backbone.layer1.0.downsample.conv.weight' in shapes(SDCLR(network='resnet50'))


def test_build_model_and_unknown_network():
    assert type(build_model(True)) is SDCLR and type(build_model(False)) is SimCLR
    with pytest.raises(InputError, match='unknown network'):
        build_model(False, network='resnet34')


def test_normalisation_and_initialisation():
    torch.manual_seed(0)
    model = SimCLR()
    norm = model.backbone.normalize
    assert torch.equal(norm.mean, torch.tensor([0.485, 0.456, 0.406]))
    assert torch.equal(norm.std, torch.tensor([0.229, 0.224, 0.225]))
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(Normalize()(x), expected)
    # Kaiming normal, fan_out, relu: std = sqrt(2 / (out_channels * k * k))
    w = model.backbone.layer4[1].conv2.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    assert w.mean().abs().item() < 1e-3
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


# ---------------------------------------------------------------- SDCLR branches

@pytest.fixture(scope='module')
def pruned_sdclr():
    torch.manual_seed(0)
    model = SDCLR()
    randomise_batch_norms(model)
    PruneMask(model).magnitude_prune(0.9)
    return model.eval()


def test_every_conv_is_prunable_and_no_linear_is():
    model = SDCLR()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(isinstance(m, PrunableConv2d) for m in convs)
    assert len(PruneMask(model).convs) == 20
    assert not any(hasattr(m, 'prune_mask') for m in model.modules() if isinstance(m, nn.Linear))


# The branch tests use 16x16 inputs: the same network (global pooling), a quarter of the CPU time.
def test_pruned_branch_equals_masked_plain_copy(pruned_sdclr):
    model, x = pruned_sdclr, torch.rand(4, 3, 16, 16)
    reference = plain_copy(model, branch=1)
    with torch.no_grad():
        model.backbone.set_prune_flag(True)
        pruned = model(x)
        model.backbone.set_prune_flag(False)
        dense = model(x)
        expected = reference(x)
    assert torch.allclose(pruned, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pruned, dense, rtol=1e-2, atol=1e-2)


def test_dense_branch_ignores_masks(pruned_sdclr):
    model, x = pruned_sdclr, torch.rand(4, 3, 16, 16)
    model.backbone.set_prune_flag(False)
    reference = plain_copy(model, branch=0)  # no masks applied
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)
        # features: dense branch before the head, even when the flag was left on
        model.backbone.set_prune_flag(True)
        features = model.features(x)
        assert torch.allclose(features, reference.features(x), rtol=1e-4, atol=1e-5)
        assert torch.allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_flag_selects_which_batch_norm_updates_statistics():
    torch.manual_seed(0)
    model = SDCLR().train()
    model.backbone.set_prune_flag(True)
    model(torch.rand(4, 3, 16, 16))
    for bn in (model.backbone.bn1, model.backbone.layer3[0].downsample.bn, model.backbone.fc.bn2):
        assert bn.bn_list[1].num_batches_tracked.item() == 1
        assert bn.bn_list[0].num_batches_tracked.item() == 0
        assert torch.all(bn.bn_list[0].running_mean == 0)


# ---------------------------------------------------------------- pruning

def test_magnitude_prune_0_9_matches_sorted_threshold():
    torch.manual_seed(0)
    model = SDCLR()
    masks = PruneMask(model)
    masks.magnitude_prune(0.9)
    magnitudes = all_conv_magnitudes(model)
    total = magnitudes.size
    threshold = np.sort(magnitudes)[min(math.ceil(0.9 * total), total - 1)]
    for m in masks.convs:
        assert torch.equal(m.prune_mask, (m.weight.abs() >= torch.tensor(threshold)).float())
    zeros = sum(int((m.prune_mask == 0).sum()) for m in masks.convs)
    assert masks.sparsity == zeros / total
    assert abs(zeros - 0.9 * total) <= 1
    masks.reset()
    assert masks.sparsity == 0
    assert all(torch.all(m.prune_mask == 1) for m in masks.convs)


def two_convs(magnitudes):
    """Two prunable 1x5 convs holding the given weights (alternating signs)."""
    model = nn.Sequential(PrunableConv2d(1, 1, (1, 5), bias=False),
                          PrunableConv2d(1, 1, (1, 5), bias=False))
    values = torch.tensor(magnitudes) * torch.tensor([1.0, -1.0] * 5)
    with torch.no_grad():
        model[0].weight.copy_(values[:5].view(1, 1, 1, 5))
        model[1].weight.copy_(values[5:].view(1, 1, 1, 5))
    return model


def kept(model):
    return torch.cat([m.prune_mask.flatten() for m in model]).tolist()


@pytest.mark.parametrize('fraction, expected', [
    (0.0, [1] * 10),                  # position 0: the smallest is the threshold, all kept
    (0.35, [0] * 4 + [1] * 6),        # position ceil(3.5) = 4: threshold 0.5
    (0.95, [0] * 9 + [1]),            # position ceil(9.5) = 10, clamped to 9
    (1.0, [0] * 9 + [1]),             # clamped to the last position
])
def test_threshold_position(fraction, expected):
    model = two_convs([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    PruneMask(model).magnitude_prune(fraction)
    assert kept(model) == expected


@pytest.mark.parametrize('fraction, expected', [
    (0.3, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]),   # threshold 0.3 (position 3): every 0.3 kept
    (0.5, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]),   # position 5 is still 0.3
    (0.6, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]),   # position 6: threshold 0.7
])
def test_ties_at_the_threshold_are_kept(fraction, expected):
    model = two_convs([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.7, 0.8, 0.9, 1.0])
    masks = PruneMask(model)
    masks.magnitude_prune(fraction)
    assert kept(model) == expected
    assert masks.sparsity == expected.count(0) / 10


def test_random_fraction_zeroes_an_exact_count_of_kept_weights():
    model = nn.Sequential(PrunableConv2d(1, 1, (1, 50), bias=False),
                          PrunableConv2d(1, 1, (1, 50), bias=False))
    with torch.no_grad():
        values = torch.randperm(100).float() + 1  # distinct magnitudes 1..100
        model[0].weight.copy_(values[:50].view(1, 1, 1, 50))
        model[1].weight.copy_(values[50:].view(1, 1, 1, 50))
    masks = PruneMask(model)
    masks.magnitude_prune(0.5)
    magnitude_only = torch.tensor(kept(model))
    torch.manual_seed(1)
    masks.magnitude_prune(0.5, random_fraction=0.2)
    first = torch.tensor(kept(model))
    assert masks.sparsity == 0.7  # ceil(0.5 * 100) + ceil(0.2 * 100) zeros
    assert torch.all(first <= magnitude_only)
    torch.manual_seed(1)
    masks.magnitude_prune(0.5, random_fraction=0.2)
    assert torch.equal(torch.tensor(kept(model)), first)
    torch.manual_seed(2)
    masks.magnitude_prune(0.5, random_fraction=0.2)
    assert not torch.equal(torch.tensor(kept(model)), first)
    # without a random fraction no random number is drawn (exact resume)
    state = torch.get_rng_state()
    masks.magnitude_prune(0.5)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(InputError, match='prune fractions'):
        masks.magnitude_prune(0.9, random_fraction=0.2)
    with pytest.raises(InputError, match='prune fractions'):
        masks.magnitude_prune(1.5)


def test_masks_are_buffers_outside_the_state_dict_on_the_weights_device():
    model = SDCLR()
    PruneMask(model).magnitude_prune(0.5)
    assert not any('prune_mask' in k for k in model.state_dict())
    assert not any('prune_mask' in name for name, _ in model.named_parameters())
    convs = PruneMask(model).convs
    assert all(m.prune_mask.shape == m.weight.shape and not m.prune_mask.requires_grad
               for m in convs)
    model.to(torch.float64)
    assert all(m.prune_mask.dtype == torch.float64 for m in convs)
    model.to('meta')
    assert all(m.prune_mask.device.type == 'meta' for m in convs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_masks_follow_the_model_to_cuda():
    model = SDCLR().cuda()
    masks = PruneMask(model)
    masks.magnitude_prune(0.9)
    assert all(m.prune_mask.device == m.weight.device for m in masks.convs)
    assert abs(masks.sparsity - 0.9) * sum(m.weight.numel() for m in masks.convs) <= 1


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope='module')
def trained_pair():
    torch.manual_seed(3)
    simclr, sdclr = SimCLR(), SDCLR()
    randomise_batch_norms(simclr, 1)
    randomise_batch_norms(sdclr, 2)
    return simclr, sdclr


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize('which', [0, 1])
def test_load_pretrained_round_trip_through_a_file(trained_pair, tmp_path, which):
    source = trained_pair[which]
    path = tmp_path / 'model.pt'
    torch.save({'state_dict': source.state_dict(), 'epoch': 3,
                'rng': rng_state()}, path)
    target = type(source)()
    assert load_pretrained(target, str(path)) is target
    assert_same_state(target, source)


def test_load_pretrained_strips_module_prefix_of_a_bare_state_dict(trained_pair):
    source = trained_pair[0]
    state = {f'module.{k}': v for k, v in source.state_dict().items()}
    target = SimCLR()
    load_pretrained(target, state)
    assert_same_state(target, source)


def test_sdclr_checkpoint_into_simclr_asks_for_prune(trained_pair, tmp_path):
    path = tmp_path / 'sdclr.pt'
    torch.save({'state_dict': trained_pair[1].state_dict()}, path)
    with pytest.raises(InputError) as e:
        load_pretrained(SimCLR(), str(path))
    assert str(e.value) == f'checkpoint {path} holds an SDCLR model (SDCLR/BCL-D): pass --prune'


def test_simclr_checkpoint_into_sdclr_asks_to_remove_prune(trained_pair):
    with pytest.raises(InputError, match=r'holds a SimCLR model \(SimCLR/BCL-I\): remove --prune'):
        load_pretrained(SDCLR(), {'state_dict': trained_pair[0].state_dict()})


def test_other_mismatches_list_keys(trained_pair):
    pattern = (r'missing keys: backbone\.layer1\.0\.bn3\.\S+, .* \(\+\d+ more\); '
               r'unexpected keys: none$')
    with pytest.raises(InputError, match=pattern):
        load_pretrained(SimCLR(network='resnet50'), trained_pair[0].state_dict())
    state = dict(trained_pair[0].state_dict())
    state['projector.fc2.weight'] = torch.zeros(64, 512)
    with pytest.raises(InputError, match='does not match the model.*projector.fc2.weight'):
        load_pretrained(SimCLR(), state)


def test_unreadable_checkpoints(tmp_path):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'this is not a checkpoint')
    with pytest.raises(InputError, match=r'cannot read checkpoint .*garbage\.pt \('):
        load_pretrained(SimCLR(), str(garbage))
    with pytest.raises(InputError, match='does not exist'):
        load_pretrained(SimCLR(), str(tmp_path / 'missing.pt'))
    with pytest.raises(InputError, match='holds no state dict'):
        load_pretrained(SimCLR(), [1, 2, 3])
