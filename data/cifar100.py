"""CIFAR-100 from `--data_folder` in torchvision's on-disk layout, and its datasets (design 1.2).

The pickles are read by data.safe_pickle: a restricted unpickler (nothing but a CIFAR batch's types
can be built, so a crafted file cannot run code) and torchvision's md5s for the official file names,
skipped in a folder marked NOT_OFFICIAL (the synthetic folder tests use); torchvision is used only
to download.
"""
import functools
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import torchvision
from torchvision.transforms import functional as F

from data.augmentations import augment_view, eval_transform
from data.safe_pickle import load_cifar_pickle, official_md5s
from data.view_params import draw_views
from utils import InputError, keyed_seed

NUM_CLASSES = 100
OFFICIAL_MD5 = official_md5s(torchvision.datasets.CIFAR100)  # {'train', 'test', 'meta': md5}
AUGMENT_STREAM = 2  # keyed_seed(seed, epoch, AUGMENT_STREAM) keys the views (the sample order uses (seed, epoch))


@functools.lru_cache(maxsize=4)
def read_batch(path):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one pickled CIFAR-100 file, cached
    so that several datasets over the same file read it (and check its md5) once. Read-only: callers copy."""
    try:
        entry = load_cifar_pickle(path, OFFICIAL_MD5, 'CIFAR-100')
        # 'data' holds each image as 3072 bytes: the R, G, B planes in row-major order.
        images = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry['fine_labels'], dtype=np.int64)
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f'{len(images)} images and {len(labels)} labels')
    except InputError:  # not the official file, or a forbidden global: its own message
        raise
    except Exception as e:  # empty, truncated or not a CIFAR-100 pickle
        reason = (str(e).splitlines() or [''])[0][:120]
        raise InputError(f'{path} is not a readable CIFAR-100 batch ({type(e).__name__}: {reason}): delete '
                         f"the folder's cifar-100-python/ and download it again") from None
    images = np.ascontiguousarray(images)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def batch_path(data_folder, train):
    """The absolute path of the train or test batch in torchvision's layout."""
    return os.path.abspath(os.path.join(data_folder, 'cifar-100-python', 'train' if train else 'test'))


def load_cifar100(data_folder, train, download=True):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of the train or test set."""
    folder = os.path.join(data_folder, 'cifar-100-python')
    path = batch_path(data_folder, train)
    if not os.path.isfile(path):
        remedy = ("pass --data_folder DATA, the folder holding torchvision's cifar-100-python/{train,test,meta} "
                  '(or run once with internet to download it there)')
        if not download:
            raise InputError(f'CIFAR-100 not found in {os.path.abspath(folder)}: {remedy}')
        try:
            torchvision.datasets.CIFAR100(data_folder, train=train, download=True)
        except Exception as e:
            raise InputError(f'CIFAR-100 not found in {os.path.abspath(folder)} and the download failed '
                             f'({type(e).__name__}: {e}): {remedy}') from e
    return read_batch(path)


class TwoViewCIFAR100(Dataset):
    """The train images at `indices`; item i -> (two augmented views [2, 3, 32, 32], i).

    The views of position i in epoch e are a function of (seed, e, i) alone (issue 11): their
    parameters are drawn for a whole batch at once (`__getitems__`, which the DataLoader calls
    with each batch) from keyed uniforms, so they do not depend on the loader's workers, their
    order or persistence, or on a resume. `set_epoch` picks the epoch; it is stored in shared
    memory so that persistent workers see it (set it before the epoch's loader iterator starts).
    """

    def __init__(self, data_folder, indices, seed=0, download=True):
        images, labels = load_cifar100(data_folder, train=True, download=download)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.images, self.labels = images[self.indices], labels[self.indices]
        self.num_class = NUM_CLASSES
        self.class_counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        self.epoch.fill_(epoch)

    def views_key(self):
        return keyed_seed(self.seed, int(self.epoch), AUGMENT_STREAM)

    rand_k, rand_strength, momentum_weight = 0, 30, None  # no RandAugment (MemoBoostedCIFAR100 has it)

    def view_params(self, positions, momentum_weight=None):
        """data.view_params.ViewParams of the samples at `positions` (int64 tensor) this epoch;
        BCL's weights read from `momentum_weight` (a copy on the positions' device) or, by default,
        from self.momentum_weight."""
        weight = self.momentum_weight if momentum_weight is None else momentum_weight
        return draw_views(self.views_key(), positions, self.images.shape[1:3], self.rand_k,
                          None if weight is None else weight[positions], self.rand_strength)

    def __getitems__(self, positions):
        positions = [range(len(self))[p] for p in positions]  # -1 is N-1 (the same key), too large: IndexError
        params = self.view_params(torch.as_tensor(positions, dtype=torch.int64)).per_view()
        return [(self.render(position, views), position) for position, views in zip(positions, params)]

    def __getitem__(self, position):
        return self.__getitems__([position])[0]

    def render(self, position, views):
        img = Image.fromarray(self.images[position])
        return torch.stack([F.to_tensor(augment_view(img, view)) for view in views])


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
