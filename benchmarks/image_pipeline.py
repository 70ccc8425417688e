"""CPU cost of the ImageNet-scale input pipeline, per core (issue 23, item 7): images/s of one process for

- decode only: PIL open + convert('RGB'), as published;
- the published pipeline run the published way: torchvision's Compose of design 9.3's transforms called twice per
  image (RandomResizedCrop(224, (0.08, 1), bicubic), flip, ColorJitter p 0.8, grayscale p 0.2, Pillow's
  GaussianBlur p 0.5), and with BCL's RandAugmentProb(2, 30 w u, p = w) after it;
- ours: data/image_list_datasets.py's keyed two views (base, and BCL k = 2), the loader path of train.py.

on JPEGs of ImageNet's size distribution (about 400 x 350 on average, some over 2,000 px), written here.

    python benchmarks/image_pipeline.py --images 200

One GPU at batch 256 needs (its training images/s) / (images/s per core) loader cores; the GPU's rate is
measured by issue 24's benchmark, so this prints the per-core rate it divides.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms
from torchvision.transforms import InterpolationMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.image_list import ImageList, load_rgb  # noqa: E402
from data.image_list_datasets import MemoBoostedImageList, TwoViewImageList  # noqa: E402
from data.randaug import NUM_OPS, apply_rand_augment  # noqa: E402
from data.synthetic import imagenet_size  # noqa: E402


def write_jpegs(folder, n, seed=0):
    """n JPEGs of ImageNet's size distribution (data.synthetic.imagenet_size) in 10 class folders: their ImageList."""
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        h, w = imagenet_size(rng)
        y, x = np.mgrid[0:h, 0:w]
        pixels = (np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1) + rng.normal(0, 25, (h, w, 3)))
        rel = f'train/n{i % 10:08d}/{i}.JPEG'
        os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, rel), quality=90)
        paths.append(rel)
    return ImageList(paths, [i % 10 for i in range(n)])


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
    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def published_compose(rand_augment=None):
    steps = [transforms.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC),
             transforms.RandomHorizontalFlip(),
             transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
             transforms.RandomGrayscale(p=0.2), transforms.RandomApply([PILBlur()], p=0.5)]
    return transforms.Compose(steps + ([rand_augment] if rand_augment else []) + [transforms.ToTensor()])


def rate(fn, n):
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--output', default=None, help='also write the figures as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: a loader worker's share
    folder = tempfile.mkdtemp(prefix='image_pipeline_')
    image_list = write_jpegs(folder, args.images)
    paths = [os.path.join(folder, image_list.relpath(i)) for i in range(len(image_list))]
    sizes = [Image.open(p).size for p in paths]
    n = len(paths)
    weights = torch.from_numpy(np.random.default_rng(1).random(n))
    base, bcl = published_compose(), [published_compose(PublishedRandAugmentProb(2, 30 * w * random.random(), w))
                                      for w in weights.tolist()]
    ours = TwoViewImageList(folder, image_list, 10, seed=0)
    boosted = MemoBoostedImageList(folder, image_list, 10, rand_k=2, rand_strength=30, seed=0)
    boosted.momentum_weight.copy_(weights)
    batches = [list(range(s, min(s + 32, n))) for s in range(0, n, 32)]
    figures = {
        'decode_only': rate(lambda: [load_rgb(p) for p in paths], n),
        'published_base': rate(lambda: [(base(img), base(img)) for img in map(load_rgb, paths)], n),
        'published_bcl_k2': rate(lambda: [(t(img), t(img)) for t, img in zip(bcl, map(load_rgb, paths))], n),
        'ours_base': rate(lambda: [ours.__getitems__(b) for b in batches], n),
        'ours_bcl_k2': rate(lambda: [boosted.__getitems__(b) for b in batches], n),
    }
    result = {'images': n, 'mean_size': [float(np.mean([s[0] for s in sizes])), float(np.mean([s[1] for s in sizes]))],
              'largest': max(max(s) for s in sizes), 'images_per_s_per_core': figures,
              'torch': torch.__version__}
    for name, value in figures.items():
        print(f'{name:<18} {value:7.1f} images/s per core (two views each, except decode_only)')
    print(f'{n} JPEGs, mean {result["mean_size"][0]:.0f} x {result["mean_size"][1]:.0f} px, largest side '
          f'{result["largest"]} px')
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
