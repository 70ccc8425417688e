"""Contrastive pre-training on CIFAR-100-LT: SimCLR, and BCL-I with `--bcl`.

    python train.py BCL_I --bcl --rand_k 1 --lr 0.5 --epochs 2000 --temperature 0.2 \
      --data_folder DATA --trainSplit cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy

This file also holds the training core that train_sdclr.py (SDCLR, BCL-D) shares: the two
scripts differ only in the model and the step function passed to `run`.
"""
import argparse
import contextlib
import math
import os
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.cifar100 import TwoViewCIFAR100, load_cifar100
from data.memoboosted_cifar100 import MemoBoostedCIFAR100
from eval_cifar import full_shot_eval
from losses.nt_xent import nt_xent
from models import build_model
from models.utils import load_pretrained
from split.resolve import load_split
from utils import (InputError, Logger, atomic_save, cosine_annealing, fail, get_device,
                   rng_state, set_rng_state, set_seed)

WARMUP_EPOCHS = 10  # design 5
# Arguments that define the method: a resumed run must use the checkpoint's values.
METHOD_ARGS = ('trainSplit', 'model', 'batch_size', 'epochs', 'lr', 'weight_decay',
               'temperature', 'bcl', 'momentum_loss_beta', 'rand_k', 'rand_strength',
               'prune_percent', 'random_prune_percent')


def str2bool(value):
    """`--resume` works as a bare flag and as `--resume True/False` (the published
    `type=bool` turned "False" into True, design 5)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ('true', '1', 'yes'):
        return True
    if value.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def get_parser(sdclr):
    parser = argparse.ArgumentParser(
        description=('SDCLR / BCL-D' if sdclr else 'SimCLR / BCL-I') + ' pre-training on CIFAR-100-LT')
    parser.add_argument('experiment', help='run name: checkpoints go to SAVE_DIR/EXPERIMENT/')
    parser.add_argument('--save_dir', default='checkpoints')
    parser.add_argument('--data_folder', default='', help="folder holding torchvision's cifar-100-python/")
    parser.add_argument('--dataset', default='cifar100', choices=['cifar100'])
    parser.add_argument('--trainSplit', default='cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy',
                        help='pre-training split, relative to split/')
    parser.add_argument('--gpus', default='0', help='CUDA device id (ignored without CUDA)')
    parser.add_argument('--seed', type=int, default=10)
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--model', default='resnet18', choices=['resnet18', 'resnet50'])
    parser.add_argument('--batch_size', type=int, default=512)
    parser.add_argument('--epochs', type=int, default=2000)
    parser.add_argument('--num_class', type=int, default=100)
    parser.add_argument('--print_freq', type=int, default=20, help='progress-bar refresh, in steps')
    parser.add_argument('--save_freq', type=int, default=500, help='keep model_{epoch}.pt every N epochs')
    parser.add_argument('--eval_freq', type=int, default=20, help='full-shot linear probe every N epochs')
    parser.add_argument('--checkpoint', default='',
                        help='with --resume: the checkpoint to continue; without: initial weights')
    parser.add_argument('--resume', type=str2bool, nargs='?', const=True, default=False,
                        help='continue SAVE_DIR/EXPERIMENT/model.pt (or --checkpoint) exactly')
    parser.add_argument('--lr', type=float, default=0.5)
    parser.add_argument('--weight_decay', type=float, default=5e-4)
    parser.add_argument('--temperature', type=float, default=0.2)
    parser.add_argument('--bcl', action='store_true', help='memory-boosted augmentation (BCL)')
    parser.add_argument('--momentum_loss_beta', type=float, default=0.97)
    parser.add_argument('--rand_k', type=int, default=1, help='RandAugment ops per view (BCL)')
    parser.add_argument('--rand_strength', type=int, default=30, help='maximum RandAugment magnitude (BCL)')
    parser.add_argument('--prune_percent', type=float, default=0.9 if sdclr else 0.0)
    if sdclr:
        parser.add_argument('--random_prune_percent', type=float, default=0.0)
    # Speed (issue 6): opt-in; the defaults are the faithful float32 path.
    parser.add_argument('--amp', default='none', choices=['none', 'bf16'],
                        help='bf16 autocast for the network (loss and momentum state stay float32)')
    parser.add_argument('--channels_last', action='store_true', help='channels-last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--persistent_workers', action='store_true',
                        help='keep loader workers alive across epochs (BCL weights still reach them)')
    parser.set_defaults(sdclr=sdclr)
    return parser


def method_name(args):
    return {(False, False): 'SimCLR', (False, True): 'BCL-I',
            (True, False): 'SDCLR', (True, True): 'BCL-D'}[(args.sdclr, args.bcl)]


class MomentumLoss:
    """Per-sample momentum loss (design 2): O(N) state on the loss's device.

    Epoch 1: s_i = l_i; later: s_i = (1 - beta) l_i + beta s_i. Each index occurs once per
    epoch (shuffling without replacement), so one vectorised scatter per step equals the
    published per-sample loop.
    """

    def __init__(self, num_samples, beta, device):
        self.beta = beta
        self.value = torch.zeros(num_samples, dtype=torch.float32, device=device)

    def update(self, index, per_sample_loss, epoch):
        loss = per_sample_loss.detach().float()
        if epoch > 1:
            loss = (1 - self.beta) * loss + self.beta * self.value[index]
        self.value[index] = loss


def simclr_step(model, images, temperature, autocast):
    """design 5, SimCLR / BCL-I: both views in one forward pass (rows 2i, 2i+1 are the
    views of sample i). Runs backward; returns the per-sample loss."""
    with autocast():
        features = model(images)
    per_sample_loss = nt_xent(features, temperature, average=False)
    per_sample_loss.mean().backward()
    return per_sample_loss.detach()


def check_method_args(args, checkpoint, path):
    saved = checkpoint['args']
    if saved['sdclr'] != args.sdclr:
        script = 'train_sdclr.py' if saved['sdclr'] else 'train.py'
        raise InputError(f'{path} is a {checkpoint["method"]} checkpoint: resume it with {script}')
    for name in METHOD_ARGS:
        if name in saved and getattr(args, name, None) != saved[name]:
            raise InputError(f'{path} was trained with --{name} {saved[name]}, not {getattr(args, name)}: '
                             f'resume with the original value (or start a new experiment)')


def load_resume_checkpoint(args, save_dir):
    path = args.checkpoint or os.path.join(save_dir, 'model.pt')
    if not os.path.isfile(path):
        raise InputError(f'--resume: no checkpoint at {path}; train without --resume first, '
                         f'or pass --checkpoint FILE')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise InputError(f'cannot read checkpoint {path} ({error.__class__.__name__}): '
                         f'pass a model.pt written by this code') from None
    if not isinstance(checkpoint, dict) or 'momentum_loss' not in checkpoint:
        raise InputError(f'{path} holds weights only, not a full training state: use it as '
                         f'--checkpoint without --resume to start from its weights')
    check_method_args(args, checkpoint, path)
    return path, checkpoint


def make_save_dir(args):
    save_dir = os.path.join(args.save_dir, args.experiment)
    try:
        os.makedirs(save_dir, exist_ok=True)
        probe = os.path.join(save_dir, '.write_test')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as error:
        raise InputError(f'cannot write to {save_dir} ({error.strerror}): pass a writable --save_dir') from None
    return save_dir


def class_distribution(counts):
    order = np.sort(counts)[::-1]
    return (f'{len(counts)} classes, {int(counts.sum())} images, {int(order[0])} (head) '
            f'to {int(order[-1])} (tail) per class; sorted counts: {order.tolist()}')


def train_epoch(model, loader, optimizer, step_fn, momentum, epoch, args, lr_at, autocast,
                device, memory_format):
    """One pass over the data; returns the mean per-sample loss. Raises InputError on a
    non-finite loss."""
    model.train()
    steps = len(loader)
    step_losses = torch.zeros(steps, device=device)  # kept on device: no sync per step
    loss_sum = torch.zeros((), device=device)
    first_step = (epoch - 1) * steps
    bar = tqdm(loader, desc=f'epoch {epoch}/{args.epochs}', leave=False, dynamic_ncols=True,
               disable=None)
    start, seen = time.time(), 0
    for i, (views, index) in enumerate(bar):
        # design 5: the published loop advances the schedule before each optimiser step
        lr = lr_at(first_step + i + 1)
        for group in optimizer.param_groups:
            group['lr'] = lr
        images = views.to(device, non_blocking=True).flatten(0, 1)
        images = images.contiguous(memory_format=memory_format)
        index = index.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        per_sample_loss = step_fn(model, images, args.temperature, autocast)
        momentum.update(index, per_sample_loss, epoch)
        optimizer.step()
        step_losses[i] = per_sample_loss.mean()
        loss_sum += per_sample_loss.sum()
        seen += len(index)
        if (i + 1) % args.print_freq == 0 or i + 1 == steps:
            check_finite(step_losses[:i + 1], epoch)
            bar.set_postfix(loss=f'{step_losses[i].item():.4f}', lr=f'{lr:.4g}',
                            img_s=f'{seen / (time.time() - start):.0f}')
    return loss_sum.item() / seen


def check_finite(step_losses, epoch):
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        step = int(bad[0]) + 1
        raise InputError(f'loss is {step_losses[bad[0]].item()} at epoch {epoch}, step {step}: '
                         f'training stopped, the last good checkpoint is kept; try a lower --lr')


def run(args, step_fn, before_epoch=None):
    """The training core shared by train.py and train_sdclr.py.

    `step_fn(model, images, temperature, autocast)` runs forward and backward on one batch
    and returns the per-sample loss; `before_epoch(model, epoch, args)` runs at each epoch
    start (SDCLR recomputes its prune mask there) and may return a note for the log line.
    """
    device = get_device(args.gpus)
    set_seed(args.seed)
    save_dir = make_save_dir(args)
    resume_path, checkpoint = load_resume_checkpoint(args, save_dir) if args.resume else (None, None)
    log = Logger(os.path.join(save_dir, 'log.txt'))

    # data (design 1): the split indexes the CIFAR-100 train set
    _, train_labels = load_cifar100(args.data_folder, train=True)
    indices = load_split(args.trainSplit, len(train_labels))
    if args.bcl:
        dataset = MemoBoostedCIFAR100(args.data_folder, indices, args.rand_k, args.rand_strength)
    else:
        dataset = TwoViewCIFAR100(args.data_folder, indices)
    cuda = device.type == 'cuda'
    torch.backends.cudnn.benchmark = cuda  # as published: fastest kernels for the fixed shapes
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=False,
                        num_workers=args.num_workers, pin_memory=cuda,
                        persistent_workers=args.persistent_workers and args.num_workers > 0)

    model = build_model(prune=args.sdclr, network=args.model,
                        num_class=args.num_class)
    if args.checkpoint and not args.resume:
        load_pretrained(model, args.checkpoint)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=args.weight_decay)
    momentum = MomentumLoss(len(dataset), args.momentum_loss_beta, device)

    steps_per_epoch = len(loader)
    total_steps = args.epochs * steps_per_epoch

    def lr_at(step):  # design 5: warm-up over 10 epochs, cosine to 1e-6
        return args.lr * cosine_annealing(step, total_steps, 1, 1e-6 / args.lr,
                                          warmup_steps=WARMUP_EPOCHS * steps_per_epoch)

    start_epoch = 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint['state_dict'])
        optimizer.load_state_dict(checkpoint['optim'])
        momentum.value.copy_(checkpoint['momentum_loss'])
        if args.bcl:
            dataset.momentum_weight.copy_(checkpoint['momentum_weight'])
        set_rng_state(checkpoint['rng'])
        start_epoch = checkpoint['epoch'] + 1
        log.log(f'resumed from {resume_path} at epoch {checkpoint["epoch"]}')

    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == 'bf16')  # noqa: E731
    if args.compile:
        compile_model(model)

    log.log(f'{method_name(args)} arguments: {vars(args)}')
    log.log(f'device: {device}; split {args.trainSplit}: {class_distribution(dataset.class_counts)}')

    for epoch in range(start_epoch, args.epochs + 1):
        start = time.time()
        note = before_epoch(model, epoch, args) if before_epoch is not None else None
        loss = train_epoch(model, loader, optimizer, step_fn, momentum, epoch, args, lr_at,
                           autocast, device, memory_format)
        if args.bcl:  # design 1.4: new weights from this epoch's momentum losses
            dataset.update_momentum_weight(momentum.value)
        line = (f'epoch {epoch}/{args.epochs} loss {loss:.4f} lr {optimizer.param_groups[0]["lr"]:.6g} '
                f'time {time.time() - start:.1f}s' + (f' {note}' if note else ''))
        if epoch % args.eval_freq == 0:
            with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):  # keep training's RNG
                result = full_shot_eval(model, args.data_folder, args.trainSplit, device,
                                        num_workers=args.num_workers, amp=args.amp,
                                        channels_last=args.channels_last)
            line += f' full-shot top1 {result["top1"]:.2f} top5 {result["top5"]:.2f}'
        state = {'epoch': epoch, 'state_dict': model.state_dict(), 'optim': optimizer.state_dict(),
                 'scheduler': {'step': epoch * steps_per_epoch, 'total_steps': total_steps},
                 'momentum_loss': momentum.value.cpu(),
                 'momentum_weight': dataset.momentum_weight.clone() if args.bcl else None,
                 'rng': rng_state(), 'args': vars(args), 'method': method_name(args)}
        if epoch % 2 == 0 or epoch == args.epochs:
            atomic_save(state, os.path.join(save_dir, 'model.pt'))
        if epoch % args.save_freq == 0:
            atomic_save(state, os.path.join(save_dir, f'model_{epoch}.pt'))
        log.log(line)
    return model, momentum


def compile_model(model):
    """torch.compile in place (state-dict keys unchanged); eager with a warning if unavailable."""
    try:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True  # a failing graph falls back to eager
        model.compile()
    except Exception as error:  # e.g. no compiler toolchain on the machine
        warnings.warn(f'--compile unavailable ({error}); running eagerly')


def main(argv=None, sdclr=False, step_fn=simclr_step, before_epoch=None):
    args = get_parser(sdclr).parse_args(argv)
    try:
        return run(args, step_fn, before_epoch)
    except InputError as error:
        fail(str(error))


if __name__ == '__main__':
    main()
