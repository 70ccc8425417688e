"""Small helpers shared by every script: argument checks, seeding, RNG state, logging,
schedule, device."""
import argparse
import math
import os
import random
import sys
import warnings

import numpy as np
import torch


class InputError(Exception):
    """Bad input from the user (missing file, wrong flag...): a one-line message that says
    what to do. Scripts print it and exit non-zero; tracebacks are kept for bugs."""


class WriteFailed(InputError):
    """A file of the run could not be written (disk full, read-only, permissions): train.run adds
    which checkpoint is intact and how to go on (checkpoint.Checkpoints.resume_advice)."""


def fail(message, code=1):
    """Exit with a one-line error (for bad input; tracebacks are for bugs)."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: ... (see --help)`, exit 2) instead of usage + error."""

    def error(self, message):
        fail(f'{message} (see --help)', code=2)


def _number(kind, name, check, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{name} must be {what}, got {text!r}') from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f'{name} must be {what}, got {text!r}')
        return value
    parse.__name__ = name  # argparse names the type in its message
    return parse


def int_in(low, high=None):
    """An integer in [low, high] (high None: unbounded)."""
    what = f'an integer >= {low}' if high is None else f'an integer in [{low}, {high}]'
    return _number(int, 'value', lambda v: v >= low and (high is None or v <= high), what)


def float_in(low, high, low_open=False, high_open=False):
    """A finite float in [low, high] (open ends where asked; None = unbounded)."""
    def check(v):
        return ((low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    interval = (f'{"(" if low_open else "["}{"-inf" if low is None else low}, '
                f'{"inf" if high is None else high}{")" if high_open else "]"}')
    return _number(float, 'value', check, f'a finite number in {interval}')


def set_seed(seed):
    """Seed python, numpy and torch (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def keyed_seed(*key):
    """A 63-bit seed that is a fixed function of a tuple of integers in [0, 2^32), e.g. (seed, epoch).
    Streams keyed this way do not depend on what else drew random numbers before. SeedSequence
    pads with zeros, so (seed, epoch) and (seed, epoch, 0) are one key: the sample order takes the
    bare (seed, epoch) and every other stream a third number >= 1."""
    if not all(0 <= int(k) < 2 ** 32 for k in key):  # a larger int would be split into 32-bit words
        raise ValueError(f'keyed_seed takes integers in [0, 2^32), got {key}')
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng_state(device=None):
    """Every RNG state a run draws from, as tensors and plain Python types (so that a checkpoint
    loads with torch.load(weights_only=True)). On CUDA only `device`'s generator is stored: a
    run draws from its own device alone, and the state restores onto whichever device resumes."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
             'torch': torch.get_rng_state()}
    if device is not None and torch.device(device).type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    """Restore rng_state(); the CUDA state (if stored and resuming on CUDA) goes to `device`."""
    random.setstate(state['python'])
    numpy = state['numpy']
    if isinstance(numpy, dict):
        numpy = (numpy['kind'], numpy['keys'].numpy().astype(np.uint32), numpy['position'], numpy['has_gauss'],
                 numpy['cached_gaussian'])
    np.random.set_state(numpy)  # a tuple: a checkpoint of the previous format
    torch.set_rng_state(state['torch'])
    if device is not None and torch.device(device).type == 'cuda' and 'cuda' in state:
        cuda = state['cuda']
        if isinstance(cuda, (list, tuple)):  # the previous format: every visible GPU's state
            index = torch.device(device).index or 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


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
    """Prints a line and appends it to a log file (created with its folder); does nothing when not
    `enabled` (ranks other than 0 of a distributed run)."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, message):
        if not self.enabled:
            return
        print(message, flush=True)
        try:
            with open(self.path, 'a') as f:
                f.write(message + '\n')
        except OSError as error:
            raise WriteFailed(f'could not write {self.path} ({error.strerror or error})') from None


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
    """The device of `--gpus`: the first id of a comma list on CUDA (made the current device),
    'cpu' for the CPU; without CUDA the CPU, with a warning. A bad id is an InputError."""
    first = str(gpus).split(',')[0].strip()
    if first.lower() == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        print('warning: CUDA is not available: running on CPU (slow)', file=sys.stderr)
        return torch.device('cpu')
    count = torch.cuda.device_count()
    if not first.isdigit() or int(first) >= count:
        raise InputError(f'--gpus {gpus}: this machine has {count} CUDA device(s), ids 0..{count - 1}: '
                         f'pass one of them (or --gpus cpu)')
    device = torch.device('cuda', int(first))
    torch.cuda.set_device(device)
    return device


def set_cudnn(device, benchmark, tf32=False):
    """Design 5: the published runs used deterministic cuDNN (its setup_seed sets benchmark=False,
    deterministic=True after main had turned benchmark on); that is our default, so that a
    resumed run on CUDA repeats the uninterrupted one. `benchmark=True` (--cudnn_benchmark)
    lets cuDNN pick the fastest, non-deterministic kernels: the same method, not bit-reproducible.

    float32 means float32: PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default,
    which moved a ResNet-18 step's NT-Xent losses by up to 8e-3 against the CPU on an H100. Our
    default turns TF32 off for convolutions and matmuls; `tf32=True` (--tf32) is the opt-in speed-up."""
    torch.backends.cudnn.benchmark = device.type == 'cuda' and benchmark
    torch.backends.cudnn.deterministic = not benchmark
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def compile_model(model, method=None):
    """torch.compile in place: the model's forward (nn.Module.compile), or its bound `method`
    (e.g. 'features', what feature extraction calls). State-dict keys are unchanged. Where
    compilation is unavailable, the model runs eagerly with a warning."""
    try:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True  # a failing graph falls back to eager
        if method is None:
            model.compile()
        else:
            setattr(model, method, torch.compile(getattr(model, method)))
    except Exception as error:  # e.g. no compiler toolchain on the machine
        warnings.warn(f'--compile unavailable ({error}); running eagerly')
