"""CIFAR-10 and CIFAR-100 from `--data_folder` in torchvision's on-disk layouts, and their datasets
(design 1.2, 9.1): one reader for both, parametrised by a CifarSource.

The pickles are read by data.safe_pickle: a restricted unpickler (nothing but a CIFAR batch's types
can be built, so a crafted file cannot run code) and torchvision's md5s for the official file names,
skipped in a folder marked NOT_OFFICIAL (the synthetic folder tests use); torchvision is used only
to download.
"""
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import torchvision

from data.augmentations import eval_transform, render_views
from data.safe_pickle import load_cifar_pickle, official_md5s
from data.view_params import CIFAR, draw_views
from utils import InputError, keyed_seed

AUGMENT_STREAM = 2  # keyed_seed(seed, epoch, AUGMENT_STREAM) keys the views (the sample order uses (seed, epoch))


@dataclass(frozen=True)
class CifarSource:
    """Where torchvision puts a CIFAR dataset under --data_folder, and how its batches are read."""
    name: str  # 'CIFAR-100'
    folder: str  # torchvision's base_folder
    train_files: tuple  # the train set is these batches, concatenated in order
    test_files: tuple
    label_key: str
    num_classes: int
    torchvision_class: type

    @property
    def official_md5(self):
        """{file name: md5} of the official files (torchvision's table)."""
        return official_md5s(self.torchvision_class)

    def paths(self, data_folder, train):
        """The absolute paths of the train or test batches."""
        return [os.path.abspath(os.path.join(data_folder, self.folder, name))
                for name in (self.train_files if train else self.test_files)]


CIFAR100 = CifarSource('CIFAR-100', 'cifar-100-python', ('train',), ('test',), 'fine_labels', 100,
                       torchvision.datasets.CIFAR100)
CIFAR10 = CifarSource('CIFAR-10', 'cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)),
                      ('test_batch',), 'labels', 10, torchvision.datasets.CIFAR10)


@functools.lru_cache(maxsize=8)
def read_batch(path, source=CIFAR100):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one pickled CIFAR file, cached so that
    several datasets over the same file read it (and check its md5) once. Read-only: callers copy."""
    try:
        entry = load_cifar_pickle(path, source.official_md5, source.name)
        # 'data' holds each image as 3072 bytes: the R, G, B planes in row-major order.
        images = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry[source.label_key], dtype=np.int64)
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f'{len(images)} images and {len(labels)} labels')
        if labels.min() < 0 or labels.max() >= source.num_classes:
            raise ValueError(f'labels in [{labels.min()}, {labels.max()}], not 0..{source.num_classes - 1}')
    except InputError:  # not the official file, or a forbidden global: its own message
        raise
    except Exception as e:  # empty, truncated or not a batch of this dataset
        reason = (str(e).splitlines() or [''])[0][:120]
        raise InputError(f'{path} is not a readable {source.name} batch ({type(e).__name__}: {reason}): delete '
                         f"the folder's {source.folder}/ and download it again") from None
    images = np.ascontiguousarray(images)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def read_batches(paths, source):
    """The batches at `paths` in order, concatenated (CIFAR-10's five train batches); read-only."""
    batches = [read_batch(path, source) for path in paths]
    if len(batches) == 1:
        return batches[0]
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_cifar(data_folder, train, source=CIFAR100, download=True):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of the train or test set; downloaded with
    torchvision when missing (and `download`)."""
    folder = os.path.join(data_folder, source.folder)
    paths = source.paths(data_folder, train)
    if not all(map(os.path.isfile, paths)):
        files = ','.join(source.train_files + source.test_files)
        remedy = (f"pass --data_folder DATA, the folder holding torchvision's {source.folder}/{{{files}}} "
                  '(or run once with internet to download it there)')
        if not download:
            raise InputError(f'{source.name} not found in {os.path.abspath(folder)}: {remedy}')
        try:
            source.torchvision_class(data_folder, train=train, download=True)
        except Exception as e:
            raise InputError(f'{source.name} not found in {os.path.abspath(folder)} and the download failed '
                             f'({type(e).__name__}: {e}): {remedy}') from e
    return read_batches(paths, source)


class TwoViewCIFAR(Dataset):
    """The train images at `indices`; item i -> (two augmented views [2, 3, 32, 32], i).

    The views of position i in epoch e are a function of (seed, e, i) alone (issue 11): their
    parameters are drawn for a whole batch at once (`__getitems__`, which the DataLoader calls
    with each batch) from keyed uniforms, so they do not depend on the loader's workers, their
    order or persistence, or on a resume. `set_epoch` picks the epoch; it is stored in shared
    memory so that persistent workers see it (set it before the epoch's loader iterator starts).
    """

    def __init__(self, data_folder, indices, seed=0, download=True, source=CIFAR100):
        images, labels = load_cifar(data_folder, train=True, source=source, download=download)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.images, self.labels = images[self.indices], labels[self.indices]
        self.num_class = source.num_classes
        self.class_counts = np.bincount(self.labels, minlength=source.num_classes)
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        self.epoch.fill_(epoch)

    def views_key(self):
        return keyed_seed(self.seed, int(self.epoch), AUGMENT_STREAM)

    rand_k, rand_strength, momentum_weight = 0, 30, None  # no RandAugment (MemoBoostedCIFAR has it)
    recipe = CIFAR  # design 1.2's views (data.view_params.ViewRecipe)

    def view_params(self, positions, momentum_weight=None, sizes=None):
        """data.view_params.ViewParams of the samples at `positions` (int64 tensor) this epoch;
        BCL's weights read from `momentum_weight` (a copy on the positions' device) or, by default,
        from self.momentum_weight. `sizes`: the images' (height, width), int64 [B, 2] (default: all
        of self.images' size)."""
        weight = self.momentum_weight if momentum_weight is None else momentum_weight
        return draw_views(self.views_key(), positions, self.images.shape[1:3] if sizes is None else sizes,
                          self.rand_k, None if weight is None else weight[positions], self.rand_strength, self.recipe)

    def __getitems__(self, positions):
        positions = [range(len(self))[p] for p in positions]  # -1 is N-1 (the same key), too large: IndexError
        images = [self.image(position) for position in positions]  # each decoded once (as published)
        params = self.view_params(torch.as_tensor(positions, dtype=torch.int64), sizes=self.image_sizes(images))
        return [(render_views(img, views, self.recipe), position)
                for img, views, position in zip(images, params.per_view(), positions)]

    def __getitem__(self, position):
        return self.__getitems__([position])[0]

    def image(self, position):
        return Image.fromarray(self.images[position])

    def image_sizes(self, images):
        return None  # all 32 x 32


class EvalCIFAR(Dataset):
    """Train or test images (optionally at `indices`); item -> (image [3, 32, 32], label)."""

    def __init__(self, data_folder, train, indices=None, download=True, source=CIFAR100):
        images, labels = load_cifar(data_folder, train=train, source=source, download=download)
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            images, labels = images[indices], labels[indices]
        self.images, self.labels = images, labels
        self.transform = eval_transform()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
