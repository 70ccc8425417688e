"""A small synthetic CIFAR-100 or CIFAR-10 folder, written in torchvision's exact on-disk format.

CIFAR cannot be downloaded everywhere (CI, offline machines), so tests and the
README's quick start write this folder and run the real loading code on it. Each class
gets its own colour and stripe pattern plus noise, so a linear probe on learned (or even
random) features does clearly better than chance.

    python -m data.synthetic example_data --train_per_class 20 --test_per_class 10 [--dataset cifar10]

The ImageNet-scale benchmarks (design 9) get real JPEG files of varied sizes and aspect ratios in
ImageNet's layout (`train/nXXXXXXXX/nXXXXXXXX_J.JPEG`, `val/...`), with lists in the published
`RELPATH LABEL` format under split/FAMILY/ at the published relative names:

    python -m data.synthetic example_jpegs --dataset imagenet100_lt --family example_in100

The CIFAR writer is numpy-only (no torch): it writes the layouts itself.
"""
import argparse
import os
import pickle

import numpy as np
from PIL import Image

from data.safe_pickle import NOT_OFFICIAL, mark_not_official

# torchvision's layouts (data/cifar100.py reads them): folder, train files, test file, label key, meta
LAYOUTS = {
    'cifar100': ('cifar-100-python', ('train',), 'test', 'fine_labels', 'meta', 100),
    'cifar10': ('cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)), 'test_batch', 'labels',
                'batches.meta', 10),
}


def _class_images(label, count, rng):
    """`count` uint8 images [count, 32, 32, 3] of class `label`."""
    class_rng = np.random.RandomState(1000 + label)
    colour = class_rng.randint(40, 216, size=3)
    frequency = 1 + label % 7
    angle = np.pi * (label // 7) / 15
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    stripes = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
    base = colour[None, None, :] + 40 * stripes[:, :, None]
    noise = rng.normal(0, 20, size=(count, 32, 32, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _write_batch(path, images, labels, name, label_key):
    entry = {
        'filenames': [f'{name}_{i}.png' for i in range(len(labels))],
        'batch_label': f'synthetic {name} batch',
        label_key: [int(y) for y in labels],
        # CIFAR stores each image as 3072 bytes: the R, G, B planes in row-major order.
        'data': images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
    }
    if label_key == 'fine_labels':
        entry['coarse_labels'] = [int(y) // 5 for y in labels]
    with open(path, 'wb') as f:
        pickle.dump(entry, f)


def write_synthetic_cifar(root, dataset='cifar100', train_per_class=20, test_per_class=10, seed=0):
    """Write `root/<torchvision's folder>/` of `dataset` ('cifar100': train, test, meta; 'cifar10':
    data_batch_1..5, test_batch, batches.meta) and its NOT_OFFICIAL marker (the files have the
    official names, not the official md5s); return the folder `root`.

    Samples are interleaved by class (like the real files) so index order carries no class
    information; CIFAR-10's train set is split into its five batch files in order.
    """
    folder_name, train_files, test_file, label_key, meta_file, num_classes = LAYOUTS[dataset]
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, folder_name)
    os.makedirs(folder, exist_ok=True)
    for files, per_class in ((train_files, train_per_class), ((test_file,), test_per_class)):
        labels = np.tile(np.arange(num_classes), per_class)
        images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
        for label in range(num_classes):
            images[labels == label] = _class_images(label, per_class, rng)
        for name, part in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            _write_batch(os.path.join(folder, name), images[part], labels[part], name, label_key)
    if dataset == 'cifar100':
        meta = {'fine_label_names': [f'class_{c:02d}' for c in range(num_classes)],
                'coarse_label_names': [f'superclass_{c:02d}' for c in range(num_classes // 5)]}
    else:
        meta = {'label_names': [f'class_{c}' for c in range(num_classes)], 'num_cases_per_batch': len(labels),
                'num_vis': 3072}
    with open(os.path.join(folder, meta_file), 'wb') as f:
        pickle.dump(meta, f)
    mark_not_official(folder, f'{NOT_OFFICIAL}: synthetic {dataset} written by data/synthetic.py, not the official '
                              'files; they load without the md5 check (data/safe_pickle.py)')
    return root


IMAGE_LIST_DATASETS = ('imagenet100_lt', 'imagenet_lt', 'imagenet_lt_exp', 'places_lt')


def imagenet_size(rng):
    """A (height, width) like ImageNet's (a RandomState's draw): log-normal around 350 x 420, one in a hundred
    five times wider (past 2,000 px)."""
    width = min(max(rng.lognormal(np.log(420), 0.35), 64), 4000) * (5 if rng.random_sample() < 0.01 else 1)
    aspect = min(max(rng.lognormal(np.log(0.85), 0.2), 0.3), 3)
    return int(max(64, width * aspect)), int(width)


def _jpeg(path, label, rng, sizes):
    """A real JPEG of class `label` (its colour and stripes, plus noise) of a random size in `sizes`
    ((low, high) for each side, or 'imagenet': imagenet_size's distribution)."""
    height, width = imagenet_size(rng) if sizes == 'imagenet' else rng.randint(sizes[0], sizes[1] + 1, size=2)
    class_rng = np.random.RandomState(1000 + label)
    colour = class_rng.randint(40, 216, size=3)
    yy, xx = np.mgrid[0:height, 0:width] / float(max(height, width))
    stripes = np.sin(2 * np.pi * (1 + label % 7) * (xx + yy * (label % 3)))
    pixels = colour[None, None, :] + 40 * stripes[:, :, None] + rng.normal(0, 20, size=(height, width, 3))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_synthetic_imagenet(data_root, split_root, family, dataset='imagenet100_lt', num_classes=4, head=5, tail=2,
                             probe_per_class=2, test_per_class=2, sizes=(40, 120), seed=0):
    """A folder of real JPEGs for an ImageNet-scale benchmark and its lists, at split_root/family/<the
    benchmark's published list names>: a long-tailed pre-training list (head down to tail images a class,
    exponentially), each probe list (probe_per_class a class, other images of train/) and the test list
    (test_per_class a class, in val/), and the SDCLR protocol's val list where the benchmark has one (probe_per_class
    a class, in val/). Labels are 0..num_classes-1. Returns {'lists': {'TRAIN', 'TEST', 'VAL' and each probe group:
    list name relative to split_root}, 'data_root'}."""
    from data.benchmarks import get_benchmark
    benchmark = get_benchmark(dataset)
    rng = np.random.RandomState(seed)
    roles = {'TRAIN': benchmark.default_split, **benchmark.probe_lists, 'TEST': benchmark.test_list,
             **({'VAL': benchmark.val_list} if benchmark.val_list else {})}
    per_class = {'TRAIN': [int(head * (tail / head) ** (r / max(num_classes - 1, 1)) + 1e-9)
                           for r in range(num_classes)],
                 'TEST': [test_per_class] * num_classes}
    lists, written = {}, 0
    for role, name in roles.items():
        lines = []
        for label in range(num_classes):
            wnid = f'n{label:08d}' if dataset != 'places_lt' else f'category_{label}'
            folder = 'val' if role in ('TEST', 'VAL') else 'train'
            for _ in range(per_class.get(role, [probe_per_class] * num_classes)[label]):
                rel = f'{folder}/{wnid}/{wnid}_{written}.JPEG'
                _jpeg(os.path.join(data_root, rel), label, rng, sizes)
                lines.append(f'{rel} {label}\n')
                written += 1
        path = os.path.join(split_root, family, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.writelines(lines)
        lists[role] = f'{family}/{name}'
    return {'lists': lists, 'data_root': os.path.abspath(data_root)}


def main():
    parser = argparse.ArgumentParser(description='Write a synthetic CIFAR-100 or CIFAR-10 folder, or JPEGs and lists '
                                                 'for an ImageNet-scale benchmark.')
    parser.add_argument('root', help='folder to create (use it as --data_folder)')
    parser.add_argument('--dataset', default='cifar100', choices=sorted(LAYOUTS) + list(IMAGE_LIST_DATASETS))
    parser.add_argument('--train_per_class', type=int, default=20)
    parser.add_argument('--test_per_class', type=int, default=10)
    parser.add_argument('--family', default='example', help='ImageNet-scale sets: the lists go to split/FAMILY/')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.dataset in IMAGE_LIST_DATASETS:
        from split.resolve import SPLIT_ROOT
        written = write_synthetic_imagenet(args.root, SPLIT_ROOT, args.family, args.dataset, num_classes=10, head=16,
                                           tail=2, probe_per_class=2, test_per_class=2, seed=args.seed)
        print(f'wrote synthetic {args.dataset} JPEGs to {written["data_root"]}; pre-training list: '
              f'--trainSplit {written["lists"]["TRAIN"]}')
        return
    write_synthetic_cifar(args.root, args.dataset, args.train_per_class, args.test_per_class, args.seed)
    print(f'wrote synthetic {args.dataset} to {os.path.join(args.root, LAYOUTS[args.dataset][0])}')


if __name__ == '__main__':
    main()
