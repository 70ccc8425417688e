"""A small synthetic CIFAR-100 or CIFAR-10 folder, written in torchvision's exact on-disk format.

CIFAR cannot be downloaded everywhere (CI, offline machines), so tests and the
README's quick start write this folder and run the real loading code on it. Each class
gets its own colour and stripe pattern plus noise, so a linear probe on learned (or even
random) features does clearly better than chance.

    python -m data.synthetic example_data --train_per_class 20 --test_per_class 10 [--dataset cifar10]

This file is a numpy-only script (no torch): it writes the layouts itself.
"""
import argparse
import os
import pickle

import numpy as np

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


def main():
    parser = argparse.ArgumentParser(description='Write a synthetic CIFAR-100 or CIFAR-10 folder.')
    parser.add_argument('root', help='folder to create (use it as --data_folder)')
    parser.add_argument('--dataset', default='cifar100', choices=sorted(LAYOUTS))
    parser.add_argument('--train_per_class', type=int, default=20)
    parser.add_argument('--test_per_class', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    write_synthetic_cifar(args.root, args.dataset, args.train_per_class, args.test_per_class, args.seed)
    print(f'wrote synthetic {args.dataset} to {os.path.join(args.root, LAYOUTS[args.dataset][0])}')


if __name__ == '__main__':
    main()
