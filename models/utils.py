"""Pieces shared by the SimCLR and SDCLR models: input normalisation, initialisation,
projection head, and the one checkpoint loader every script uses."""
import os

import torch
import torch.nn as nn

import checkpoint as checkpoint_files
from utils import InputError

MEAN = (0.485, 0.456, 0.406)  # design 3
STD = (0.229, 0.224, 0.225)
PROJECTION_DIM = 128
HEAD_LAYERS = (2, 3)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, so they are in the state dict."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean))
        self.register_buffer('std', torch.tensor(std))

    def forward(self, x):
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def init_weights(module):
    """Design 3: conv weights Kaiming normal (fan_out, relu); BatchNorm weight 1, bias 0.
    Linear layers keep PyTorch's default initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ProjectionHead(nn.Module):
    """`layers` Linear layers, each followed by a BatchNorm1d, ReLU in between.

    layers=2 (design 3, 9.2; GH's heads, the SDCLR repository's SimCLR head):
    Linear(d, d) -> BN -> ReLU -> Linear(d, 128, no bias) -> BN(128).
    layers=3 (the SDCLR repository's dual-BN `proj_head`, used by its SDCLR on ImageNet):
    Linear(d, d) -> BN -> ReLU -> Linear(d, d, no bias) -> BN -> ReLU -> Linear(d, 128, no bias)
    -> BN(128). `norm` builds the BatchNorm1d layers (SDCLR passes its paired BatchNorm).
    """

    def __init__(self, in_dim, norm=nn.BatchNorm1d, layers=2):
        super().__init__()
        if layers not in HEAD_LAYERS:
            raise InputError(f'head_layers must be one of {", ".join(map(str, HEAD_LAYERS))}, '
                             f'not {layers!r}')
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.bn1 = norm(in_dim)
        self.relu = nn.ReLU(inplace=True)
        if layers == 3:
            self.fc2 = nn.Linear(in_dim, in_dim, bias=False)
            self.bn2 = norm(in_dim)
            self.fc3 = nn.Linear(in_dim, PROJECTION_DIM, bias=False)
            self.bn3 = norm(PROJECTION_DIM)
        else:
            self.fc2 = nn.Linear(in_dim, PROJECTION_DIM, bias=False)
            self.bn2 = norm(PROJECTION_DIM)
        self.layers = layers

    def forward(self, x):
        x = self.bn2(self.fc2(self.relu(self.bn1(self.fc1(x)))))
        if self.layers == 3:
            x = self.bn3(self.fc3(self.relu(x)))
        return x


def _few(keys, n=3):
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' (+{len(keys) - n} more)' if len(keys) > n else '')


def state_dict_mismatch(model, state):
    """How `state` (a dict of tensors) differs from `model`'s state dict in keys or shapes, in words;
    None when it loads strictly."""
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        return f'missing keys: {_few(missing) or "none"}; unexpected keys: {_few(unexpected) or "none"}'
    shapes = [f'{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})' for k, v in expected.items()
              if state[k].shape != v.shape]
    return f'other shapes: {_few(shapes)}' if shapes else None


def to_our_layout(state):
    """Map a published ImageNet ResNet-50 layout (tests/imagenet_state_dicts.json, design 9) onto
    ours; our own layout passes through unchanged. Returns a new dict.

    - a bare ResNet (the SDCLR repository's train_simCLR.py: top-level conv1/bn1/.../fc, no
      `backbone.`): every key gets `backbone.`; its head at `fc.` becomes `projector.` unless the
      checkpoint is dual-BN (SDCLR keeps its head at backbone.fc);
    - GH's SimCLR_imagenet also saves `encoder.0.*` / `encoder.1.*`, the same tensors as
      `backbone.*` / `projector.*` (encoder = Sequential(backbone, projector)): they are dropped
      once each is checked equal to its twin; one that is not raises InputError.
    Nothing else is renamed or dropped, so any other difference still fails the strict load.
    """
    state = dict(state)
    if 'conv1.weight' in state and not any(k.startswith('backbone.') for k in state):
        head = 'backbone.fc.' if any('bn_list' in k for k in state) else 'projector.'
        state = {(head + k[len('fc.'):] if k.startswith('fc.') else 'backbone.' + k): v
                 for k, v in state.items()}
    for alias, twin in (('encoder.0.', 'backbone.'), ('encoder.1.', 'projector.')):
        for key in [k for k in state if k.startswith(alias)]:
            original = twin + key[len(alias):]
            if original not in state or not torch.equal(state[key], state[original]):
                raise InputError(f'{key} is not a copy of {original}: this is not the published '
                                 'SimCLR_imagenet layout (encoder = Sequential(backbone, projector))')
            del state[key]
    return state


def _head_layers(keys):
    return 3 if {'projector.fc3.weight', 'backbone.fc.fc3.weight'} & set(keys) else 2


def layout_advice(model, state):
    """One line naming the build option (stem, head_layers) that would make `state` fit `model`,
    or None when neither explains the mismatch."""
    expected = model.state_dict()
    conv1 = 'backbone.conv1.weight'
    if conv1 in state and conv1 in expected and state[conv1].shape != expected[conv1].shape:
        size = state[conv1].shape[-1]
        stem = {7: 'ImageNet stem', 3: 'CIFAR stem'}.get(size)
        if stem:
            return (f"this checkpoint has a {size}x{size} conv1: {stem}; build with "
                    f"stem='{'imagenet' if size == 7 else 'cifar'}'")
    layers = _head_layers(state)
    if layers != _head_layers(expected):
        return (f'this checkpoint has a {layers}-layer projection head; build with '
                f'head_layers={layers}')
    return None


# what to tell a user whose checkpoint is of the other family (test.py's flags; train.py passes its own)
PRUNE_FLAG_ADVICE = ('an SDCLR model (SDCLR/BCL-D): pass --prune', 'a SimCLR model (SimCLR/BCL-I): remove --prune')


def load_pretrained(model, checkpoint, wrong_family_advice=PRUNE_FLAG_ADVICE):
    """Load `checkpoint` (a path, or an already loaded object) into `model` strictly.

    Accepts {'state_dict': ...} or a bare state dict, strips a 'module.' prefix
    (DataParallel) and maps the published ImageNet layouts with to_our_layout. A path is read
    with checkpoint.load (weights_only=True). Raises InputError for an unreadable or unsafe
    file, NaN/inf weights, a SimCLR/SDCLR mix-up (with `wrong_family_advice`: (for an SDCLR
    file, for a SimCLR file)) or any other key or shape mismatch (with layout_advice's line
    when a stem or head_layers explains it). Returns the model.
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    label = f'checkpoint {os.fspath(checkpoint)}' if is_path else 'the checkpoint'
    if is_path:
        checkpoint = checkpoint_files.load(os.fspath(checkpoint))
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f'{label} holds no state dict: pass a file saved by our '
                         'training scripts')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    state = to_our_layout(state)

    expected = model.state_dict().keys()
    model_is_sdclr = any('bn_list' in k for k in expected)
    if not model_is_sdclr and any('bn_list' in k for k in state):
        raise InputError(f'{label} holds {wrong_family_advice[0]}')
    if model_is_sdclr and any(k.startswith('projector.') for k in state):
        raise InputError(f'{label} holds {wrong_family_advice[1]}')
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        advice = layout_advice(model, state)
        raise InputError(f'{label} does not match the model: {mismatch}'
                         + (f' -- {advice}' if advice else ''))
    bad = checkpoint_files.non_finite(state)
    if bad:
        raise InputError(f'{label} holds NaN or inf in {len(bad)} tensor(s) ({checkpoint_files.describe(bad)}): '
                         'its training diverged; evaluate an earlier checkpoint')
    model.load_state_dict(state, strict=True)
    return model
