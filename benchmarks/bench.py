"""Speed of the whole pipeline (issue 6): training steps of the four methods, a full test.py
evaluation, and the data loader's ceiling, on a synthetic CIFAR-100 of the real size.

On a GPU (batch 512, all four methods, every fast-path flag, the published loop side by side).
Under a 10-minute limit per command, split the methods over two runs:

    python benchmarks/bench.py --baseline --output bench_gpu.json
    python benchmarks/bench.py --baseline --methods SimCLR,BCL-I --output bench_gpu_simclr.json
    python benchmarks/bench.py --baseline --methods SDCLR,BCL-D --output bench_gpu_sdclr.json

On CPU (small settings: batch 4, 3 timed steps per epoch; about 3 minutes on 2 cores). bf16 and
compile are left out of the CPU default: without native bf16 (AVX2 only) bf16 convolutions
run ~20x slower than float32, and inductor needs ~90 s per ResNet-18 graph on 2 cores; the
second command measures them for one method:

    python benchmarks/bench.py --baseline --output bench_cpu.json
    python benchmarks/bench.py --methods SimCLR --configs default,bf16,compile,all --output bench_cpu_flags.json

Smallest setting (the CI smoke test: tiny data, the four methods with the baseline and the
default configuration, batch 4, one step per epoch; about 30 s on 2 cores; asserts that every
number is finite and positive and exits non-zero otherwise):

    python benchmarks/bench.py --smoke

What is timed:
- Training: the real loop, train.train_epoch with train.simclr_step / train_sdclr.sdclr_step,
  train.MomentumLoss, SGD, TwoViewCIFAR / MemoBoostedCIFAR and train.run's DataLoader
  settings, on the real-size D_i (9,754 images). Each epoch is `--steps` full batches of a
  fixed random subset of D_i (0: all of D_i), so that every epoch starts and ends like a real
  one (workers started, or reused when persistent). Momentum state and BCL weights start at a
  steady state (losses uniform in [4, 6], so weights spread over [0, 1]); at each epoch end the
  BCL weights are recomputed with the real update_momentum_weight from that fixed loss vector,
  so the augmentation cost stays at steady state. `--warmup_epochs` are run untimed first
  (compilation, cuDNN and allocator warm-up). A step lasts from its batch in hand to the next
  batch in hand (waiting for data included); the median step of the timed epochs gives the
  steady-state step time and images/s; data wait = the share of the time from the first batch
  to the end of the last step spent waiting for the loader. Everything else of an epoch (prune
  mask, worker start, first batch, slower steps right after a fork, BCL update) is the
  per-epoch overhead. Time per epoch = overhead + ceil(9,754 / batch) steady steps, and 2000
  epochs = 2000 x that: both EXTRAPOLATED from the timed steps (evaluation not included).
- Evaluation: test.py's path (one feature pass over the train pool and the 10,000 test images,
  then test.run_probes: the full-shot probe and the 100/50-shot probes stacked) for each model
  family. With `--eval_images N` the feature pass is timed on N images and scaled to the real
  image counts, and with `--probe_epochs E` < 500 the probes are timed for E epochs and
  scaled to 500: both EXTRAPOLATED (labelled in the table).
- Baseline (`--baseline`): the loop the way the published code runs it: a Python loop over the
  batch for the momentum update (one element at a time, reading each value, plus the
  epochs x N history buffer and a host sync per step to log the loss), DataLoader workers
  re-created every epoch, eager, deterministic cuDNN (as published: its setup_seed turns
  cudnn.benchmark off after main turned it on, design 5), and torch's defaults for what the
  published code does not set: TF32 convolutions (cudnn.allow_tf32 defaults to True), float32
  matmuls; in evaluation, the features re-extracted for each of the 11 probes, each probe
  trained alone by the published loop (nn.Linear, autograd, torch.optim.Adam, a kernel launch
  per op). That is what the published commands get on an Ampere or newer GPU today, so every
  speed-up is a ratio to it, measured in the same run (to `default`, our faithful float32 path,
  without --baseline). `baseline_fp32`, the same loop in exact float32 (TF32 off), is timed
  beside it as a second reference (training only). On the CPU TF32 does not exist: the two are
  the same math.
- Loader ceiling: images/s of the augmentation pipelines alone (base SimCLR two views, BCL
  k=1 and k=2 with weights uniform in [0, 1]) through a DataLoader with 1 worker, with
  `--num_workers` and with all cores, no network; and the same pipelines made by --gpu_aug on
  the device (DeviceViews), per batch.
- Checkpoint: design 5's `model.pt` (every 2 epochs, 1,000 per 2000-epoch run) of each model
  family's full training state on the device (weights, SGD buffers, momentum losses, RNG): the
  seconds the training loop loses to it written synchronously (checkpoint.save), and written in
  the background as train.run does: the CPU copy it waits for (Checkpoints.write), plus the
  time a main-thread loop of small tensor ops (what the loop's kernel launches need: Python,
  the GIL, a core) loses while the thread writes, against its rate when idle; with the
  background write's own duration; the median of 5 writes into the benchmark's cache folder.

The ImageNet-scale benchmarks (--dataset imagenet100_lt, imagenet_lt, imagenet_lt_exp, places_lt; issue 24):
ResNet-50 at 224 px on real JPEGs of ImageNet's size distribution (data/synthetic.py's, written once into the
cache: batch x steps of them, at least --loader_images; the count is printed), or a fixed random subset of the
published list with --data_folder IMAGENET. Methods SimCLR and SDCLR by default (BCL-I, BCL-D: k = 2, design 9.3).

    python benchmarks/bench.py --dataset imagenet100_lt --output bench_in100_gpu.json   # batch 256, 10 steps
    python benchmarks/bench.py --dataset imagenet100_lt --output bench_in100_cpu.json   # batch 4: 2-3 min, 2 cores
    python benchmarks/bench.py --dataset imagenet100_lt --smoke                         # tiny JPEGs, 1 step

- Loader, per core (benchmarks/image_pipeline.py, one process with one thread): images/s, two views each, base
  and BCL k = 2, of the published pipeline run the published way, of ours (the PIL path), of --gpu_aug's loader
  workers (decode_batch) and of the JPEG decode alone.
- The device augmentation: ms per batch of image_list_views alone, on batches decoded beforehand (decode
  excluded), the device synchronised.
- Training: as above, with the loader of each configuration: the baseline is the published loader
  (train_imagenet_places.py's: DataLoader, --num_workers workers re-created every epoch, no pinned memory,
  torchvision's Compose per view; image_pipeline.PublishedViews), the per-sample momentum loop and the
  published math, which on these sets also turns cuDNN's benchmark on (set_published_math); the others
  train.make_loader's, over TwoViewImageList (PIL) or ImageListDeviceViews (--gpu_aug). Epoch and 500-epoch
  times are EXTRAPOLATED to the real list (EPOCH_IMAGES). From the measured figures alone: the loader cores one
  GPU needs, its network images/s over the images/s per core of each loader path.

Configurations: default (train.py as it runs without flags: deterministic cuDNN, as published),
bf16 (--amp bf16), channels_last, compile, persistent (--persistent_workers), cudnn_benchmark
(--cudnn_benchmark), tf32 (--tf32), gpu_aug (--gpu_aug: the views made on the device), all
(every flag but --gpu_aug) and all_gpu_aug (every flag with --gpu_aug).
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch._dynamo
from PIL import Image
from torch.utils.data import DataLoader, Subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint  # noqa: E402
import train  # noqa: E402
import train_sdclr  # noqa: E402
from data.benchmarks import BENCHMARKS, DEFAULT, INDEX_SPLIT_BENCHMARKS, get_benchmark  # noqa: E402
from data.device_views import DeviceViews, decode_batch, image_list_views  # noqa: E402
from data.image_list import write_image_list  # noqa: E402
from data.sampler import EpochBatchSampler  # noqa: E402
from data.safe_pickle import mark_not_official  # noqa: E402
from data.synthetic import write_synthetic_cifar  # noqa: E402
from eval_cifar import PROBE_EPOCHS, extract_features, linear_probe  # noqa: E402
from models import build_model  # noqa: E402
from split.generate import generate_splits, write_splits  # noqa: E402
from split.resolve import load_split, protocol_files  # noqa: E402
from utils import InputError, compile_model, cosine_annealing, fail, rng_state, set_cudnn, set_seed  # noqa: E402
from image_pipeline import LIST_FILE, PATHS, PublishedViews, per_core_rates, read_jpegs, write_jpegs  # noqa: E402

# test.py by path: `import test` could find Python's own test package
_spec = importlib.util.spec_from_file_location('bcl_test_script', os.path.join(ROOT, 'test.py'))
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

CACHE = os.path.join(tempfile.gettempdir(), 'bcl_bench')
EPOCHS = 2000  # the published runs (design 7)
EVAL_FREQ = train.get_parser(False).get_default('eval_freq')  # train.py's in-training full-shot probe
METHODS = {  # design 7's commands
    'SimCLR': dict(sdclr=False, bcl=False, rand_k=1),
    'BCL-I': dict(sdclr=False, bcl=True, rand_k=1),
    'SDCLR': dict(sdclr=True, bcl=False, rand_k=1),
    'BCL-D': dict(sdclr=True, bcl=True, rand_k=2),
}
CONFIGS = {
    'baseline': dict(published=True, torch_defaults=True),  # the reference of every ratio
    'baseline_fp32': dict(published=True),  # the second reference: the published loop in exact float32
    'default': dict(),
    'bf16': dict(amp='bf16'),
    'channels_last': dict(channels_last=True),
    'compile': dict(compile=True),
    'persistent': dict(persistent=True),
    'cudnn_benchmark': dict(cudnn_benchmark=True),
    'tf32': dict(tf32=True),
    'gpu_aug': dict(gpu_aug=True),
    'all': dict(amp='bf16', channels_last=True, compile=True, persistent=True, cudnn_benchmark=True, tf32=True),
    'all_gpu_aug': dict(amp='bf16', channels_last=True, compile=True, cudnn_benchmark=True, tf32=True, gpu_aug=True),
}
BASELINES = ('baseline', 'baseline_fp32')
LOADER_FLAGS = {'gpu_aug': '--gpu_aug', 'persistent': '--persistent_workers'}  # train.make_loader reads these
CORE_PATHS = {  # an image list's loader path (image_pipeline.PATHS) -> whether a configuration loads through it
    'published': lambda flags: bool(flags.get('published')),
    'ours': lambda flags: not flags.get('published') and not flags.get('gpu_aug'),
    'gpu_aug_worker': lambda flags: bool(flags.get('gpu_aug')),
}
LABELS = {'baseline': 'published loop, torch defaults (TF32 convolutions)',
          'baseline_fp32': 'published loop, exact float32 (second reference)'}
PARTS = ('train', 'eval', 'loader', 'checkpoint')
IMAGE_LIST_PARTS = ('train', 'loader')  # an image list's loader part: the rates per core, --gpu_aug's device half
PIPELINES = {'SimCLR': 'base', 'SDCLR': 'base', 'BCL-I': 'BCL k=1', 'BCL-D': 'BCL k=2'}  # CIFAR's (design 7)
IMAGE_LIST_PIPELINES = ('base', 'BCL k=2')  # design 9.3: BCL's k is 2 on the ImageNet-scale sets
# Images in an epoch of each image-list benchmark: its pre-training list (design 9.1). Where 9.1 counted a list,
# the benchmark module's LINES has it (ImageNet-100-LT 12,205, Places-LT 62,500); ImageNet-LT's list is pinned by
# git blob id and not counted here: about 115.8k (Liu et al. 2019). ImageNet-LT-exp's size is not known here.
EPOCH_IMAGES = {'imagenet_lt': 115_800}
PUBLISHED_IMAGE_LIST_WORKERS = 8  # GH's train_imagenet_places.py: DataLoader(num_workers=8) per process
DEFAULTS = {  # (CUDA, CPU) defaults of the options whose default depends on the kind of benchmark
    'cifar': dict(methods=(','.join(METHODS),) * 2, batch_size=(512, 4), steps=(10, 3), epochs=(2, 2),
                  loader_images=(0, 256), configs=('default,bf16,channels_last,compile,persistent,cudnn_benchmark,'
                                                   'tf32,gpu_aug,all,all_gpu_aug', 'default,channels_last,persistent'),
                  parts=(','.join(PARTS),) * 2),
    'image_list': dict(methods=('SimCLR,SDCLR',) * 2, batch_size=(256, 4), steps=(10, 2), epochs=(1, 1),
                       loader_images=(256, 256), configs=('baseline,default,gpu_aug,all,all_gpu_aug',
                                                         'baseline,default,gpu_aug'),
                       parts=(','.join(IMAGE_LIST_PARTS),) * 2),
}


def is_image_list(dataset):
    return dataset not in INDEX_SPLIT_BENCHMARKS


def kind_defaults(dataset):
    """The defaults of `dataset`'s kind (CIFAR, image list) on this machine's device (DEFAULTS)."""
    kind = DEFAULTS['image_list' if is_image_list(dataset) else 'cifar']
    return {name: values[0 if torch.cuda.is_available() else 1] for name, values in kind.items()}


def get_parser(dataset=DEFAULT):
    """bench.py's arguments, with the defaults of `dataset`'s kind."""
    default = kind_defaults(dataset)
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description='Speed benchmark of training, evaluation and data loading.')
    parser.add_argument('--dataset', default=DEFAULT, choices=sorted(BENCHMARKS),
                        help='the benchmark (data/benchmarks/): its data layout, splits and classes')
    parser.add_argument('--data_folder', default='',
                        help="the --dataset's folder to use (default: a synthetic one of the real size, cached in "
                             f'{CACHE}; an image list: that many real-size JPEGs, or a fixed random subset of the '
                             'published list of this folder)')
    parser.add_argument('--methods', default=None,
                        help='comma list of ' + ', '.join(METHODS) + f' (default: {default["methods"]})')
    parser.add_argument('--configs', default=None,
                        help='comma list of ' + ', '.join(CONFIGS) + f' (default: {default["configs"]})')
    parser.add_argument('--baseline', action='store_true',
                        help='also time the published loop with torch\'s defaults (every ratio against it) and in '
                             'exact float32 (a second reference)')
    parser.add_argument('--batch_size', type=int, default=default['batch_size'])
    parser.add_argument('--steps', type=int, default=default['steps'],
                        help='steps per timed epoch (0: a whole D_i epoch)')
    parser.add_argument('--epochs', type=int, default=default['epochs'], help='timed epochs per configuration')
    parser.add_argument('--epoch_images', type=int, default=None,
                        help='images of a real epoch, for the extrapolation (default: the pre-training list\'s; '
                             'CIFAR: D_i, image lists: EPOCH_IMAGES)')
    parser.add_argument('--warmup_epochs', type=int, default=1, help='untimed epochs first')
    parser.add_argument('--num_workers', type=int, default=8 if cuda else os.cpu_count(),
                        help='training and feature-extraction loader workers (train.py/test.py default: 8)')
    parser.add_argument('--published_workers', type=int, default=None,
                        help="an image list's published loop: its loader workers per GPU (default: 8, GH's "
                             'train_imagenet_places.py; --smoke: --num_workers)')
    parser.add_argument('--eval_images', type=int, default=0 if cuda else 16,
                        help='time the feature pass on this many images and scale (0: the real counts)')
    parser.add_argument('--probe_epochs', type=int, default=PROBE_EPOCHS if cuda else 2,
                        help=f'probe epochs timed (scaled to {PROBE_EPOCHS})')
    parser.add_argument('--loader_images', type=int, default=default['loader_images'],
                        help='images per loader-ceiling (image lists: per-core) measurement (0: all of D_i)')
    parser.add_argument('--loader_workers', default=None,
                        help='comma list of worker counts (default: 1, --num_workers, the core count)')
    parser.add_argument('--parts', default=default['parts'], help='comma list of ' + ', '.join(PARTS)
                        + ' (image lists: ' + ', '.join(IMAGE_LIST_PARTS) + ')')
    parser.add_argument('--smoke', action='store_true',
                        help='smallest setting (CI): tiny data, batch 4, 1 step, checks the output')
    parser.add_argument('--output', default=None, help=f'JSON results (default: {CACHE}/bench_<device>.json)')
    return parser


def parse_args(argv=None):
    """The arguments, parsed with the defaults of the --dataset they name."""
    dataset = argparse.ArgumentParser(add_help=False)
    dataset.add_argument('--dataset', default=DEFAULT)
    return get_parser(dataset.parse_known_args(argv)[0].dataset).parse_args(argv)


def smoke_settings(args):
    """--smoke: CIFAR's four methods with both baselines, default and gpu_aug; an image list's SimCLR with the
    baseline, default and gpu_aug on tiny JPEGs (ResNet-50 at 224 px: a few seconds a step on 2 cores)."""
    args.batch_size, args.steps, args.epochs, args.warmup_epochs = 4, 1, 1, 1
    args.num_workers, args.eval_images, args.probe_epochs, args.loader_images = 1, 4, 1, 16
    args.loader_workers = args.loader_workers or '1'
    if is_image_list(args.dataset):
        args.methods = args.methods or 'SimCLR'
        args.configs = args.configs or 'baseline,default,gpu_aug'
        args.warmup_epochs = 0
    else:
        args.configs = args.configs or 'default,gpu_aug'
        args.baseline = True


# ----------------------------------------------------------------------------- data

SMOKE_DATA = (2000, 1000), dict(val_per_class=2, train_per_class=16, imbalance_ratio=10)  # images in all
REAL_DATA = (50000, 10000), {}  # the real protocol (design 1.1, 9.1)
SMOKE_SHOTS = {'cifar100': (8, 4), 'cifar10': ()}  # the small family's train-list shot subsets


def prepare_data(args, sizes=None):
    """The data folder (a synthetic one is written once and reused) and a split family generated
    from its labels with split.generate's protocol, written under the cache. Real size: 50,000
    train / 10,000 test, D_i 9,754; --smoke: 2,000 / 1,000 with a small family; `sizes`:
    ((train, test) images in all, generate_splits' arguments)."""
    benchmark = get_benchmark(args.dataset)
    images, split_args = sizes or (SMOKE_DATA if args.smoke else REAL_DATA)
    if split_args and 'shot_sizes' not in split_args:
        split_args = {**split_args, 'shot_sizes': SMOKE_SHOTS[benchmark.name]}
    per_class = tuple(n // benchmark.num_classes for n in images)
    source = benchmark.source
    folder = args.data_folder or os.path.join(CACHE, f'{benchmark.name}_synthetic_{per_class[0]}x{per_class[1]}')
    if not args.data_folder and not all(map(os.path.isfile, source.paths(folder, train=False))):
        print(f'writing a synthetic {source.name} ({images[0]:,} train, {images[1]:,} test) to {folder}', flush=True)
        write_synthetic_cifar(folder + '.tmp', benchmark.name, *per_class)
        os.replace(folder + '.tmp', folder)
    elif not args.data_folder:  # a cache written before synthetic folders were marked (issue 20.11)
        mark_not_official(os.path.join(folder, source.folder), f'synthetic {source.name} of benchmarks/bench.py')
    labels = benchmark.labels(folder)
    split_root = os.path.join(CACHE, 'split')
    family = 'bench_' + hashlib.sha1(labels.tobytes() + repr(split_args).encode()).hexdigest()[:10]
    write_splits(generate_splits(labels, **split_args, benchmark=benchmark), split_root, family)
    d_i_name = f'{family}/{benchmark.default_split}'
    files = protocol_files(d_i_name, benchmark)
    index_sets = {'fullshot': [load_split(files['train'], len(labels), split_root)],
                  **{group: [load_split(f, len(labels), split_root) for f in files['subsets'][role]]
                     for group, role in benchmark.probe_sets.items() if role != 'S_b'}}
    d_i = load_split(d_i_name, len(labels), split_root)
    # steady-state momentum losses: uniform in [4, 6], so the BCL weights spread over [0, 1]
    steady_loss = 4 + 2 * torch.rand(len(d_i), generator=torch.Generator().manual_seed(0))
    return argparse.Namespace(folder=folder, d_i=d_i, d_i_path=os.path.join(split_root, d_i_name), labels=labels,
                              index_sets=index_sets, benchmark=benchmark,
                              test_labels=benchmark.labels(folder, train=False),
                              class_counts=np.bincount(labels[d_i], minlength=benchmark.num_classes),
                              steady_loss=steady_loss, epoch_images=args.epoch_images or len(d_i),
                              description=f'D_i {len(d_i):,} images')


def image_list_data(args):
    """An image-list benchmark's data: real-size JPEGs written once into the cache (image_pipeline.write_jpegs;
    --smoke: tiny ones), or with --data_folder a fixed random subset of the published pre-training list, as many as
    the timed steps and the per-core measurement need; their list (`list_path`) and the timed epoch's, its first
    --steps x --batch_size (`epoch_list`); steady-state momentum losses as prepare_data's."""
    benchmark = get_benchmark(args.dataset)
    epoch_images = args.epoch_images or benchmark.lines.get(benchmark.default_split) or EPOCH_IMAGES.get(benchmark.name)
    if not epoch_images:
        fail(f'the size of {benchmark.title}\'s pre-training list is not known here (design 9.1 pins it by git blob '
             'id): pass --epoch_images N, its line count')
    epoch_count = args.steps * args.batch_size or epoch_images
    count = max(epoch_count, args.loader_images, 1)
    sizes = (40, 120) if args.smoke else 'imagenet'
    os.makedirs(CACHE, exist_ok=True)
    if args.data_folder:
        try:  # fetched and pinned on first use, every file checked under --data_folder
            published = benchmark.image_list(benchmark.default_split, args.data_folder)
        except InputError as error:
            fail(str(error))
        picked = torch.randperm(len(published), generator=torch.Generator().manual_seed(0))[:count].sort().values
        image_list, folder = published.subset(picked.numpy()), args.data_folder
        list_path = os.path.join(CACHE, f'{benchmark.name}_published_{len(image_list)}.txt')
        write_image_list(list_path, image_list)
    else:
        folder = os.path.join(CACHE, f'{benchmark.name}_jpegs_{count}_{"tiny" if args.smoke else "imagenet_sizes"}')
        if not os.path.isdir(folder):
            print(f'writing {count:,} synthetic JPEGs to {folder}', flush=True)
            shutil.rmtree(folder + '.tmp', ignore_errors=True)
            write_jpegs(folder + '.tmp', count, benchmark.name, sizes)
            os.replace(folder + '.tmp', folder)
        image_list, list_path = read_jpegs(folder, benchmark.num_classes), os.path.join(folder, LIST_FILE)
    image_sizes = np.array([Image.open(os.path.join(folder, image_list.relpath(i))).size
                            for i in range(len(image_list))])  # (width, height)
    source = 'real' if args.data_folder else 'synthetic'
    description = (f'{len(image_list):,} {source} JPEGs (mean {image_sizes[:, 0].mean():.0f} x '
                   f'{image_sizes[:, 1].mean():.0f} px, largest side {image_sizes.max():,}); an epoch of '
                   f'{benchmark.title}: {epoch_images:,} images')
    epoch_list = f'{os.path.splitext(list_path)[0]}_first_{epoch_count}.txt'
    write_image_list(epoch_list, image_list.subset(range(min(epoch_count, len(image_list)))))
    steady_loss = 4 + 2 * torch.rand(len(image_list), generator=torch.Generator().manual_seed(0))
    return argparse.Namespace(folder=folder, list_path=list_path, epoch_list=epoch_list, benchmark=benchmark,
                              epoch_images=epoch_images, description=description, steady_loss=steady_loss,
                              jpegs=len(image_list), mean_width_height=image_sizes.mean(0).tolist())


def image_list_dataset(data, pipeline, epoch=False):
    """The pipeline's two-view dataset over the benchmark's JPEGs (`epoch`: the timed epoch's), as train.py builds
    it (benchmark.training_set: TwoViewImageList, or BCL's MemoBoostedImageList with k = 2), BCL weights set by
    the real update from the steady-state losses."""
    bcl = pipeline != 'base'
    dataset = data.benchmark.training_set(data.folder, data.epoch_list if epoch else data.list_path, bcl,
                                          int(pipeline[-1]) if bcl else 0, 30, 0)
    if bcl:
        dataset.update_momentum_weight(data.steady_loss[:len(dataset)])
    return dataset


def two_view_dataset(data, pipeline, positions=None):
    """The pipeline's two-view dataset over D_i (or its `positions`), BCL weights set by the real
    update from the steady-state losses (weights over [0, 1])."""
    indices = data.d_i if positions is None else data.d_i[positions]
    if pipeline == 'base':
        return data.benchmark.two_view_dataset(data.folder, indices, False, 0, 30, 0)
    dataset = data.benchmark.two_view_dataset(data.folder, indices, True, int(pipeline[-1]), 30, 0)
    dataset.update_momentum_weight(data.steady_loss if positions is None else data.steady_loss[positions])
    return dataset


# ----------------------------------------------------------------------------- timing helpers

def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def set_cuda_math(flags, device, image_list=False):
    """As train.py: deterministic cuDNN and exact float32 unless the flags; the baseline as the
    published code runs on today's torch (set_published_math; `image_list`: its ImageNet scripts')."""
    if flags.get('torch_defaults'):
        set_published_math(cudnn_benchmark=image_list)
    else:
        set_cudnn(device, flags.get('cudnn_benchmark', False), flags.get('tf32', False))


def set_published_math(cudnn_benchmark=False):
    """The math the published code gets from today's torch: its setup_seed's deterministic cuDNN
    (design 5), and torch's defaults for what it does not touch: TF32 convolutions
    (cudnn.allow_tf32 defaults to True) and float32 matmuls (cuda.matmul.allow_tf32 defaults to
    False). What a researcher running the published commands on an Ampere or newer GPU gets;
    on the CPU TF32 does not exist, so there it is the exact-float32 baseline. The published
    ImageNet-scale scripts (GH's train_imagenet_places.py, SDCLR's train_simCLR.py) turn
    cudnn.benchmark on after setup_seed (`cudnn_benchmark`); deterministic stays on."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class TimedLoader:
    """Wraps a DataLoader for train.train_epoch: records, per epoch, when the loop asked for each
    batch, when it got it, and how many images it held."""

    def __init__(self, loader):
        self.loader, self.epochs = loader, []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        record = {'asked': [], 'got': [], 'images': []}
        self.epochs.append(record)
        iterator = iter(self.loader)  # non-persistent workers start here
        while True:
            record['asked'].append(time.perf_counter())
            try:
                batch = next(iterator)  # the last call also shuts non-persistent workers down
            except StopIteration:
                return
            record['got'].append(time.perf_counter())
            record['images'].append(len(batch[1]))
            yield batch


class PublishedMomentumLoss(train.MomentumLoss):
    """The published momentum update (BCL train.py), for --baseline: a Python loop over the batch
    reading and writing one element at a time, into the O(N) shadow and the epochs x N history,
    with the index on the host as the published loader gives it; then the per-step loss log
    (`float(loss.mean())`, one host sync per step)."""

    def __init__(self, num_samples, beta, device, epochs=EPOCHS):
        super().__init__(num_samples, beta, device)
        self.history = torch.zeros(epochs, num_samples, device=device)

    def update(self, index, per_sample_loss, epoch):
        loss, index = per_sample_loss.detach(), index.cpu()
        for count in range(len(index)):
            if epoch > 1:
                new = (1 - self.beta) * loss[count].clone() + self.beta * self.value[index[count]]
            else:
                new = loss[count].clone()
            self.value[index[count]] = new
            self.history[epoch - 1, index[count]] = new
        float(loss.mean())


# ----------------------------------------------------------------------------- training

def cifar_loader(flags, pipeline, data, args, device):
    """(the dataset whose BCL weights and momentum state train, its loader) of a configuration on CIFAR: the
    DataLoader of train.run over a fixed random subset of D_i, or DeviceViews (--gpu_aug) over the same subset."""
    dataset = two_view_dataset(data, pipeline)
    if args.steps:  # a fixed random subset of whole batches, so that an epoch is `steps` steps
        epoch_set = Subset(dataset, torch.randperm(len(dataset))[:args.steps * args.batch_size].tolist())
    else:
        epoch_set = dataset
    persistent = flags.get('persistent', False) and args.num_workers > 0
    if flags.get('gpu_aug'):  # as train.run --gpu_aug: the same subset, its images on the device
        subset = two_view_dataset(data, pipeline, epoch_set.indices if args.steps else None)
        return dataset, DeviceViews(subset, EpochBatchSampler(len(subset), args.batch_size, 0), device)
    return dataset, DataLoader(epoch_set, batch_size=args.batch_size, shuffle=True, drop_last=False,
                               num_workers=args.num_workers, pin_memory=device.type == 'cuda',
                               persistent_workers=persistent)  # as train.run


def image_list_loader(flags, pipeline, data, args, device, targs):
    """(dataset, loader) of a configuration on an image list (whose JPEGs are the timed steps' images): the
    published loader for the baselines (train_imagenet_places.py's DataLoader: shuffled, workers re-created every
    epoch, no pinned memory, PublishedViews), else train.make_loader's (a DataLoader over TwoViewImageList, or
    ImageListDeviceViews with --gpu_aug, as targs' flags say)."""
    dataset = image_list_dataset(data, pipeline, epoch=True)
    if flags.get('published'):
        workers = args.published_workers or (args.num_workers if args.smoke else PUBLISHED_IMAGE_LIST_WORKERS)
        return dataset, DataLoader(PublishedViews(dataset), batch_size=args.batch_size, shuffle=True,
                                   num_workers=workers, pin_memory=False)
    return dataset, train.make_loader(dataset, EpochBatchSampler(len(dataset), args.batch_size, 0), targs, device)


def training_args(method, config, data, args):
    """train.py's arguments of a method and configuration on the benchmark (its recipe's defaults; CIFAR's
    RandAugment k of design 7's command, an image list's k = 2)."""
    spec, flags = METHODS[method], CONFIGS[config]
    argv = ['bench', '--dataset', data.benchmark.name, '--batch_size', str(args.batch_size),
            '--num_workers', str(args.num_workers)]
    argv += [] if is_image_list(data.benchmark.name) else ['--rand_k', str(spec['rand_k'])]
    argv += ['--bcl'] if spec['bcl'] else []
    argv += [flag for key, flag in LOADER_FLAGS.items() if flags.get(key)]
    return train.parse_args(argv, spec['sdclr'])


def bench_training(method, config, data, args, device):
    """Steady-state numbers of one method under one configuration (see the module docstring)."""
    spec, flags = METHODS[method], CONFIGS[config]
    targs = training_args(method, config, data, args)
    image_list = is_image_list(data.benchmark.name)
    set_seed(0)
    set_cuda_math(flags, device, image_list)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    if flags.get('compile'):
        torch._dynamo.reset()  # a fresh cache: no recompile limit carried over from other models

    pipeline = 'base' if not spec['bcl'] else f'BCL k={targs.rand_k}'
    if image_list:
        dataset, loader = image_list_loader(flags, pipeline, data, args, device, targs)
    else:
        dataset, loader = cifar_loader(flags, pipeline, data, args, device)
    loader = TimedLoader(loader)
    steps = len(loader)
    targs.print_freq = steps  # one loss check per epoch, as at batch 512 (20 steps, --print_freq 20)

    memory_format = torch.channels_last if flags.get('channels_last') else torch.contiguous_format
    model = build_model(prune=spec['sdclr'], network=targs.model, num_class=targs.num_class,
                        **data.benchmark.model_options(spec['sdclr'])).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=targs.lr, momentum=0.9, weight_decay=targs.weight_decay)
    if flags.get('published'):  # its history buffer: epochs x N of the published run
        momentum = PublishedMomentumLoss(len(dataset), targs.momentum_loss_beta, device, targs.epochs)
    else:
        momentum = train.MomentumLoss(len(dataset), targs.momentum_loss_beta, device)
    steady_loss = data.steady_loss[:len(dataset)]  # CIFAR: D_i's; an image list: the timed epoch's images'
    momentum.value.copy_(steady_loss)
    amp = flags.get('amp') == 'bf16'
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)  # noqa: E731 (as train.run)
    if flags.get('compile'):
        compile_model(model)
    step_fn = train_sdclr.sdclr_step if spec['sdclr'] else train.simclr_step
    real_steps = math.ceil(data.epoch_images / args.batch_size)  # steps of a real epoch

    def lr_at(step):  # train.run's schedule over a real run
        return targs.lr * cosine_annealing(step, targs.epochs * real_steps, 1, 1e-6 / targs.lr,
                                           warmup_steps=train.WARMUP_EPOCHS * real_steps)

    epoch_times = []
    for e in range(args.warmup_epochs + args.epochs):
        epoch = 2 + e  # past epoch 1: the momentum update blends, as in steady state (design 2)
        start = time.perf_counter()
        if spec['sdclr']:
            train_sdclr.prune_before_epoch(model, epoch, targs)
        train.train_epoch(model, loader, optimizer, step_fn, momentum, epoch, targs, lr_at, autocast, device,
                          memory_format)
        if spec['bcl']:  # as train.run, from the fixed steady-state losses (module docstring)
            dataset.update_momentum_weight(steady_loss)
        sync(device)
        epoch_times.append(time.perf_counter() - start)
    del loader.loader  # persistent workers end here

    durations, window, wait, images = [], 0.0, 0.0, 0
    for record in loader.epochs[args.warmup_epochs:]:
        # step k: from batch k in hand to batch k + 1 in hand (the last: to the end of its step)
        ends = record['got'][1:] + record['asked'][-1:]
        durations += [end - got for got, end in zip(record['got'], ends)]
        window += ends[-1] - record['got'][0]
        wait += sum(got - asked for asked, got in zip(record['asked'][1:], record['got'][1:]))
        images += sum(record['images'])
    # the median step is the steady state; slower steps right after the workers start (page
    # faults after fork, workers competing for cores) count in the per-epoch overhead
    step_s = float(np.median(durations))
    overhead_s = max(0.0, float(np.mean(epoch_times[args.warmup_epochs:])) - steps * step_s)  # < 0: noise
    epoch_s = overhead_s + real_steps * step_s
    return {'method': method, 'config': config, 'batch_size': args.batch_size, 'timed_steps': len(durations),
            'images_per_s': args.batch_size / step_s, 'step_s': step_s, 'data_wait_share': wait / window,
            'network_images_per_s': images / (window - wait), 'epoch_overhead_s': overhead_s,
            'steps_per_epoch': real_steps, 'epoch_s_extrapolated': epoch_s, 'pipeline': pipeline,
            'run_epochs': targs.epochs, f'hours_{targs.epochs}_epochs_extrapolated': targs.epochs * epoch_s / 3600,
            'warmup_s': sum(epoch_times[:args.warmup_epochs]), 'peak_memory_mb': peak_memory_mb(device),
            'final_loss': float(momentum.value.mean())}


# ----------------------------------------------------------------------------- evaluation

def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def bench_probes(data, args, device):
    """Seconds of the probes, test.py's stacked groups and the published one-probe-at-a-time,
    on features of the real shape (the values do not change the time), scaled to 500 epochs."""
    pool = np.unique(np.concatenate([s for sets in data.index_sets.values() for s in sets]))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(pool), 512, generator=generator).to(device)
    labels = torch.as_tensor(data.labels[pool]).to(device)
    test_labels = torch.from_numpy(np.array(data.test_labels)).to(device)
    test_features = torch.randn(len(test_labels), 512, generator=generator).to(device)
    linear_probe(features[:1000], labels[:1000], test_features, test_labels, epochs=1)  # warm-up
    scale = PROBE_EPOCHS / args.probe_epochs
    set_cuda_math({}, device)  # test.py's default: exact float32, whatever the last training row set
    stacked, _ = timed(lambda: test_script.run_probes(features, labels, test_features, test_labels, pool,
                                                      data.index_sets, args.probe_epochs, 0, data.class_counts,
                                                      verbose=False, num_class=data.benchmark.num_classes), device)
    rows = torch.as_tensor(np.searchsorted(pool, data.index_sets['fullshot'][0]), device=device)
    fullshot_s = scale * timed(lambda: linear_probe(features[rows], labels[rows], test_features, test_labels,
                                                    data.benchmark.num_classes, epochs=args.probe_epochs), device)[0]  # train.py's probe
    set_published_math()  # the published loop as it runs on today's torch (float32 matmuls)
    published = 0.0  # the published loop: each probe alone
    for sets in data.index_sets.values():
        for subset in sets:
            rows = torch.as_tensor(np.searchsorted(pool, subset), device=device)
            published += scale * timed(lambda: published_probe(features[rows], labels[rows], test_features,
                                                                test_labels, args.probe_epochs,
                                                                data.benchmark.num_classes), device)[0]
    return {'stacked_s': stacked * scale, 'published_s': published, 'fullshot_alone_s': fullshot_s,
            'epochs_timed': args.probe_epochs, 'extrapolated': scale != 1}


def published_probe(features, labels, test_features, test_labels, epochs, num_class=100):
    """The published probe loop (design 6): nn.Linear, autograd, torch.optim.Adam, ExponentialLR,
    a permutation per epoch, mini-batches of 1000; top-1 read back at the end."""
    probe = torch.nn.Linear(features.shape[1], num_class).to(features.device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=5e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(1e-6 / 1e-2) ** (1 / PROBE_EPOCHS))
    for _ in range(epochs):
        perm = torch.randperm(len(features), device=features.device)
        for start in range(0, len(features), 1000):
            batch = perm[start:start + 1000]
            loss = torch.nn.functional.cross_entropy(probe(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return (probe(test_features).argmax(1) == test_labels).float().mean().item()


def bench_eval(prune, config, probes, data, args, device):
    """Seconds of a full test.py evaluation of one model family under one configuration."""
    flags = CONFIGS[config]
    memory_format = torch.channels_last if flags.get('channels_last') else torch.contiguous_format
    model = build_model(prune=prune).to(device, memory_format=memory_format)
    set_cuda_math(flags, device)
    if flags.get('compile'):
        torch._dynamo.reset()
        compile_model(model, 'features')
    train_set, test_set = (data.benchmark.eval_dataset(data.folder, train) for train in (True, False))
    speed = dict(amp=flags.get('amp', 'none'), channels_last=flags.get('channels_last', False))

    def extract(dataset):
        return extract_features(model, dataset, device, num_workers=args.num_workers, **speed)
    n = args.eval_images or 1024  # warm-up on the timed batch size (compilation, cuDNN)
    warmup_s, _ = timed(lambda: extract(Subset(test_set, range(min(n, len(test_set))))), device)
    per_image = None
    if args.eval_images:
        per_image = timed(lambda: extract(Subset(test_set, range(args.eval_images))), device)[0] / args.eval_images

    def seconds(dataset):  # measured, or scaled from the per-image time
        return per_image * len(dataset) if per_image else timed(lambda: extract(dataset), device)[0]
    if flags.get('published'):  # every probe extracts its own train subset and the test set again
        sets = [s for group in data.index_sets.values() for s in group]
        features_s = sum(seconds(Subset(train_set, s)) + seconds(test_set) for s in sets)
        probes_s, passes = probes['published_s'], len(sets)
    else:  # test.py: one pass over the union of the train subsets, one over the test set
        pool = np.unique(np.concatenate([s for group in data.index_sets.values() for s in group]))
        features_s = seconds(Subset(train_set, pool)) + seconds(test_set)
        probes_s, passes = probes['stacked_s'], 1
    result = {'family': 'SDCLR' if prune else 'SimCLR', 'config': config, 'feature_passes': passes,
              'probe_sets': sum(map(len, data.index_sets.values())),
              'warmup_s': warmup_s, 'features_s': features_s, 'probes_s': probes_s,
              'total_s': warmup_s + features_s + probes_s, 'features_extrapolated': bool(per_image),
              'probes_extrapolated': probes['extrapolated']}
    if config == 'default':  # train.py's full_shot_eval: train list + test set, one probe, float32 eager
        train_list = Subset(train_set, data.index_sets['fullshot'][0])
        result['in_training_eval_s'] = seconds(train_list) + seconds(test_set) + probes['fullshot_alone_s']
    return result


# ----------------------------------------------------------------------------- loader ceiling

def bench_loader(pipeline, workers, data, args, device):
    """Images/s (each image = 2 views) of an augmentation pipeline alone through a DataLoader."""
    dataset = two_view_dataset(data, pipeline)
    count = min(args.loader_images or len(dataset), len(dataset))
    subset = Subset(dataset, torch.randperm(len(dataset))[:count].tolist())
    loader = DataLoader(subset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == 'cuda')
    iterator, seen = iter(loader), 0
    next(iterator)  # workers started and running
    start = time.perf_counter()
    for views, index in iterator:
        seen += len(index)
    return {'pipeline': pipeline, 'workers': workers, 'images': seen,
            'images_per_s': seen / (time.perf_counter() - start)}


def bench_device_augment(pipeline, data, args, device, epochs=3, images=None):
    """Images/s (each 2 views) of --gpu_aug's augmentation alone on `device`: DeviceViews over
    D_i (or its first `images`) at the benchmark's batch size, timed over whole epochs after one
    warm-up epoch."""
    dataset = two_view_dataset(data, pipeline, None if images is None else np.arange(min(images, len(data.d_i))))
    views = DeviceViews(dataset, EpochBatchSampler(len(dataset), args.batch_size, 0), device)
    seconds, images = [], 0
    for epoch in range(epochs + 1):
        views.batch_sampler.set_epoch(epoch + 1)
        dataset.set_epoch(epoch + 1)
        start = time.perf_counter()
        count = sum(len(positions) for _, positions in views)
        sync(device)
        if epoch:
            seconds.append(time.perf_counter() - start)
            images += count
    batch_ms = 1000 * sum(seconds) / (epochs * len(views))
    return {'pipeline': pipeline, 'images_per_s': images / sum(seconds), 'batch_ms': batch_ms}


def bench_image_list_augment(pipeline, data, args, device):
    """--gpu_aug's device half on an image list, per batch: image_list_views alone on DecodedBatches decoded
    beforehand (decode excluded; pinned on CUDA, as the loader pins them), the device synchronised. CUDA: 3
    batches, the first untimed (warm-up: kernels, allocator), the median of the others; CPU: one batch, timed
    (no warm-up to speak of, and seconds a batch of 4 at 224 px). bench_device_augment's row."""
    dataset = image_list_dataset(data, pipeline)
    size, cuda = args.batch_size, device.type == 'cuda'
    batches = 3 if cuda else 1
    decoded = [decode_batch(dataset, [(b * size + i) % len(dataset) for i in range(size)]) for b in range(batches)]
    if cuda:
        decoded = [batch.pin_memory() for batch in decoded]
    seconds = [timed(lambda: image_list_views(batch, device, dataset.recipe), device)[0] for batch in decoded]
    batch_s = float(np.median(seconds[1:] if cuda else seconds))
    return {'pipeline': pipeline, 'images_per_s': size / batch_s, 'batch_ms': 1000 * batch_s}


def bench_per_core(data, args):
    """The loader's images/s per core on the benchmark's JPEGs (image_pipeline.per_core_rates: the published
    pipeline, ours, --gpu_aug's workers, decode alone), base and BCL k = 2, on the first --loader_images."""
    base, boosted = (image_list_dataset(data, pipeline) for pipeline in IMAGE_LIST_PIPELINES)
    return per_core_rates(base, boosted, min(args.loader_images or len(base), len(base)), args.batch_size)


# ----------------------------------------------------------------------------- checkpoint writes

def main_thread_rate(done):
    """Iterations/s of a loop of small tensor ops in this thread (Python, the GIL and a CPU, as
    the training loop's kernel launches need them) until `done()`, checked every 64."""
    x, count, start = torch.zeros(8), 0, time.perf_counter()
    while count % 64 or not done():
        x.add_(1)
        count += 1
    return count / (time.perf_counter() - start)


def bench_checkpoint(prune, device, repeats=5):
    """Seconds the training loop spends on one model.pt of a model family (module docstring)."""
    model = build_model(prune=prune).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()  # SGD's momentum buffers exist, as after any step
    state = {'epoch': 2, 'state_dict': model.state_dict(), 'optim': optimizer.state_dict(),
             'momentum_loss': torch.zeros(9754, device=device), 'rng': rng_state(device)}
    synchronous, blocking, background, slowed = [], [], [], []
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        checkpoints = checkpoint.Checkpoints(folder, save_freq=0, last_epoch=EPOCHS)
        for _ in range(repeats):
            synchronous.append(timed(lambda: checkpoint.save(state, checkpoints.latest), device)[0])
            deadline = time.perf_counter() + 0.2
            idle_rate = main_thread_rate(lambda: time.perf_counter() > deadline)
            start = time.perf_counter()
            checkpoints.write(state, [checkpoints.latest], 2)
            blocking.append(time.perf_counter() - start)
            busy_rate = main_thread_rate(checkpoints.pending[0].done.is_set)
            checkpoints.wait()
            background.append(time.perf_counter() - start)
            slowed.append((background[-1] - blocking[-1]) * max(0.0, 1 - busy_rate / idle_rate))
        megabytes = os.path.getsize(checkpoints.latest) / 1e6
    median = lambda values: float(np.median(values))  # noqa: E731
    return {'family': 'SDCLR' if prune else 'SimCLR', 'megabytes': megabytes,
            'synchronous_s': median(synchronous), 'blocking_s': median(blocking), 'background_s': median(background),
            'slowed_s': median(slowed), 'saves_2000_epochs': EPOCHS // 2}


# ----------------------------------------------------------------------------- report

def reference_row(rows, row, key, reference):
    """The row of the same method (or family) in the reference configuration."""
    return next((r for r in rows if r[key] == row[key] and r['config'] == reference), None)


def ratio(value, reference):
    return f'{value / reference:.2f}x' if reference else '-'


def run_hours(row):
    """A training row's hours for its benchmark's published run (2000 epochs on CIFAR, 500 on the image lists),
    EXTRAPOLATED."""
    return row[f'hours_{row.get("run_epochs", EPOCHS)}_epochs_extrapolated']


def print_training(rows, s, reference, cuda):
    memory = 'torch.cuda.max_memory_allocated' if cuda else 'process RSS high-water (CPU, cumulative over the run)'
    run_epochs = rows[0]['run_epochs']
    print(f'\nTraining, steady state: {s["warmup_epochs"]} warm-up epoch(s), then {s["epochs"]} timed epoch(s) of '
          f'{s["steps"] or "all"} step(s); epoch and {run_epochs}-epoch times EXTRAPOLATED to '
          f'{rows[0]["steps_per_epoch"]} steps/epoch + the measured per-epoch overhead; speed-ups: ratios to '
          f'{reference} of the same method, of images/s and of the epoch time; peak memory: {memory}')
    print('| method | config | img/s | speed-up img/s | step ms | data wait | overhead s/epoch | '
          f'epoch s (extrap.) | speed-up epoch | {run_epochs} ep h (extrap.) | peak MB |')
    print('|---' * 11 + '|')
    for r in rows:
        ref = reference_row(rows, r, 'method', reference)
        print(f'| {r["method"]} | {r["config"]} | {r["images_per_s"]:,.1f} | '
              f'{ratio(r["images_per_s"], ref and ref["images_per_s"])} | {1000 * r["step_s"]:,.0f} | '
              f'{100 * r["data_wait_share"]:.0f}% | {r["epoch_overhead_s"]:,.2f} | '
              f'{r["epoch_s_extrapolated"]:,.1f} | '
              f'{ratio(ref["epoch_s_extrapolated"], r["epoch_s_extrapolated"]) if ref else "-"} | '
              f'{run_hours(r):,.1f} | {r["peak_memory_mb"]:,.0f} |')


def print_eval(rows, s, reference):
    features = (f'EXTRAPOLATED from {s["eval_images"]} images per config' if rows[0]['features_extrapolated']
                else 'measured at the real counts')
    probes = (f'EXTRAPOLATED from {s["probe_epochs"]} to 500 epochs' if rows[0]['probes_extrapolated']
              else 'measured at 500 epochs')
    print(f'\nEvaluation (test.py: feature pass + 11 probes); features {features}, probes {probes}; '
          f'speed-up = total-time ratio to {reference}')
    print('| family | config | feature passes | warm-up s | features s | probes s | total s | speed-up |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        ref = reference_row(rows, r, 'family', reference)
        print(f'| {r["family"]} | {r["config"]} | {r["feature_passes"]} | {r["warmup_s"]:,.1f} | '
              f'{r["features_s"]:,.1f} | {r["probes_s"]:,.1f} | {r["total_s"]:,.1f} | '
              f'{ratio(ref["total_s"], r["total_s"]) if ref else "-"} |')
    for r in rows:
        if 'in_training_eval_s' in r:
            count = EPOCHS // EVAL_FREQ
            hours = count * r['in_training_eval_s'] / 3600
            print(f'{r["family"]}: train.py\'s full-shot evaluation every --eval_freq {EVAL_FREQ} epochs '
                  f'(float32): {r["in_training_eval_s"]:,.1f} s each, x {count} = {hours:,.1f} h '
                  f'over 2000 epochs (not in the training times above)')


def print_loader(rows):
    workers = sorted({r['workers'] for r in rows})
    print('\nData loader ceiling: images/s (each 2 views) of the augmentation pipeline alone, no network')
    print('| pipeline | ' + ' | '.join(f'{w} worker(s)' for w in workers) + ' |')
    print('|---' * (len(workers) + 1) + '|')
    for pipeline in dict.fromkeys(r['pipeline'] for r in rows):
        rates = {r['workers']: r['images_per_s'] for r in rows if r['pipeline'] == pipeline}
        print(f'| {pipeline} | ' + ' | '.join(f'{rates[w]:,.0f}' for w in workers) + ' |')


def print_device_augment(rows, batch_size):
    print(f'\n--gpu_aug augmentation alone on the device: images/s (each 2 views), ms per batch of {batch_size}')
    print('| pipeline | img/s | ms per batch |\n|---|---|---|')
    for r in rows:
        print(f'| {r["pipeline"]} | {r["images_per_s"]:,.0f} | {r["batch_ms"]:.1f} |')


def print_checkpoint(rows):
    print('\nmodel.pt (design 5: every 2 epochs): seconds the training loop loses per write, median of 5 '
          '(background: the CPU copy it waits for + the time lost while the thread writes)')
    print('| family | MB | synchronous | background: copy + slowed = lost | the write itself | '
          'lost per 2000 epochs: synchronous -> background |\n|---|---|---|---|---|---|')
    for r in rows:
        lost = r['blocking_s'] + r['slowed_s']
        print(f'| {r["family"]} | {r["megabytes"]:.0f} | {r["synchronous_s"]:.3f} s | {r["blocking_s"]:.3f} + '
              f'{r["slowed_s"]:.3f} = {lost:.3f} s | {r["background_s"]:.3f} s | '
              f'{r["saves_2000_epochs"] * r["synchronous_s"]:,.0f} s -> {r["saves_2000_epochs"] * lost:,.0f} s |')


def print_per_core(rows):
    print(f'\nLoader, images/s per core (one process, one thread) on {rows[0]["images"]:,} images; two views each, '
          'decode alone one image')
    pipelines = IMAGE_LIST_PIPELINES
    print('| loader path | ' + ' | '.join(pipelines) + ' |\n' + '|---' * (len(pipelines) + 1) + '|')
    for path, title in PATHS.items():
        rates = {r['pipeline']: r['images_per_s_per_core'] for r in rows if r['path'] == path}
        print(f'| {title} | ' + ' | '.join(f'{rates.get(p, rates.get("any", math.nan)):,.1f}' for p in pipelines)
              + ' |')


def loader_cores(training, per_core):
    """Per method and loader path, the loader cores one GPU needs, from measured figures only: the network's
    images/s (the data wait excluded) in the fastest configuration loading through that path, over the path's
    images/s per core for the method's pipeline."""
    rates = {(r['path'], r['pipeline']): r['images_per_s_per_core'] for r in per_core}
    rows = []
    for method in dict.fromkeys(r['method'] for r in training):
        for path, loads in CORE_PATHS.items():
            runs = [r for r in training if r['method'] == method and loads(CONFIGS[r['config']])]
            rate = runs and rates.get((path, runs[0]['pipeline']))
            if rate:
                best = max(runs, key=lambda r: r['network_images_per_s'])
                rows.append({'method': method, 'path': path, 'what': PATHS[path], 'config': best['config'],
                             'network_images_per_s': best['network_images_per_s'], 'images_per_s_per_core': rate,
                             'cores': best['network_images_per_s'] / rate})
    return rows


def cores_lines(rows):
    return [f'{r["method"]}: loader cores one GPU needs through {r["what"]}: network '
            f'{r["network_images_per_s"]:,.1f} img/s ({r["config"]}) / {r["images_per_s_per_core"]:,.1f} img/s per '
            f'core = {r["cores"]:.3g} cores' for r in rows]


def print_report(results):
    s = results['settings']
    print(f'\n## {results["device"]}, torch {results["torch"]}; batch {s["batch_size"]}, '
          f'{s["num_workers"]} loader workers, {results["data"]}')
    reference = results['reference']['config']
    if results['training']:
        print_training(results['training'], s, reference, results['device_type'] == 'cuda')
    if results['eval']:
        print_eval(results['eval'], s, reference)
    if results['loader']:
        print_loader(results['loader'])
    if results.get('device_augment'):
        print_device_augment(results['device_augment'], s['batch_size'])
    if results.get('per_core'):
        print_per_core(results['per_core'])
    if results.get('checkpoint'):
        print_checkpoint(results['checkpoint'])
    for line in results['bound'] + cores_lines(results.get('cores', [])):
        print(line)


def bound_lines(results):
    """Per method: the fastest configuration's network rate (images/s without the data wait)
    against the loader ceiling of its pipeline at each measured worker count."""
    lines = []
    for method in dict.fromkeys(r['method'] for r in results['training']):
        best = max((r for r in results['training'] if r['method'] == method), key=lambda r: r['images_per_s'])
        network = best['network_images_per_s']
        ceilings = sorted((r['workers'], r['images_per_s']) for r in results['loader']
                          if r['pipeline'] == PIPELINES[method])
        if ceilings:
            verdicts = ', '.join(f'{w} workers {c:,.0f} -> {"loader" if c < network else "network"}-bound'
                                 for w, c in ceilings)
            lines.append(f'{method}: network {network:,.0f} img/s ({best["config"]}); '
                         f'loader ceiling at {verdicts}')
    return lines


def finite_positive(*values):
    return all(math.isfinite(value) and value > 0 for value in values)


def check_sane(results):
    """The smoke test's checks: every number finite and positive where it must be, and the extrapolations
    what they say (an epoch: the overhead + its steps x the step time; the run: its epochs x that)."""
    parts = ('training', 'eval', 'loader', 'checkpoint', 'per_core')
    assert any(results.get(part) for part in parts), 'nothing was measured'
    for r in results['training']:
        for key in ('images_per_s', 'step_s', 'network_images_per_s', 'epoch_s_extrapolated', 'peak_memory_mb',
                    'final_loss'):
            assert finite_positive(r[key]), (r['method'], r['config'], key, r[key])
        assert finite_positive(run_hours(r)) and 0 <= r['data_wait_share'] < 1 and r['epoch_overhead_s'] >= 0, r
        assert math.isclose(r['epoch_s_extrapolated'], r['epoch_overhead_s'] + r['steps_per_epoch'] * r['step_s']), r
        assert math.isclose(run_hours(r), r['run_epochs'] * r['epoch_s_extrapolated'] / 3600), r
    for r in results['eval']:
        for key in ('warmup_s', 'features_s', 'probes_s', 'total_s'):
            assert math.isfinite(r[key]) and r[key] > 0, (r['family'], r['config'], key, r[key])
        assert r['feature_passes'] == (r['probe_sets'] if CONFIGS[r['config']].get('published') else 1), r
    for r in results['loader']:
        assert r['images'] > 0 and math.isfinite(r['images_per_s']) and r['images_per_s'] > 0, r
    for r in results.get('checkpoint', []):
        assert r['megabytes'] > 1 and 0 < r['blocking_s'] <= r['background_s'] and r['synchronous_s'] > 0, r
        assert 0 <= r['slowed_s'] <= r['background_s'], r
    for r in results.get('device_augment', []):
        assert finite_positive(r['images_per_s'], r['batch_ms']), r
    for r in results.get('per_core', []):
        assert r['images'] > 0 and finite_positive(r['images_per_s_per_core']), r
    for r in results.get('cores', []):
        assert finite_positive(r['cores']) and math.isclose(r['cores'], r['network_images_per_s']
                                                            / r['images_per_s_per_core']), r


def cpu_model():
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown'


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU: {cpu_model()}, {os.cpu_count()} cores'


def reference_of(configs, device):
    """Which configuration every ratio of the run is against, and what it is."""
    if 'baseline' not in configs:
        return {'config': 'default', 'label': 'our loop without flags (exact float32)'}
    note = '' if device.type == 'cuda' else '; on the CPU TF32 does not exist: the same math as baseline_fp32'
    return {'config': 'baseline', 'label': LABELS['baseline'] + note,
            'second': 'baseline_fp32', 'second_label': LABELS['baseline_fp32']}


def check_writable(path):
    """Fails with a one-line error unless `path` can be written (its folder created if missing),
    so that a bad --output is refused before minutes of measurement."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, 'is a folder')
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        fail(f'cannot write --output {path} ({error.strerror}): pass a writable file path')


def write_json(results, path):
    try:
        with open(path, 'w') as f:
            json.dump(results, f, indent=1)
    except OSError as error:
        fail(f'cannot write --output {path} ({error.strerror})')


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        smoke_settings(args)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    image_list = is_image_list(args.dataset)
    defaults = kind_defaults(args.dataset)
    methods = (args.methods or defaults['methods']).split(',')
    chosen = (args.configs or defaults['configs']).split(',')  # the baselines first: every ratio is against them
    configs = list(dict.fromkeys((list(BASELINES) if args.baseline else [])
                                 + sorted(chosen, key=lambda c: c not in BASELINES)))
    parts = args.parts.split(',')
    for name, chosen, known in (('method', methods, METHODS), ('config', configs, CONFIGS),
                                ('part', parts, IMAGE_LIST_PARTS if image_list else PARTS)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            sys.exit(f'error: unknown {name} {", ".join(unknown)}: use {", ".join(known)}'
                     + (f' (on {args.dataset})' if name == 'part' and image_list else ''))
    output = args.output or os.path.join(CACHE, f'bench_{device.type}.json')
    check_writable(output)  # before any measurement
    name = device_name(device)
    data = image_list_data(args) if image_list else prepare_data(args)
    sizes = ({'jpegs': data.jpegs, 'mean_width_height': data.mean_width_height} if image_list
             else {'d_i_images': len(data.d_i)})
    results = {'device': name, 'device_type': device.type, 'torch': torch.__version__, 'data': data.description,
               'reference': reference_of(configs, device),
               'training': [], 'eval': [], 'loader': [], 'checkpoint': [], 'bound': [],
               'settings': {**vars(args), 'methods': methods, 'configs': configs, 'epoch_images': data.epoch_images,
                            **sizes}}
    print(f'{name}; {data.description}; methods {methods}; configs {configs}', flush=True)

    if 'train' in parts:
        for method in methods:
            for config in configs:
                r = bench_training(method, config, data, args, device)
                results['training'].append(r)
                print(f'train {method:6} {config:13} {r["images_per_s"]:9.1f} img/s  data wait '
                      f'{100 * r["data_wait_share"]:3.0f}%  warm-up {r["warmup_s"]:.1f}s', flush=True)
    if 'eval' in parts:
        probes = bench_probes(data, args, device)
        results['probes'] = probes
        for prune in dict.fromkeys(METHODS[m]['sdclr'] for m in methods):
            for config in configs:
                # no effect on test.py; the exact-float32 reference is a training row
                if config in ('persistent', 'baseline_fp32') or 'gpu_aug' in config:
                    continue
                r = bench_eval(prune, config, probes, data, args, device)
                results['eval'].append(r)
                print(f'eval  {r["family"]:6} {config:13} {r["total_s"]:9.1f} s', flush=True)
    if 'loader' in parts and image_list:
        results['per_core'] = bench_per_core(data, args)
        for r in results['per_core']:
            print(f'loader per core {r["path"]:14} {r["pipeline"]:8} {r["images_per_s_per_core"]:9.1f} img/s',
                  flush=True)
    elif 'loader' in parts:
        workers = (sorted({int(w) for w in args.loader_workers.split(',')}) if args.loader_workers
                   else sorted({1, args.num_workers, os.cpu_count()}))
        for pipeline in dict.fromkeys(PIPELINES[m] for m in methods):
            for w in workers:
                r = bench_loader(pipeline, w, data, args, device)
                results['loader'].append(r)
                print(f'loader {pipeline:8} {w:2} workers {r["images_per_s"]:9.1f} img/s', flush=True)
    if 'loader' in parts:
        results['device_augment'] = []
        augment = bench_image_list_augment if image_list else bench_device_augment
        for pipeline in IMAGE_LIST_PIPELINES if image_list else dict.fromkeys(PIPELINES[m] for m in methods):
            r = augment(pipeline, data, args, device)
            results['device_augment'].append(r)
            print(f'device augmentation (--gpu_aug) {pipeline:8} {r["images_per_s"]:9,.0f} img/s, '
                  f'{r["batch_ms"]:.1f} ms per batch of {args.batch_size} (two views each)', flush=True)
    if 'checkpoint' in parts:
        for prune in dict.fromkeys(METHODS[m]['sdclr'] for m in methods):
            r = bench_checkpoint(prune, device)
            results['checkpoint'].append(r)
            print(f'checkpoint {r["family"]:6} {r["megabytes"]:.0f} MB: synchronous {r["synchronous_s"]:.3f} s, '
                  f'background {r["blocking_s"]:.3f} + {r["slowed_s"]:.3f} s (write {r["background_s"]:.3f} s)',
                  flush=True)
    results['bound'] = bound_lines(results)
    results['cores'] = loader_cores(results['training'], results.get('per_core', []))
    print_report(results)

    write_json(results, output)
    print(f'\nresults written to {output}')
    if args.smoke:
        with open(output) as f:
            check_sane(json.load(f))
        print('smoke test passed')
    return results


if __name__ == '__main__':
    main()
