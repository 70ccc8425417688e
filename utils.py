"""Small helpers shared by every script: seeding, RNG state, logging, schedule, device."""
import math
import os
import random
import sys

import numpy as np
import torch


def set_seed(seed):
    """Seed python, numpy and torch (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def rng_state():
    """Every RNG state a run draws from, so that a resumed run continues exactly."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class AverageMeter:
    """Running average of a scalar (weighted by batch size)."""

    def __init__(self):
        self.sum, self.count, self.avg, self.val = 0.0, 0, 0.0, 0.0

    def update(self, value, n=1):
        self.val = float(value)
        self.sum += float(value) * n
        self.count += n
        self.avg = self.sum / self.count


class Logger:
    """Prints a line and appends it to a log file (created with its folder)."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, message):
        print(message, flush=True)
        with open(self.path, 'a') as f:
            f.write(message + '\n')


def cosine_annealing(step, total_steps, lr_max, lr_min, warmup_steps=0):
    """Linear warm-up from 0 over `warmup_steps`, then cosine from lr_max to lr_min.

    Design 5: used as a per-iteration LR multiplier with lr_max=1, lr_min=1e-6/lr and
    warm-up over the first 10 epochs; `step == total_steps` gives exactly lr_min. A run
    no longer than its warm-up stays on the warm-up line, as the published code does.
    """
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f'need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}')
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    if total_steps <= warmup_steps:
        return lr_max
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(progress * math.pi))


def get_device(gpus='0'):
    """CUDA device `gpus` (first id of a comma list) when CUDA is present, else CPU with a warning."""
    if torch.cuda.is_available():
        return torch.device(f'cuda:{str(gpus).split(",")[0]}')
    print('warning: CUDA is not available: running on CPU (slow)', file=sys.stderr)
    return torch.device('cpu')


def atomic_save(obj, path):
    """torch.save to a temp file beside `path`, then rename: a crash never leaves half a file."""
    tmp = f'{path}.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)


class InputError(Exception):
    """Bad input from the user (missing file, wrong flag...): a one-line message that says
    what to do. Scripts print it and exit non-zero; tracebacks are kept for bugs."""


def fail(message):
    """Exit with a one-line error (for bad input; tracebacks are for bugs)."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)
