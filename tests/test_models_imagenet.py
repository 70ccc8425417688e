"""ResNet-50 with the ImageNet stem and the published ImageNet checkpoint layouts (design 9.2,
issue 23 item 3): stem hyper-parameters, equality with torchvision's ResNet-50, the 3-layer
head, and strict loading of every layout in tests/imagenet_state_dicts.json."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torchvision

from models import PruneMask, SDCLR, SimCLR, build_model, load_pretrained
from models.resnet_prune_multibn import PrunableConv2d
from models.utils import ProjectionHead, to_our_layout
from utils import InputError

LAYOUTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_state_dicts.json')
with open(LAYOUTS) as f:
    PUBLISHED = json.load(f)

# layout -> (our model, its build options, the published save format is {'state_dict': ...})
BUILD = {
    'sdclr_repo_resnet50_sdclr': (SDCLR, {'head_layers': 3}, True),
    'sdclr_repo_resnet50_simclr': (SimCLR, {'head_layers': 2}, True),
    'gh_simclr_imagenet': (SimCLR, {'head_layers': 2}, False),
    'gh_sdclr': (SDCLR, {'head_layers': 2}, False),
}


def our_key(layout, key):
    """Where a published key must land in our model (written out per layout, design 9)."""
    if layout.startswith('sdclr_repo'):
        if key.startswith('fc.') and layout.endswith('simclr'):
            return 'projector.' + key[len('fc.'):]
        return 'backbone.' + key
    return key


def random_state(layout, seed=0):
    """Random tensors with exactly the published keys and shapes; GH's encoder.* aliases are
    the same tensors as their twins, as torch.save keeps them."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in PUBLISHED[layout].items():
        if key.startswith('encoder.'):
            twin = ('backbone.' if key.startswith('encoder.0.') else 'projector.') + key[len('encoder.0.'):]
            state[key] = state[twin]
        elif key.endswith('num_batches_tracked'):
            state[key] = torch.randint(1, 1000, shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def build(layout, stem='imagenet', **overrides):
    cls, options, _ = BUILD[layout]
    return cls(network='resnet50', stem=stem, **{**options, **overrides})


@pytest.fixture(scope='module')
def models():
    """One model per layout, built once (ResNet-50 construction dominates the runtime)."""
    torch.manual_seed(0)
    return {layout: build(layout) for layout in BUILD}


# ---------------------------------------------------------------- stem and forward

def test_imagenet_stem_hyper_parameters_and_shapes():
    torch.manual_seed(0)
    model = SimCLR(network='resnet50', stem='imagenet').eval()
    conv, pool = model.backbone.conv1, model.backbone.maxpool
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) \
        == (3, 64, (7, 7), (2, 2), (3, 3))
    assert conv.bias is None and model.backbone.bn1.num_features == 64
    assert isinstance(pool, nn.MaxPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    sizes = {}

    def record(module, inputs, output):
        sizes['layer1'] = output.shape

    model.backbone.layer1.register_forward_hook(record)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert model.features(x).shape == (1, 2048)
        assert model(x).shape == (1, 128)
    assert sizes['layer1'] == (1, 256, 16, 16)  # 64 / 2 (conv) / 2 (max-pool)
    cifar = SimCLR(network='resnet50').backbone
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)


def test_imagenet_backbone_equals_torchvision_resnet50():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is really compared
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    reference.fc = nn.Identity()
    reference.eval()
    ours = SimCLR(network='resnet50', stem='imagenet').backbone.eval()
    state = dict(reference.state_dict(), **{'normalize.mean': ours.normalize.mean,
                                            'normalize.std': ours.normalize.std})
    ours.load_state_dict(state, strict=True)  # the same key names as torchvision's
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference((x - ours.normalize.mean.view(1, 3, 1, 1)) / ours.normalize.std.view(1, 3, 1, 1))
        got = ours.forward_features(x)
    assert got.shape == (2, 2048) and expected.abs().max() > 0.1
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_sdclr_imagenet_stem_is_prunable_and_paired():
    model = SDCLR(network='resnet50', stem='imagenet', head_layers=3)
    assert isinstance(model.backbone.conv1, PrunableConv2d)
    assert model.backbone.conv1.kernel_size == (7, 7)
    assert len(PruneMask(model).convs) == 53  # stem + 16 bottlenecks x 3 + 4 shortcuts
    assert len(model.backbone.bn1.bn_list) == 2
    head = model.backbone.fc
    assert head.fc2.weight.shape == (2048, 2048) and head.fc3.weight.shape == (128, 2048)
    assert len(head.bn3.bn_list) == 2 and head.fc2.bias is None and head.fc3.bias is None
    model.eval()
    with torch.no_grad():
        for flag in (False, True):
            model.backbone.set_prune_flag(flag)
            assert model(torch.rand(1, 3, 64, 64)).shape == (1, 128)


def test_three_layer_head_computes_linear_bn_relu_three_times():
    torch.manual_seed(0)
    head = ProjectionHead(8, layers=3)
    for bn in (head.bn1, head.bn2, head.bn3):
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_()
            bn.bias.normal_()
    head.eval()

    def bn(layer, x):
        return (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * layer.weight + layer.bias

    x = torch.randn(5, 8)
    h = torch.relu(bn(head.bn1, x @ head.fc1.weight.T + head.fc1.bias))
    h = torch.relu(bn(head.bn2, h @ head.fc2.weight.T))
    expected = bn(head.bn3, h @ head.fc3.weight.T)
    with torch.no_grad():
        got = head(x)
    assert got.shape == (5, 128) and torch.allclose(got, expected, atol=1e-5)
    assert sorted(k for k in head.state_dict() if k.endswith('weight')) == \
        ['bn1.weight', 'bn2.weight', 'bn3.weight', 'fc1.weight', 'fc2.weight', 'fc3.weight']


def test_build_options():
    model = build_model(True, 'resnet50', 1000, stem='imagenet', head_layers=3)
    assert type(model) is SDCLR and model.backbone.conv1.kernel_size == (7, 7)
    assert hasattr(model.backbone.fc, 'fc3')
    assert build_model(False, 'resnet50').backbone.conv1.kernel_size == (3, 3)  # CIFAR default
    with pytest.raises(InputError, match="unknown stem 'tiny': use one of cifar, imagenet"):
        build_model(False, stem='tiny')
    with pytest.raises(InputError, match='head_layers must be one of 2, 3, not 4'):
        build_model(True, head_layers=4)


# ---------------------------------------------------------------- published checkpoints

def test_layout_file_names_its_sources():
    for layout in BUILD:
        source = PUBLISHED['source'][layout]
        assert source['repo'].split('@')[1] in ('f1490fce26e6bb67d2c21b450db5a6e3184e6bc3',
                                                 '9f7057ce38438c53a8b4bff92b02e0cbb5f09e62')
        assert source['files']


@pytest.mark.parametrize('layout', list(BUILD))
def test_published_checkpoint_loads_strictly_into_the_right_places(layout, models, tmp_path):
    model = models[layout]
    state = random_state(layout)
    saved = {f'module.{k}': v for k, v in state.items()}  # DistributedDataParallel
    if BUILD[layout][2]:
        saved = {'state_dict': saved, 'epoch': 500}
    path = tmp_path / 'published.pt'
    torch.save(saved, path)
    assert load_pretrained(model, str(path)) is model
    ours = model.state_dict()
    targets = {k: our_key(layout, k) for k in state if not k.startswith('encoder.')}
    assert sorted(targets.values()) == sorted(ours)  # one-to-one onto our keys
    for key, target in targets.items():
        assert torch.equal(ours[target], state[key]), (key, target)


@pytest.mark.parametrize('layout', list(BUILD))
def test_a_missing_or_renamed_key_fails(layout, models):
    state = random_state(layout)
    key = next(k for k in state if 'layer3.2.bn2' in k and k.endswith('running_var'))
    alias = 'encoder.0.' + key[len('backbone.'):]
    missing = {k: v for k, v in state.items() if k not in (key, alias)}
    with pytest.raises(InputError, match=rf'missing keys: {our_key(layout, key)}; unexpected keys: none$'):
        load_pretrained(models[layout], missing)
    renamed = dict(missing)
    renamed[key.replace('layer3', 'layer5')] = state[key]
    with pytest.raises(InputError, match=r'unexpected keys: \S*layer5\.2\.bn2'):
        load_pretrained(models[layout], renamed)


def test_encoder_alias_must_be_a_copy(models):
    state = random_state('gh_simclr_imagenet')
    state['encoder.0.layer2.0.conv2.weight'] = state['encoder.0.layer2.0.conv2.weight'] + 1
    with pytest.raises(InputError, match=r'encoder\.0\.layer2\.0\.conv2\.weight is not a copy of '
                                         r'backbone\.layer2\.0\.conv2\.weight'):
        load_pretrained(models['gh_simclr_imagenet'], state)
    orphan = random_state('gh_simclr_imagenet')
    orphan['encoder.1.fc9.weight'] = torch.zeros(1)
    with pytest.raises(InputError, match='encoder.1.fc9.weight is not a copy of projector.fc9.weight'):
        to_our_layout(orphan)


def test_our_own_layout_is_unchanged():
    state = SimCLR().state_dict()
    assert to_our_layout(state).keys() == state.keys()


def test_cifar_stem_model_refuses_an_imagenet_checkpoint_with_stem_advice():
    cifar = SimCLR(network='resnet50')
    with pytest.raises(InputError) as e:
        load_pretrained(cifar, random_state('gh_simclr_imagenet'))
    message = str(e.value)
    assert 'backbone.conv1.weight (64, 3, 7, 7) (model: (64, 3, 3, 3))' in message
    assert message.endswith("-- this checkpoint has a 7x7 conv1: ImageNet stem; build with stem='imagenet'")
    assert '\n' not in message
    with pytest.raises(InputError, match=r"3x3 conv1: CIFAR stem; build with stem='cifar'$"):
        load_pretrained(build('gh_simclr_imagenet'), cifar.state_dict())


def test_head_layers_advice(models):
    two_layer = build('sdclr_repo_resnet50_sdclr', head_layers=2)
    with pytest.raises(InputError, match=r'unexpected keys: backbone\.fc\.bn3.* -- this checkpoint '
                                         r'has a 3-layer projection head; build with head_layers=3$'):
        load_pretrained(two_layer, random_state('sdclr_repo_resnet50_sdclr'))
    with pytest.raises(InputError, match='has a 2-layer projection head; build with head_layers=2$'):
        load_pretrained(models['sdclr_repo_resnet50_sdclr'], random_state('gh_sdclr'))
