"""The ImageNet-scale input pipeline (design 9.3) as the published code runs it, and its CPU cost per core (issues
23 and 24). benchmarks/bench.py --dataset imagenet100_lt measures it beside the device augmentation and training;
this entry point measures it alone:

    python benchmarks/image_pipeline.py --images 200

Images/s of one process with one thread (a loader worker's share of the machine), two 224-px views each, for the
base views and BCL k = 2:

- published: GH's datasets (TwoView_LT_Dataset, Memoboosed_LT_Dataset): torchvision's Compose of design 9.3's
  transforms called once per view, BCL's RandAugment_prob(2, 30 w u, p = w) built per image (PublishedViews);
- ours: data/image_list_datasets.py's keyed views (TwoViewImageList.__getitems__), train.py's loader path;
- gpu_aug worker: data.device_views.decode_batch, what --gpu_aug's loader workers do (decode, both views'
  parameters, each image's region), the rest being made on the device;
- decode: PIL open + convert('RGB') alone, as published.

One GPU needs (its training images/s) / (images/s per core) loader cores: bench.py prints that division.
"""
import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.device_views import decode_batch  # noqa: E402
from data.image_list import ImageList, read_image_list, write_image_list  # noqa: E402
from data.image_list_datasets import MemoBoostedImageList, TwoViewImageList  # noqa: E402
from data.randaug import NUM_OPS, apply_rand_augment  # noqa: E402
from data.synthetic import write_synthetic_imagenet  # noqa: E402

LIST_FILE = 'list.txt'  # write_jpegs' list, in the published `RELPATH LABEL` format
SHARD = 64  # JPEGs per process of write_jpegs
PATHS = {  # loader path -> what one core does per image (module docstring)
    'published': 'the published way (torchvision Compose per view)',
    'ours': 'ours (keyed views, TwoViewImageList)',
    'gpu_aug_worker': '--gpu_aug worker (decode_batch: decode, draw, cut the region)',
    'decode': 'JPEG decode alone (PIL open + RGB)',
}


# ----------------------------------------------------------------------------- the published pipeline

class PublishedRandAugmentProb:
    """BCL's RandAugmentProb(k, m, p) drawn the published way (Python's random, per call) onto our op code."""

    def __init__(self, k, magnitude, p):
        self.k, self.magnitude, self.p = k, magnitude, p

    def __call__(self, img):
        ops = [random.randrange(NUM_OPS) for _ in range(self.k)]
        applied = [random.random() < self.p for _ in range(self.k)]
        signs = [random.choice((-1.0, 1.0)) for _ in range(self.k)]
        centres = [[random.random(), random.random()] for _ in range(self.k)]
        return apply_rand_augment(img, self.magnitude, ops, applied, signs, centres)


class PILBlur:
    """GH's GaussianBlur: Pillow's blur with sigma ~ U(0.1, 2.0) (design 9.3)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def published_compose(rand_augment=None):
    """GH's utils.imagenet_strong_aug (design 9.3), with BCL's RandAugment after the blur when given."""
    steps = [transforms.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC),
             transforms.RandomHorizontalFlip(),
             transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
             transforms.RandomGrayscale(p=0.2), transforms.RandomApply([PILBlur()], p=0.5)]
    return transforms.Compose(steps + ([rand_augment] if rand_augment else []) + [transforms.ToTensor()])


class PublishedViews(Dataset):
    """The published two-view dataset over our dataset's images (GH's TwoView_LT_Dataset, or BCL's
    Memoboosed_LT_Dataset when the dataset has momentum weights, read from its shared memory so that the
    benchmark's weight updates reach the workers): item i -> (views [2, 3, 224, 224], i). The views are made
    the published way: one Compose called per view, BCL's built per image with u ~ U(0, 1) shared by both views."""

    def __init__(self, dataset):
        self.dataset, self.base = dataset, published_compose()

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        img = self.dataset.image(i)  # opened with PIL, converted to RGB, as published
        transform = self.base
        if self.dataset.momentum_weight is not None:
            weight = float(self.dataset.momentum_weight[i])
            transform = published_compose(PublishedRandAugmentProb(
                self.dataset.rand_k, self.dataset.rand_strength * weight * random.random(), weight))
        return torch.stack((transform(img), transform(img))), i


# ----------------------------------------------------------------------------- real-size JPEGs

def _write_shard(job):
    """One process's share of write_jpegs: data.synthetic's JPEGs in `root`; their paths relative to it."""
    root, count, dataset, sizes, seed = job
    written = write_synthetic_imagenet(root, os.path.join(root, 'lists'), 'shard', dataset, num_classes=1,
                                       head=count, tail=count, probe_per_class=0, test_per_class=0, sizes=sizes,
                                       seed=seed)
    with open(os.path.join(root, 'lists', written['lists']['TRAIN'])) as f:
        return [line.split()[0] for line in f]


def write_jpegs(folder, count, dataset='imagenet100_lt', sizes='imagenet'):
    """`count` real JPEGs of data.synthetic's (ImageNet's size distribution by default) under `folder`, listed in
    folder/LIST_FILE: their ImageList. Drawing and encoding one ImageNet-sized JPEG takes ~30 ms, so shards of
    SHARD images (shard k with seed k: the same JPEGs on any machine) are written side by side, one process a
    core (forked: they use numpy and PIL only)."""
    jobs = [(os.path.join(folder, f'part{k}'), min(SHARD, count - start), dataset, sizes, k)
            for k, start in enumerate(range(0, count, SHARD))]
    processes = max(1, min(os.cpu_count() or 1, 16, len(jobs)))
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context('fork')) as pool:
        shard_paths = list(pool.map(_write_shard, jobs))
    paths = [f'part{k}/{path}' for k, shard in enumerate(shard_paths) for path in shard]
    image_list = ImageList(paths, [0] * len(paths))
    write_image_list(os.path.join(folder, LIST_FILE), image_list)
    return image_list


def read_jpegs(folder, num_classes):
    """The ImageList that write_jpegs wrote into `folder`."""
    return read_image_list(os.path.join(folder, LIST_FILE), num_classes)


# ----------------------------------------------------------------------------- images/s per core

def rate(fn, n):
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def per_core_rates(base, boosted, count, batch_size):
    """Images/s of one process with one thread for each loader path (PATHS) on the first `count` images: rows
    {'path', 'what', 'pipeline' ('base', 'BCL k=2'; 'any' for decode), 'images', 'images_per_s_per_core'}. `base`: a
    TwoViewImageList, `boosted`: a MemoBoostedImageList (k = 2, weights set) of the same images; ours and the
    workers take batches of `batch_size`, as a DataLoader hands them."""
    positions = list(range(count))
    batches = [positions[start:start + batch_size] for start in range(0, count, batch_size)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: a loader worker's share
    try:
        rows = []
        for pipeline, dataset in (('base', base), (f'BCL k={boosted.rand_k}', boosted)):
            published = PublishedViews(dataset)
            rows += [('published', pipeline, rate(lambda: [published[p] for p in positions], count)),
                     ('ours', pipeline, rate(lambda: [dataset.__getitems__(b) for b in batches], count)),
                     ('gpu_aug_worker', pipeline, rate(lambda: [decode_batch(dataset, b) for b in batches], count))]
        rows.append(('decode', 'any', rate(lambda: [base.image(p) for p in positions], count)))
    finally:
        torch.set_num_threads(threads)
    return [{'path': path, 'what': PATHS[path], 'pipeline': pipeline, 'images': count, 'images_per_s_per_core': value}
            for path, pipeline, value in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--output', default=None, help='also write the figures as JSON here')
    args = parser.parse_args(argv)
    if args.images < 1:
        sys.exit(f'error: --images {args.images}: pass at least 1')
    with tempfile.TemporaryDirectory(prefix='image_pipeline_') as folder:
        image_list = write_jpegs(folder, args.images)
        sizes = [Image.open(os.path.join(folder, image_list.relpath(i))).size for i in range(len(image_list))]
        base = TwoViewImageList(folder, image_list, 1, seed=0)
        boosted = MemoBoostedImageList(folder, image_list, 1, rand_k=2, rand_strength=30, seed=0)
        boosted.momentum_weight.copy_(torch.from_numpy(np.random.default_rng(1).random(len(image_list))))
        rows = per_core_rates(base, boosted, len(image_list), 32)
    result = {'images': len(image_list), 'mean_size': [float(np.mean([s[0] for s in sizes])),
                                                       float(np.mean([s[1] for s in sizes]))],
              'largest': max(max(s) for s in sizes), 'rows': rows, 'torch': torch.__version__}
    for r in rows:
        print(f'{PATHS[r["path"]]:<64} {r["pipeline"]:8} {r["images_per_s_per_core"]:7.1f} images/s per core')
    print(f'{len(image_list)} JPEGs, mean {result["mean_size"][0]:.0f} x {result["mean_size"][1]:.0f} px, largest side '
          f'{result["largest"]} px; two views each, except decode')
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
