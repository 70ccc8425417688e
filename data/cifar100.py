"""CIFAR-100 from `--data_folder` in torchvision's on-disk layout, and its datasets (design 1.2).

The pickles are read directly: torchvision's CIFAR100 md5-checks the files and would
reject the synthetic folder tests use; torchvision is used only to download.
"""
import functools
import os
import pickle

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.augmentations import eval_transform, simclr_transform
from utils import InputError

NUM_CLASSES = 100


@functools.lru_cache(maxsize=4)
def read_batch(path):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one pickled CIFAR-100 file, cached
    so that several datasets over the same file read it once. Read-only: callers copy."""
    try:
        with open(path, 'rb') as f:
            entry = pickle.load(f, encoding='latin1')
        # 'data' holds each image as 3072 bytes: the R, G, B planes in row-major order.
        images = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry['fine_labels'], dtype=np.int64)
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f'{len(images)} images and {len(labels)} labels')
    except Exception as e:  # empty, truncated or not a CIFAR-100 pickle
        reason = (str(e).splitlines() or [''])[0][:120]
        raise InputError(f'{path} is not a readable CIFAR-100 batch ({type(e).__name__}: {reason}): delete '
                         f"the folder's cifar-100-python/ and download it again") from None
    images = np.ascontiguousarray(images)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_cifar100(data_folder, train, download=True):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of the train or test set."""
    folder = os.path.join(data_folder, 'cifar-100-python')
    path = os.path.abspath(os.path.join(folder, 'train' if train else 'test'))
    if not os.path.isfile(path):
        remedy = ("pass --data_folder DATA, the folder holding torchvision's cifar-100-python/{train,test,meta} "
                  '(or run once with internet to download it there)')
        if not download:
            raise InputError(f'CIFAR-100 not found in {os.path.abspath(folder)}: {remedy}')
        try:
            import torchvision
            torchvision.datasets.CIFAR100(data_folder, train=train, download=True)
        except Exception as e:
            raise InputError(f'CIFAR-100 not found in {os.path.abspath(folder)} and the download failed '
                             f'({type(e).__name__}: {e}): {remedy}') from e
    return read_batch(path)


class TwoViewCIFAR100(Dataset):
    """The train images at `indices`; item i -> (two augmented views [2, 3, 32, 32], i)."""

    def __init__(self, data_folder, indices, transform=None, download=True):
        images, labels = load_cifar100(data_folder, train=True, download=download)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.images, self.labels = images[self.indices], labels[self.indices]
        self.num_class = NUM_CLASSES
        self.class_counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        self.transform = transform if transform is not None else simclr_transform()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return torch.stack([self.transform(img), self.transform(img)]), i


class EvalCIFAR100(Dataset):
    """Train or test images (optionally at `indices`); item -> (image [3, 32, 32], label)."""

    def __init__(self, data_folder, train, indices=None, download=True):
        images, labels = load_cifar100(data_folder, train=train, download=download)
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            images, labels = images[indices], labels[indices]
        self.images, self.labels = images, labels
        self.transform = eval_transform()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
