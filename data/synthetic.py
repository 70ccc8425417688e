"""A small synthetic CIFAR-100 folder, written in torchvision's exact on-disk format.

CIFAR-100 cannot be downloaded everywhere (CI, offline machines), so tests and the
README's quick start write this folder and run the real loading code on it. Each class
gets its own colour and stripe pattern plus noise, so a linear probe on learned (or even
random) features does clearly better than chance.

    python -m data.synthetic example_data --train_per_class 20 --test_per_class 10
"""
import argparse
import os
import pickle

import numpy as np

from data.safe_pickle import NOT_OFFICIAL, mark_not_official

NUM_CLASSES = 100


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


def _write_batch(path, images, labels, name):
    entry = {
        'filenames': [f'{name}_{i}.png' for i in range(len(labels))],
        'batch_label': f'synthetic {name} batch',
        'fine_labels': [int(y) for y in labels],
        'coarse_labels': [int(y) // 5 for y in labels],
        # CIFAR stores each image as 3072 bytes: the R, G, B planes in row-major order.
        'data': images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
    }
    with open(path, 'wb') as f:
        pickle.dump(entry, f)


def write_synthetic_cifar100(root, train_per_class=20, test_per_class=10, seed=0):
    """Write `root/cifar-100-python/{train,test,meta}` and its NOT_OFFICIAL marker (the files have
    the official names, not the official md5s); return the folder `root`.

    Samples are interleaved by class (like the real files) so index order carries no
    class information.
    """
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    for name, per_class in (('train', train_per_class), ('test', test_per_class)):
        labels = np.tile(np.arange(NUM_CLASSES), per_class)
        images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
        for label in range(NUM_CLASSES):
            images[labels == label] = _class_images(label, per_class, rng)
        _write_batch(os.path.join(folder, name), images, labels, name)
    meta = {'fine_label_names': [f'class_{c:02d}' for c in range(NUM_CLASSES)],
            'coarse_label_names': [f'superclass_{c:02d}' for c in range(NUM_CLASSES // 5)]}
    with open(os.path.join(folder, 'meta'), 'wb') as f:
        pickle.dump(meta, f)
    mark_not_official(folder, f'{NOT_OFFICIAL}: synthetic CIFAR-100 written by data/synthetic.py, not the official '
                              'files; they load without the md5 check (data/safe_pickle.py)')
    return root


def main():
    parser = argparse.ArgumentParser(description='Write a synthetic CIFAR-100 folder.')
    parser.add_argument('root', help='folder to create (use it as --data_folder)')
    parser.add_argument('--train_per_class', type=int, default=20)
    parser.add_argument('--test_per_class', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    write_synthetic_cifar100(args.root, args.train_per_class, args.test_per_class, args.seed)
    print(f'wrote synthetic CIFAR-100 to {os.path.join(args.root, "cifar-100-python")}')


if __name__ == '__main__':
    main()
