"""Contrastive pre-training on a long-tailed benchmark: SimCLR, and BCL-I with `--bcl`.

    python train.py BCL_I --bcl --rand_k 1 --lr 0.5 --epochs 2000 --temperature 0.2 \
      --data_folder DATA --trainSplit cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy

`--dataset` (default cifar100; cifar10) picks the benchmark (data/benchmarks/): its data, splits and
the recipe defaults of every argument left unset (design 9.2).

This file also holds the training core that train_sdclr.py (SDCLR, BCL-D) shares: the two
scripts differ only in the model and the step function passed to `run`.
"""
import argparse
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoint
import training_state
from checkpoint import Checkpoints
from data.benchmarks import BENCHMARKS, DEFAULT, benchmark_of, get_benchmark
from data.device_views import device_loader
from data.sampler import EpochBatchSampler
from distributed import Distributed, from_environment, global_batch_norm
from folder_lock import FolderLock
from eval_cifar import GROUPS, full_shot_eval, prepare_full_shot
from losses.nt_xent import nt_xent
from metrics import MetricsLog, bcl_weight_stats, check_tensorboard
from models import build_model
from models.utils import load_pretrained
from preemption import (Preempted, StopRequest, Stopped, ignore_in_worker, loader_worker_death,
                        workers_start_shielded)
from training_state import RESUME_ADVICE, Parts, check_inputs, input_digests, method_name
from utils import (ArgumentParser, InputError, Logger, compile_model, cosine_annealing, fail, float_in,
                   int_in, keyed_seed, set_cudnn, set_seed)

WARMUP_EPOCHS = 10  # design 5
WORKER_SEED_STREAM = 1  # keyed_seed(seed, epoch, 1) seeds an epoch's loader workers
# --checkpoint FILE of the other model family: which script trains it
RETRAIN_ADVICE = ('an SDCLR model (SDCLR/BCL-D): train from it with train_sdclr.py',
                  'a SimCLR model (SimCLR/BCL-I): train from it with train.py')
# Arguments that define the method: a resumed run must use the checkpoint's values.
# (--seed too: it keys each epoch's sample order, so a mid-epoch resume needs the same one.)
METHOD_ARGS = ('dataset', 'trainSplit', 'model', 'batch_size', 'epochs', 'lr', 'weight_decay',
               'temperature', 'bcl', 'momentum_loss_beta', 'rand_k', 'rand_strength',
               'prune_percent', 'random_prune_percent', 'seed')


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


def experiment_name(text):
    """A run name is one folder name inside --save_dir (issue 20): '..', '', a path or an absolute
    path would put the run's files (and --overwrite's deletions) outside SAVE_DIR/EXPERIMENT."""
    if text in ('', '.', '..') or '/' in text or os.sep in text or '\0' in text:
        raise argparse.ArgumentTypeError(f'{text!r} is not one folder name (no "/", not "", "." or ".."): '
                                         f'the run goes to SAVE_DIR/EXPERIMENT/')
    return text


def get_parser(sdclr):
    parser = ArgumentParser(
        description=('SDCLR / BCL-D' if sdclr else 'SimCLR / BCL-I') + ' pre-training on a long-tailed benchmark '
                    '(arguments left unset take the --dataset\'s recipe defaults, design 9.2)')
    parser.add_argument('experiment', type=experiment_name, help='run name: checkpoints go to SAVE_DIR/EXPERIMENT/')
    parser.add_argument('--save_dir', default='checkpoints')
    parser.add_argument('--data_folder', default='',
                        help="folder holding torchvision's cifar-100-python/ (cifar10: cifar-10-batches-py/; the "
                             "ImageNet-scale sets: the ImageNet or Places365 root their lists name files under)")
    parser.add_argument('--dataset', default=DEFAULT, choices=sorted(BENCHMARKS), help='the benchmark')
    parser.add_argument('--trainSplit', default=None,
                        help="pre-training split, relative to split/ (default: the benchmark's split 1 D_i)")
    parser.add_argument('--gpus', default='0', help="CUDA device id (first of a comma list), or 'cpu'; "
                                                    "under torchrun each rank uses cuda:LOCAL_RANK ('cpu': gloo)")
    parser.add_argument('--seed', type=int_in(0, 2 ** 32 - 1), default=10)
    parser.add_argument('--num_workers', type=int_in(0), default=8)
    parser.add_argument('--model', default=None, choices=['resnet18', 'resnet50'],
                        help='the network; CIFAR: resnet18 (CIFAR stem), ImageNet-scale sets: resnet50 (ImageNet stem)')
    parser.add_argument('--batch_size', type=int_in(2), default=None,
                        help='samples per step (at least 2: NT-Xent needs negatives, BatchNorm two values); 512')
    parser.add_argument('--epochs', type=int_in(1), default=None, help='2000')
    parser.add_argument('--num_class', type=int_in(1), default=None, help="the benchmark's classes (accepted as "
                                                                          'published; another value is refused)')
    parser.add_argument('--print_freq', type=int_in(1), default=20,
                        help='progress-bar refresh and loss check, in steps')
    parser.add_argument('--save_freq', type=int_in(0), default=500,
                        help='keep model_{epoch}.pt every N epochs (0: never)')
    parser.add_argument('--eval_freq', type=int_in(0), default=20,
                        help='full-shot linear probe every N epochs (0: never)')
    parser.add_argument('--checkpoint', default='',
                        help='with --resume: the checkpoint to continue; without: initial weights')
    parser.add_argument('--resume', type=str2bool, nargs='?', const=True, default=False,
                        help='continue SAVE_DIR/EXPERIMENT/model.pt (or --checkpoint) exactly')
    parser.add_argument('--overwrite', action='store_true',
                        help="start over in an experiment folder that holds checkpoints (deletes them)")
    parser.add_argument('--lr', type=float_in(0, None, low_open=True), default=None, help='0.5')
    parser.add_argument('--weight_decay', type=float_in(0, None), default=None,
                        help='CIFAR-100: 5e-4 (as published; its SDCLR commands pass 1e-4), CIFAR-10: 1e-4')
    parser.add_argument('--temperature', type=float_in(0, None, low_open=True), default=None, help='0.2')
    parser.add_argument('--bcl', action='store_true', help='memory-boosted augmentation (BCL)')
    parser.add_argument('--momentum_loss_beta', type=float_in(0, 1), default=0.97)
    parser.add_argument('--rand_k', type=int_in(0), default=None,
                        help='RandAugment ops per view (BCL; 0: none); CIFAR: 1, ImageNet-scale sets: 2')
    parser.add_argument('--rand_strength', type=int_in(0, 30), default=30,
                        help='maximum RandAugment magnitude, in [0, 30] (BCL)')
    parser.add_argument('--prune_percent', type=float_in(0, 1, high_open=True), default=None,
                        help='SDCLR: 0.9 on CIFAR' if sdclr else 'unused by SimCLR / BCL-I (0)')
    if sdclr:
        parser.add_argument('--random_prune_percent', type=float_in(0, 1, high_open=True), default=0.0,
                            help='part of --prune_percent zeroed at random (at most --prune_percent)')
    # Speed (issue 6): opt-in; the defaults are the faithful float32 path.
    parser.add_argument('--amp', default='none', choices=['none', 'bf16'],
                        help='bf16 autocast for the network (loss and momentum state stay float32)')
    parser.add_argument('--channels_last', action='store_true', help='channels-last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--gpu_aug', action='store_true',
                        help='make both views on the training device, pixel-exact with the PIL path (CIFAR: the '
                             'images live there, no loader workers; image lists: the workers only decode)')
    parser.add_argument('--persistent_workers', action='store_true',
                        help='keep loader workers alive across epochs (BCL weights still reach them)')
    parser.add_argument('--cudnn_benchmark', action='store_true',
                        help='fastest cuDNN kernels, not bit-reproducible (default: deterministic, as published)')
    parser.add_argument('--tf32', action='store_true',
                        help='TF32 tensor cores for float32 convolutions and matmuls on CUDA (default: off, exact float32)')
    parser.add_argument('--tensorboard', action='store_true',
                        help='also write metrics.jsonl\'s scalars to SAVE_DIR/EXPERIMENT/tensorboard')
    parser.set_defaults(sdclr=sdclr)
    return parser


def parse_args(argv, sdclr):
    """The arguments, every unset one filled from the --dataset's recipe (design 9.2), checked against
    the benchmark before any work."""
    parser = get_parser(sdclr)
    args = parser.parse_args(argv)
    benchmark = get_benchmark(args.dataset)
    for name, value in {**benchmark.defaults(sdclr), 'trainSplit': benchmark.default_split}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.num_class is None:
        args.num_class = benchmark.num_classes
    elif args.num_class != benchmark.num_classes:
        parser.error(f'--num_class {args.num_class}: {benchmark.title} has {benchmark.num_classes} classes '
                     f'(drop --num_class, or pass the --dataset of your split)')
    owner = benchmark_of(os.path.normpath(args.trainSplit))
    if owner is not None and owner is not benchmark:
        parser.error(f'--trainSplit {args.trainSplit} is a {owner.title} split: pass --dataset {owner.name} '
                     f'(now {args.dataset})')
    if sdclr and args.random_prune_percent > args.prune_percent:
        parser.error(f'--random_prune_percent {args.random_prune_percent} must not exceed '
                     f'--prune_percent {args.prune_percent} (it is part of it)')
    return args


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


def simclr_step(model, images, temperature, autocast, gather=lambda features: features):
    """design 5, SimCLR / BCL-I: both views in one forward pass (rows 2i, 2i+1 are the
    views of sample i). Runs backward; returns the per-sample loss of the (global) batch.
    `gather` makes one rank's features the global batch's (distributed.py)."""
    with autocast():
        features = model(images)
    per_sample_loss = nt_xent(gather(features), temperature, average=False)
    per_sample_loss.mean().backward()
    return per_sample_loss.detach()


def check_method_args(args, state, path):
    saved = state['args']
    if saved['sdclr'] != args.sdclr:
        script = 'train_sdclr.py' if saved['sdclr'] else 'train.py'
        raise InputError(f'{path} is a {state.get("method", "SDCLR-family" if saved["sdclr"] else "SimCLR-family")} '
                         f'checkpoint: resume it with {script}')
    for name in METHOD_ARGS:
        if name in saved and getattr(args, name, None) != saved[name]:
            raise InputError(f'{path} was trained with --{name} {saved[name]}, not {getattr(args, name)}: '
                             f'resume with the original value (or start a new experiment)')


def load_resume_checkpoint(args, save_dir):
    """The checkpoint --resume continues, validated whole before anything is touched (issue 20)."""
    path = args.checkpoint or os.path.join(save_dir, 'model.pt')
    if not os.path.isfile(path):
        raise InputError(f'--resume: no checkpoint at {path}; train without --resume first, '
                         f'or pass --checkpoint FILE')
    state = checkpoint.load(path)
    training_state.validate(state, path)
    check_method_args(args, state, path)
    bad = checkpoint.non_finite(state)
    if bad:
        raise InputError(f'{path} holds NaN or inf in {checkpoint.describe(bad)}: resume from an earlier '
                         f'checkpoint (--checkpoint model_EPOCH.pt) or start a new experiment')
    return path, state


def make_save_dir(args, rank=0):
    save_dir = os.path.join(args.save_dir, args.experiment)
    try:
        os.makedirs(save_dir, exist_ok=True)
        probe = os.path.join(save_dir, f'.write_test.{os.getpid()}')  # per process: runs may start together
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as error:
        raise InputError(f'cannot write to {save_dir} ({error.strerror}): pass a writable --save_dir') from None
    return save_dir


def class_distribution(counts):
    order = np.sort(counts)[::-1]
    return (f'{len(counts)} classes, {int(order.sum())} images, {int(order[0])} (head) '
            f'to {int(order[-1])} (tail) per class; sorted counts: {order.tolist()}')


class Diverged(InputError):
    """A non-finite training loss (run adds which checkpoint is kept)."""


@dataclass
class EpochProgress:
    """How far an epoch got: steps done, the sum of per-sample losses (on the device) and samples
    seen; `stopped` when a stop signal ended it early."""
    step: int
    loss_sum: torch.Tensor
    seen: int
    stopped: bool = False


def train_epoch(model, loader, optimizer, step_fn, momentum, epoch, args, lr_at, autocast,
                device, memory_format, steps_per_epoch=None, progress=None, stop=None, dist=None):
    """One pass over `loader` (the rest of an epoch, when `progress` says where it stopped).

    Returns an EpochProgress. After every step it checks `stop.requested` (preemption.StopRequest)
    and returns early, `stopped`, if a signal came. No host sync per step: the losses stay on the
    device and are checked every `args.print_freq` steps (Diverged on a non-finite loss).
    With several ranks (`dist`, distributed.py) each step's features and positions are gathered
    into the global batch's, and a stop signal is agreed on at those checks.
    """
    dist = dist or Distributed(device)
    gather = None
    if dist.enabled:
        bounds, sampler = loader.batch_sampler.batches(epoch), loader.batch_sampler
    model.train()
    steps = steps_per_epoch or len(loader)
    if progress is None:
        progress = EpochProgress(0, torch.zeros((), device=device), 0)
    step_losses = torch.zeros(steps, device=device)
    first_step = (epoch - 1) * steps
    with workers_start_shielded():  # the epoch's loader workers start immune to a signal (preemption.py)
        batches = iter(loader)
    bar = tqdm(batches, desc=f'epoch {epoch}/{args.epochs}', leave=False, dynamic_ncols=True,
               disable=None if dist.is_main else True, initial=progress.step, total=steps)
    start, seen_here = time.time(), 0
    for i, (views, index) in enumerate(bar, start=progress.step):
        # design 5: the published loop advances the schedule before each optimiser step
        lr = lr_at(first_step + i + 1)
        for group in optimizer.param_groups:
            group['lr'] = lr
        images = views.to(device, non_blocking=True).flatten(0, 1).contiguous(memory_format=memory_format)
        index = index.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if dist.enabled:  # this rank's share of the batch -> the global batch
            gather = partial(dist.gather, sizes=sampler.shares(bounds[i][1] - bounds[i][0]))
            index = gather(index)
        per_sample_loss = step_fn(model, images, args.temperature, autocast, *([gather] if gather else []))
        momentum.update(index, per_sample_loss, epoch)
        optimizer.step()
        step_losses[i] = per_sample_loss.mean()
        progress.loss_sum += per_sample_loss.sum()
        progress.seen += len(index)
        progress.step = i + 1
        seen_here += len(index)
        check_point = (i + 1) % args.print_freq == 0 or i + 1 == steps
        if check_point:
            check_finite_loss(step_losses[:i + 1], epoch)  # one host sync
            bar.set_postfix(loss=f'{step_losses[i].item():.4f}', lr=f'{lr:.4g}',
                            img_s=f'{seen_here / (time.time() - start):.0f}')
        if dist.enabled:  # a collective, at the same steps on every rank: all stop after the same step
            stopping = check_point and dist.agree_stop(stop)
        else:
            stopping = stop is not None and stop.requested
        if stopping and i + 1 < steps:
            check_finite_loss(step_losses[:i + 1], epoch)
            progress.stopped = True
            break
    bar.close()
    return progress


def check_finite_loss(step_losses, epoch):
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        step = int(bad[0]) + 1
        raise Diverged(f'loss is {step_losses[bad[0]].item()} at epoch {epoch}, step {step}')


def make_loader(dataset, sampler, args, device):
    """design 5's loader over `sampler` (an EpochBatchSampler). The views do not depend on the
    workers (issue 11: keyed parameters); the loader has its own generator, seeded per epoch by
    start_epoch_loader, so that it never draws from the global torch RNG (it would draw once per
    epoch, or once per run with persistent workers, and shift the training RNG); workers ignore
    SIGTERM/SIGINT (preemption)."""
    workers = args.num_workers
    if args.gpu_aug:
        return device_loader(dataset, sampler, device, workers, args.persistent_workers)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == 'cuda',
                      persistent_workers=args.persistent_workers and workers > 0,
                      worker_init_fn=ignore_in_worker if workers else None, generator=torch.Generator())


def start_epoch_loader(loader, seed, epoch, start_step=0):
    """Before the epoch's iterator starts: its sample order, its views' key (the dataset's epoch,
    seen by persistent workers through shared memory) and its workers' seeds."""
    loader.batch_sampler.set_epoch(epoch, start_step)
    loader.dataset.set_epoch(epoch)
    if getattr(loader, 'generator', None) is not None:  # a DataLoader, or --gpu_aug's image-list loader
        loader.generator.manual_seed(keyed_seed(seed, epoch, WORKER_SEED_STREAM))


def epoch_record(epoch, progress, seen_before, train_s, lr, epoch_metrics):
    """metrics.jsonl's line of a finished epoch (the BCL weights and the probe are added later)."""
    return {'epoch': epoch, 'loss': progress.loss_sum.item() / progress.seen, 'lr': lr, 'time_s': train_s,
            'images_per_s': (progress.seen - seen_before) / train_s, **(epoch_metrics or {})}


def training_data(args):
    """Design 1: the pre-training dataset of the split (it indexes the benchmark's train set), and the
    in-training probe's data when a probe will run; everything read and checked before epoch 1."""
    benchmark = get_benchmark(args.dataset)
    dataset = benchmark.training_set(args.data_folder, args.trainSplit, args.bcl, args.rand_k, args.rand_strength,
                                     args.seed)
    if len(dataset) < 2:
        raise InputError(f'split {args.trainSplit} holds {len(dataset)} image(s): contrastive training needs at least 2')
    probes = bool(args.eval_freq) and args.eval_freq <= args.epochs
    return dataset, prepare_full_shot(args.data_folder, args.trainSplit, '--eval_freq 0', benchmark, args.seed) if probes else None


def check_shares(sampler):
    """Every rank needs a sample of every batch (a rank's share is at least one sample)."""
    smallest = min(end - start for start, end in sampler.batches(1))
    if smallest < sampler.world_size:
        raise InputError(f'a batch of {smallest} sample(s) (the last of each epoch: {sampler.num_samples} samples in '
                         f'batches of {sampler.batch_size}) cannot be shared by {sampler.world_size} processes: '
                         f'use fewer processes or another --batch_size')


def prepare_folder(args, checkpoints, save_dir):
    """(checkpoint path, training state, the folder whose history it continues) of a resumed run, or
    (None, None, None) for a fresh one, which must replace nothing unless --overwrite (whose deletion
    waits until every input has been read). A checkpoint of another folder continues into this one
    only if it holds no run of its own, or with --overwrite (issue 20)."""
    if not args.resume:
        if not args.overwrite:
            checkpoints.refuse_fresh_run_over(args.experiment)
        return None, None, None
    path, state = load_resume_checkpoint(args, save_dir)
    source = os.path.dirname(os.path.abspath(path))
    elsewhere = os.path.realpath(source) != os.path.realpath(save_dir)
    own = checkpoints.existing() + [name for name in ('metrics.jsonl',) if os.path.exists(os.path.join(save_dir, name))]
    if elsewhere and own and not args.overwrite:
        raise InputError(f'{save_dir} holds a run of its own ({", ".join(map(os.path.basename, own))}): continuing '
                         f'{path} there would replace it. Continue it into a clean folder (a new experiment name), '
                         f'or pass --overwrite to delete that run and continue {path} there')
    if args.overwrite and not elsewhere:
        raise InputError(f'--overwrite with --resume of {path} would delete the run it continues: drop --overwrite '
                         f'to continue it, or drop --resume to start over')
    checkpoints.resumed_from(path, state['epoch'])
    return path, state, source if elsewhere else None


def build_parts(args, dist):
    """The run's parts (dataset, model on the device, optimizer, momentum state), its loader and the
    in-training probe's data: every input read and checked before epoch 1."""
    device = dist.device
    dataset, probe_data = training_data(args)
    sampler = EpochBatchSampler(len(dataset), args.batch_size, args.seed, dist.rank, dist.world_size)
    check_shares(sampler)
    loader = make_loader(dataset, sampler, args, device)
    model = build_model(prune=args.sdclr, network=args.model, num_class=args.num_class,
                        **get_benchmark(args.dataset).model_options(args.sdclr))
    if dist.enabled:
        global_batch_norm(model)  # design 5's BatchNorm over the global batch
    if args.checkpoint and not args.resume:
        load_pretrained(model, args.checkpoint, wrong_family_advice=RETRAIN_ADVICE)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    momentum = MomentumLoss(len(dataset), args.momentum_loss_beta, device)
    parts = Parts(args, model, optimizer, momentum, dataset, device, sampler.steps_per_epoch, input_digests(args))
    return parts, loader, probe_data


def check_resumable(state, parts, path):
    """The checkpoint fits this run: the same split and data files (their digests), and weights,
    optimizer, momentum state and progress of the run's shapes."""
    check_inputs(state.get('inputs'), parts.inputs, path)
    problem = parts.mismatch(state)
    if problem:
        raise InputError(f'{path} does not fit this run ({problem}): {RESUME_ADVICE}')


def probe_cut_short(args, history, epoch):
    """Whether `epoch` ended with a due in-training probe that never finished (a kill or a signal
    during it): its metrics line has no probe."""
    record = history.record(epoch)
    return bool(args.eval_freq) and epoch >= 1 and epoch % args.eval_freq == 0 and record is not None \
        and 'probe' not in record


def in_training_probe(parts, probe_data, epoch, stop, history, log, checkpoints):
    """Design 5's full-shot probe after `epoch` (its checkpoint is already taken; the training RNG is
    left as it was), its result added to the epoch's metrics line. A stop signal cuts it short within
    a batch or a probe epoch (issue 20: within the scheduler's grace period); returns False then, and
    --resume runs it again."""
    args, device = parts.args, parts.device
    with torch.random.fork_rng(devices=[device.index] if device.type == 'cuda' else []):
        try:
            result = full_shot_eval(parts.model, probe_data, device, num_workers=args.num_workers, amp=args.amp,
                                    channels_last=args.channels_last, stop=stop)
        except Stopped:
            log.log(f'the full-shot probe of epoch {epoch} was cut short by {stop.requested}; --resume runs it again')
            return False
        except RuntimeError as error:  # its feature pass's loader workers
            if loader_worker_death(error):
                raise loader_worker_died(error, args, checkpoints) from None
            raise
    log.log(f'probe after epoch {epoch}/{args.epochs}: full-shot top1 {result["top1"]:.2f} top5 {result["top5"]:.2f}')
    history.add_probe(epoch, {k: result[k] for k in ('top1', 'top5') + GROUPS})
    return True


def loader_worker_died(error, args, checkpoints):
    """The one-line error of a loader worker killed under the run (the OOM killer's SIGKILL, say)."""
    return InputError(f'a data loader worker died ({loader_worker_death(error)}), most likely killed for lack of memory: lower '
                      f'--num_workers (now {args.num_workers}) or free memory; '
                      + checkpoints.resume_advice('lower --num_workers or free memory'))


def run(args, step_fn, before_epoch=None):
    """The training core shared by train.py and train_sdclr.py.

    `step_fn(model, images, temperature, autocast)` runs forward and backward on one batch
    and returns the per-sample loss; `before_epoch(model, epoch, args)` runs at each epoch
    start (SDCLR recomputes its prune mask there) and returns a dict of metrics for the log
    line and metrics.jsonl (or None).
    The experiment folder is locked for the whole run (folder_lock.py); every file the run needs is
    resolved and a checkpoint to resume validated before anything is written; each epoch's
    checkpoint is taken before its probe and written in the background (on disk before run returns
    or raises); SIGTERM/SIGINT end the run with a resumable checkpoint (Preempted).
    """
    if args.tensorboard:
        check_tensorboard()
    dist = from_environment(args.gpus)  # one process, or this rank of a torchrun job
    set_cudnn(dist.device, args.cudnn_benchmark, args.tf32)
    set_seed(args.seed)
    save_dir = make_save_dir(args, dist.rank)
    checkpoints = Checkpoints(save_dir, args.save_freq, args.epochs, writes=dist.is_main)
    with FolderLock(save_dir, enabled=dist.is_main), checkpoints.advising():
        resume_path, state, history_from = prepare_folder(args, checkpoints, save_dir)
        parts, loader, probe_data = build_parts(args, dist)
        if state is not None:
            check_resumable(state, parts, resume_path)
        if args.overwrite and (state is None or history_from):  # every input read: only now delete the old run
            checkpoints.remove_all()
        log = Logger(os.path.join(save_dir, 'log.txt'), enabled=dist.is_main)
        start_epoch, progress, epoch_metrics = 1, None, None
        if state is not None:
            start_epoch, partial = parts.restore(state)
            if partial is not None:
                progress = EpochProgress(partial['step'], torch.tensor(partial['loss_sum'], device=dist.device),
                                         partial['seen'])
                epoch_metrics = partial['epoch_metrics']
            where = f'epoch {start_epoch}, step {progress.step}' if progress else f'the end of epoch {state["epoch"]}'
            log.log(f'resumed from {resume_path} at {where}'
                    + ('; the run is complete, nothing left to train' if start_epoch > args.epochs else ''))
            del state
        log.log(f'{method_name(args)} arguments: {vars(args)}')
        log.log(f'device: {dist.device}' + (f' (rank 0 of {dist.world_size}, DistributedDataParallel)' if dist.enabled else '')
                + f'; split {args.trainSplit}: {class_distribution(parts.dataset.class_counts)}')
        history = MetricsLog(save_dir, start_epoch, args.tensorboard, dist.is_main, history_from)
        with StopRequest() as stop, checkpoints.writing():  # writes in the background, all done on exit
            if progress is None and dist.is_main and probe_cut_short(args, history, start_epoch - 1):
                in_training_probe(parts, probe_data, start_epoch - 1, stop, history, log, checkpoints)
            if dist.agree_stop(stop) if dist.enabled else stop.requested:  # every rank, as after an epoch
                raise Preempted(stop, log, f'before epoch {start_epoch} (nothing new to save)',
                                checkpoints.resume_command())
            train_epochs(parts, loader, step_fn, before_epoch, checkpoints, history, log, probe_data, stop, dist,
                         start_epoch, progress, epoch_metrics)
        history.close()
    dist.close()
    return parts.model, parts.momentum


def train_epochs(parts, loader, step_fn, before_epoch, checkpoints, history, log, probe_data, stop, dist,
                 start_epoch, progress, epoch_metrics):
    """The epochs from `start_epoch` (the rest of it, when `progress` says where it stopped) to the
    last: train, update BCL's weights, log, checkpoint, probe; raises Preempted on a stop signal."""
    args, model, optimizer, dataset = parts.args, parts.model, parts.optimizer, parts.dataset
    device, steps_per_epoch = parts.device, parts.steps_per_epoch
    total_steps = args.epochs * steps_per_epoch
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def lr_at(step):  # design 5: warm-up over 10 epochs, cosine to 1e-6
        return args.lr * cosine_annealing(step, total_steps, 1, 1e-6 / args.lr,
                                          warmup_steps=WARMUP_EPOCHS * steps_per_epoch)

    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == 'bf16')  # noqa: E731
    if args.compile:
        compile_model(model)
    trained = dist.wrap(model, find_unused_parameters=args.sdclr)  # SDCLR: each pass uses one BN of each pair
    for epoch in range(start_epoch, args.epochs + 1):
        start, seen_before = time.time(), progress.seen if progress else 0
        if progress is None:
            epoch_metrics = before_epoch(model, epoch, args) if before_epoch is not None else None
        start_epoch_loader(loader, args.seed, epoch, progress.step if progress else 0)
        try:
            progress = train_epoch(trained, loader, optimizer, step_fn, parts.momentum, epoch, args, lr_at, autocast,
                                   device, memory_format, steps_per_epoch, progress, stop, dist)
        except Diverged as error:
            raise checkpoints.diverged(str(error)) from None
        except RuntimeError as error:
            if loader_worker_death(error):
                raise loader_worker_died(error, args, checkpoints) from None
            raise
        if progress.stopped:
            stopped_state = parts.mid_epoch(epoch, progress, epoch_metrics)
            checkpoints.check_finite(stopped_state, epoch, f'step {progress.step}')
            checkpoints.write(stopped_state, [checkpoints.latest], epoch - 1)
            checkpoints.wait()
            raise Preempted(stop, log, f'at epoch {epoch}, step {progress.step}/{steps_per_epoch}: saved '
                                       f'{checkpoints.latest}', checkpoints.resume_command())
        train_s = time.time() - start
        record = epoch_record(epoch, progress, seen_before, train_s, optimizer.param_groups[0]['lr'], epoch_metrics)
        if args.bcl:  # design 1.4: new weights from this epoch's momentum losses
            dataset.update_momentum_weight(parts.momentum.value)
            record['bcl_weight'] = bcl_weight_stats(dataset.momentum_weight.numpy(), dataset.labels,
                                                    dataset.class_counts)
        progress = None
        probe_due = bool(args.eval_freq) and epoch % args.eval_freq == 0
        paths = checkpoints.paths_due(epoch, probe_due or stop.requested)
        if paths:  # the state is built (and checked) only when it is saved (issue 12: epoch overhead)
            epoch_state = parts.state(epoch)
            checkpoints.check_finite(epoch_state, epoch, 'the end')
            checkpoints.write(epoch_state, paths, epoch)
            del epoch_state
        log.log(f'epoch {epoch}/{args.epochs} loss {record["loss"]:.4f} lr {record["lr"]:.6g} time {train_s:.1f}s'
                + ''.join(f' {k} {v:.4f}' for k, v in (epoch_metrics or {}).items()))
        history.append(record)  # before the probe: a kill during it loses nothing else (issue 20)
        if probe_due and not stop.requested and dist.is_main:
            checkpoints.wait()  # the epoch's model.pt on disk first: a kill during the probe costs no training
            in_training_probe(parts, probe_data, epoch, stop, history, log, checkpoints)
        # a stop agreed by every rank; after the last epoch too when its probe was due (it may have been
        # skipped or cut short: --resume then runs it), so that every rank decides alike
        if (dist.agree_stop(stop) if dist.enabled else stop.requested) and (epoch < args.epochs or probe_due):
            if checkpoints.latest not in paths:  # the signal came after this epoch's save
                checkpoints.write(parts.state(epoch), [checkpoints.latest], epoch)
            checkpoints.wait()
            raise Preempted(stop, log, f'after epoch {epoch}: saved {checkpoints.latest}', checkpoints.resume_command())


def main(argv=None, sdclr=False, step_fn=simclr_step, before_epoch=None):
    args = parse_args(argv, sdclr)
    try:
        return run(args, step_fn, before_epoch)
    except InputError as error:
        fail(str(error))
    except Preempted as stopped:
        fail(str(stopped), code=stopped.code)
    except KeyboardInterrupt:  # Ctrl-C before training started (afterwards: Preempted) or a second Ctrl-C
        fail('interrupted; the newest checkpoint written so far is intact: continue with --resume', code=130)


if __name__ == '__main__':
    main()
