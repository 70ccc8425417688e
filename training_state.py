"""What a checkpoint holds of a run, how it is restored, and how a checkpoint to resume is checked
(design 5: everything needed to continue exactly; issue 20: nothing touched before it is valid).

A training state is a dict of plain types and tensors (checkpoint.load reads it with
weights_only=True): epoch, state_dict, optim, scheduler, momentum_loss, momentum_weight, rng,
args, method, progress (mid-epoch) and inputs, the SHA-256 of the split and of the data files
the run trains on, so that a resume on a split or data file replaced under the same name is
refused instead of silently training on other images.
"""
import argparse
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from data.benchmarks import get_benchmark
from data.cifar100 import TwoViewCIFAR
from models.utils import state_dict_mismatch
from split.resolve import resolve_split, sha256
from utils import InputError, rng_state, set_rng_state

RESUME_ADVICE = 'resume from another checkpoint (--checkpoint model_EPOCH.pt) or start a new experiment'


def method_name(args):
    return {(False, False): 'SimCLR', (False, True): 'BCL-I',
            (True, False): 'SDCLR', (True, True): 'BCL-D'}[(args.sdclr, args.bcl)]


def input_digests(args):
    """{'split': {'name', 'sha256'}, 'data': {file: {'size', 'sha256'}}} of what the run trains on:
    the split file and the benchmark's train batches (CIFAR-100: `train`, CIFAR-10: data_batch_1..5;
    0.15 s for 150 MB on the 2-core CI machine)."""
    root = os.path.abspath(args.data_folder or '.')
    paths = get_benchmark(args.dataset).input_files(args.data_folder)
    return {'split': {'name': args.trainSplit, 'sha256': sha256(resolve_split(args.trainSplit))},
            'data': {os.path.relpath(path, root): {'size': os.path.getsize(path), 'sha256': sha256(path)}
                     for path in paths}}


def check_inputs(saved, current, path):
    """A resume must train on the files the checkpoint was trained on (older checkpoints record none)."""
    if not saved:
        return
    split = saved['split']
    if split['sha256'] != current['split']['sha256']:
        raise InputError(f'{path} was trained on split {split["name"]} with SHA-256 {split["sha256"][:16]}..., but '
                         f'that file now has {current["split"]["sha256"][:16]}... (it was replaced or regenerated): '
                         f'put the original file back, or start a new experiment')
    for name, record in saved['data'].items():
        now = current['data'].get(name)
        if now != record:
            raise InputError(f'{path} was trained on data file {name} of {record["size"]:,} bytes with SHA-256 '
                             f'{record["sha256"][:16]}..., but --data_folder holds '
                             + (f'one of {now["size"]:,} bytes with {now["sha256"][:16]}...' if now else 'none')
                             + ': pass the original --data_folder, or start a new experiment')


# ----------------------------------------------------------------------------- structure of a state

def _type_name(kind):
    return ' or '.join(k.__name__ if k is not type(None) else 'None' for k in (kind if isinstance(kind, tuple)
                                                                              else (kind,)))


REQUIRED = {'epoch': int, 'state_dict': dict, 'optim': dict, 'momentum_loss': torch.Tensor,
            'momentum_weight': (torch.Tensor, type(None)), 'rng': dict, 'args': dict}
PROGRESS = {'epoch': int, 'step': int, 'loss_sum': (float, int), 'seen': int, 'masks': dict,
            'epoch_metrics': (dict, type(None))}


def _check_fields(record, fields, where):
    for key, kind in fields.items():
        if key not in record:
            return f'{where}{key} is missing'
        value = record[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            return f'{where}{key} is of type {type(value).__name__}, expected {_type_name(kind)}'
    return None


def _rng_problem(rng):
    """Try each RNG state on a private generator: the run's own RNGs stay untouched."""
    for key in ('python', 'numpy', 'torch'):
        if key not in rng:
            return f'rng.{key} is missing'
    try:
        random.Random().setstate(rng['python'])
        numpy = rng['numpy']
        if isinstance(numpy, dict):
            numpy = (numpy['kind'], numpy['keys'].numpy().astype(np.uint32), numpy['position'], numpy['has_gauss'],
                     numpy['cached_gaussian'])
        np.random.RandomState().set_state(numpy)
        torch.Generator().set_state(rng['torch'])
        cuda = rng.get('cuda')
        cuda = cuda if isinstance(cuda, (list, tuple)) else [cuda]  # the previous format: one per visible GPU
        if not all(c is None or (isinstance(c, torch.Tensor) and c.dtype == torch.uint8) for c in cuda):
            return 'rng.cuda is not a CUDA generator state'
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        return f'its RNG state does not restore ({type(error).__name__})'
    return None


def structure_problem(state):
    """What is wrong with the layout and types of a training state (None if nothing): checked before
    anything of the run is touched, so that a damaged file is one line, not a traceback."""
    problem = _check_fields(state, REQUIRED, '')
    if problem:
        return problem
    if state['epoch'] < 0:
        return f'epoch is {state["epoch"]}'
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state['state_dict'].items()):
        return 'state_dict must map names to tensors'
    optim = state['optim']
    if (not isinstance(optim.get('state'), dict) or not isinstance(optim.get('param_groups'), list)
            or not all(isinstance(g, dict) and isinstance(g.get('params'), list) for g in optim['param_groups'])):
        return 'optim is not an optimizer state_dict (state, param_groups)'
    for name in ('momentum_loss', 'momentum_weight'):
        value = state[name]
        if value is not None and (value.dim() != 1 or not value.is_floating_point()):
            return f'{name} must be a 1-D floating tensor, got {value.dtype} of shape {tuple(value.shape)}'
    if not isinstance(state['args'].get('sdclr'), bool):
        return 'args.sdclr is missing'
    inputs = state.get('inputs')
    if inputs is not None and not (isinstance(inputs, dict) and isinstance(inputs.get('split'), dict)
                                   and isinstance(inputs['split'].get('sha256'), str)
                                   and isinstance(inputs.get('data'), dict)
                                   and all(isinstance(r, dict) for r in inputs['data'].values())):
        return 'inputs is not a record of split and data digests'
    progress = state.get('progress')
    if progress is not None:
        problem = (_check_fields(progress, PROGRESS, 'progress.') if isinstance(progress, dict)
                   else f'progress is of type {type(progress).__name__}, expected dict or None')
        if problem:
            return problem
    return _rng_problem(state['rng'])


def validate(state, path):
    """InputError unless `state` is a training state of ours (weights only: use --checkpoint alone)."""
    if not isinstance(state, dict) or 'momentum_loss' not in state:
        raise InputError(f'{path} holds weights only, not a full training state: use it as '
                         f'--checkpoint without --resume to start from its weights')
    problem = structure_problem(state)
    if problem:
        raise InputError(f'{path} is not a valid training state ({problem}): {RESUME_ADVICE}')


# ----------------------------------------------------------------------------- the run's parts

@dataclass
class Parts:
    """What a checkpoint captures of a run, and how to save and restore it (design 5: everything
    needed to continue exactly)."""
    args: argparse.Namespace
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    momentum: object  # train.MomentumLoss
    dataset: TwoViewCIFAR
    device: torch.device
    steps_per_epoch: int
    inputs: dict  # input_digests

    def state(self, epoch, progress=None):
        """The training state after `epoch` finished epochs. A mid-epoch state adds `progress` (mid_epoch)."""
        args = self.args
        return {'epoch': epoch, 'state_dict': self.model.state_dict(), 'optim': self.optimizer.state_dict(),
                'scheduler': {'step': epoch * self.steps_per_epoch + (progress['step'] if progress else 0),
                              'total_steps': args.epochs * self.steps_per_epoch},
                'momentum_loss': self.momentum.value,
                'momentum_weight': self.dataset.momentum_weight.clone() if args.bcl else None,
                'rng': rng_state(self.device), 'args': vars(args), 'method': method_name(args), 'progress': progress,
                'inputs': self.inputs}

    def mid_epoch(self, epoch, progress, epoch_metrics):
        """The state of a run stopped inside `epoch`: the steps done, the epoch's loss so far, the prune
        masks the epoch started with (non-persistent buffers) and before_epoch's metrics."""
        persistent = self.model.state_dict().keys()
        masks = {name: b.bool() for name, b in self.model.named_buffers() if name not in persistent}
        return self.state(epoch - 1, {'epoch': epoch, 'step': progress.step, 'loss_sum': progress.loss_sum.item(),
                                      'seen': progress.seen, 'masks': masks, 'epoch_metrics': epoch_metrics})

    def mismatch(self, state):
        """How a validated training state does not fit this run's model, optimizer, data and epochs (None
        if it fits): checked before anything is restored or deleted."""
        problem = state_dict_mismatch(self.model, state['state_dict'])
        if problem:
            return f'its weights do not fit the model: {problem}'
        params = list(self.model.parameters())
        groups = state['optim']['param_groups']
        if len(groups) != 1 or len(groups[0]['params']) != len(params):
            return f'its optimizer state has {sum(len(g["params"]) for g in groups)} parameters, the model {len(params)}'
        for index, buffers in state['optim']['state'].items():
            buffer = buffers.get('momentum_buffer') if isinstance(buffers, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(params) or (
                    buffer is not None and buffer.shape != params[index].shape):
                return f'its optimizer state of parameter {index} does not fit the model'
        n = len(self.dataset)
        for name in ('momentum_loss', 'momentum_weight'):
            value = state[name]
            if (value is not None or (name == 'momentum_weight' and self.args.bcl)) and (
                    value is None or len(value) != n):
                return f'{name} holds {"nothing" if value is None else len(value)} values for a split of {n} images'
        if state['epoch'] > self.args.epochs:
            return f'it is at epoch {state["epoch"]} of a {self.args.epochs}-epoch run'
        progress = state.get('progress')
        if progress is not None:
            if progress['epoch'] != state['epoch'] + 1 or not 0 < progress['step'] < self.steps_per_epoch:
                return (f'its progress (epoch {progress["epoch"]}, step {progress["step"]}) does not continue epoch '
                        f'{state["epoch"]} of {self.steps_per_epoch} steps')
            buffers = {name: b for name, b in self.model.named_buffers() if name not in self.model.state_dict()}
            if progress['masks'].keys() != buffers.keys() or any(
                    not isinstance(m, torch.Tensor) or m.shape != buffers[k].shape for k, m in progress['masks'].items()):
                return 'its prune masks do not fit the model'
        return None

    def restore(self, state):
        """Load a training state; returns (first epoch to run, EpochProgress-like dict or None, the
        partial epoch's before_epoch metrics)."""
        self.model.load_state_dict(state['state_dict'])
        self.optimizer.load_state_dict(state['optim'])
        self.momentum.value.copy_(state['momentum_loss'])
        if self.args.bcl:
            self.dataset.momentum_weight.copy_(state['momentum_weight'])
        set_rng_state(state['rng'], self.device)
        partial = state.get('progress')
        if partial is None:
            return state['epoch'] + 1, None
        buffers = dict(self.model.named_buffers())
        for name, mask in partial['masks'].items():
            buffers[name].copy_(mask)
        return partial['epoch'], partial
