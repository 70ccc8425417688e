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
    """Design 3: Linear(d, d) -> BN -> ReLU -> Linear(d, 128, no bias) -> BN(128).
    `norm` builds the BatchNorm1d layers (SDCLR passes its paired BatchNorm)."""

    def __init__(self, in_dim, norm=nn.BatchNorm1d):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.bn1 = norm(in_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(in_dim, PROJECTION_DIM, bias=False)
        self.bn2 = norm(PROJECTION_DIM)

    def forward(self, x):
        return self.bn2(self.fc2(self.relu(self.bn1(self.fc1(x)))))


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


# what to tell a user whose checkpoint is of the other family (test.py's flags; train.py passes its own)
PRUNE_FLAG_ADVICE = ('an SDCLR model (SDCLR/BCL-D): pass --prune', 'a SimCLR model (SimCLR/BCL-I): remove --prune')


def load_pretrained(model, checkpoint, wrong_family_advice=PRUNE_FLAG_ADVICE):
    """Load `checkpoint` (a path, or an already loaded object) into `model` strictly.

    Accepts {'state_dict': ...} or a bare state dict and strips a 'module.' prefix
    (DataParallel). A path is read with checkpoint.load (weights_only=True). Raises InputError
    for an unreadable or unsafe file, NaN/inf weights, a SimCLR/SDCLR mix-up (with
    `wrong_family_advice`: (for an SDCLR file, for a SimCLR file)) or any other key mismatch.
    Returns the model.
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

    expected = model.state_dict().keys()
    model_is_sdclr = any('bn_list' in k for k in expected)
    if not model_is_sdclr and any('bn_list' in k for k in state):
        raise InputError(f'{label} holds {wrong_family_advice[0]}')
    if model_is_sdclr and any(k.startswith('projector.') for k in state):
        raise InputError(f'{label} holds {wrong_family_advice[1]}')
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise InputError(f'{label} does not match the model: {mismatch}')
    bad = checkpoint_files.non_finite(state)
    if bad:
        raise InputError(f'{label} holds NaN or inf in {len(bad)} tensor(s) ({checkpoint_files.describe(bad)}): '
                         'its training diverged; evaluate an earlier checkpoint')
    model.load_state_dict(state, strict=True)
    return model
