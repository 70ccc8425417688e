"""One interface for a benchmark (issue 22): `--dataset NAME` selects a Benchmark, and only what
differs between benchmarks lives in it.

Each benchmark is one small module of facts in this package (cifar100_lt.py, cifar10_lt.py): its
image source and on-disk layout, its classes, its published split family with file names and pins,
the protocol that generates such a family, its recipe defaults, its evaluation protocols and probe
sets, and its Many/Medium/Few rule. Everything else (the keyed views, BCL's weights, the momentum
loss, the training core, the probes, checkpoints, DDP) is shared and takes a Benchmark.
"""
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from data.cifar100 import CifarSource, EvalCIFAR, TwoViewCIFAR, load_cifar
from data.memoboosted_cifar100 import MemoBoostedCIFAR

SPLITS = 5  # every published family has splits k = 1..5


def long_tail_count(pool, rank, num_class, imbalance_ratio):
    """floor(pool * (1 / imbalance_ratio) ** (rank / (num_class - 1))), computed exactly.

    Design 1.1. The float value is only a first guess: k is the answer iff
    k ** (C - 1) * ratio ** rank <= pool ** (C - 1) < (k + 1) ** (C - 1) * ratio ** rank,
    which Python integers decide exactly (ratio = p / q as a fraction).
    """
    if num_class == 1:
        return pool
    e = num_class - 1
    ratio = Fraction(imbalance_ratio)
    p, q = ratio.numerator, ratio.denominator

    def fits(k):  # k <= pool * ratio ** (-rank / e)
        return k ** e * p ** rank <= pool ** e * q ** rank

    k = math.floor(pool * float(ratio) ** (-rank / e))
    while fits(k + 1):
        k += 1
    while not fits(k):
        k -= 1
    return k


def class_groups(class_counts):
    """The CIFAR rule of design 6 / 9.4: (many, medium, few), arrays of class ids. Classes are sorted by
    their count in D_i, descending; ties keep ascending class order (stable sort). For C classes, Medium
    and Few get C // 3 classes each and Many the rest: 34 / 33 / 33 for CIFAR-100, 4 / 3 / 3 for CIFAR-10."""
    order = np.argsort(-np.asarray(class_counts), kind='stable')
    third = len(order) // 3
    return tuple(np.split(order, [len(order) - 2 * third, len(order) - third]))


@dataclass(frozen=True)
class Protocol:
    """How a split family is made from the train labels (design 1.1, 9.1), per class: `val` samples
    held out, `train` of the rest form the probe-train list, the D_i pool is every non-val sample,
    class rank r keeps floor(pool * (1 / imbalance) ** (r / (C - 1))); each shot subset draws its
    size per class from the train list, and S_b draws D_i's smallest class count per class from D_i
    (the balanced few-shot set of SDCLR)."""
    val: int
    train: int
    imbalance: float = 100
    shots: tuple = ()  # the train-list subsets' (role, size per class), e.g. (('test_100shot', 100), ...)


@dataclass(frozen=True)
class SplitFamily:
    """A family's file names, relative to split/ (a generated family adds the prefix 'NAME/')."""
    train: str  # the balanced probe-train list
    val: str
    subsets: str  # the folder of D_i and its probe subsets, e.g. 'cifar10_imbSub_with_subsets/'
    subset_name: str  # e.g. 'split{k}_{role}.npy'
    protocol: Protocol
    published: dict = field(default_factory=dict)  # name -> (URL template with {name}, SHA-256)

    def files(self, prefix='', num_splits=SPLITS):
        """{'train', 'val', 'D_i': [k = 1..num_splits], 'subsets': {role: [k = 1..]}} under `prefix`."""
        def subset(k, role):
            return f'{prefix}{self.subsets}{self.subset_name.format(k=k, role=role)}'
        roles = [role for role, _ in self.protocol.shots] + ['S_b']
        return {'train': prefix + self.train, 'val': prefix + self.val,
                'D_i': [subset(k, 'D_i') for k in range(1, num_splits + 1)],
                'subsets': {role: [subset(k, role) for k in range(1, num_splits + 1)] for role in roles}}

    def prefix_of(self, train_split):
        """The family prefix ('' or 'NAME/') of a D_i name, or None if it is not in this layout."""
        head, marker, _ = train_split.partition(self.subsets)
        return head if marker and (not head or head.endswith('/')) else None


@dataclass(frozen=True)
class Benchmark:
    name: str  # the --dataset value
    title: str  # 'CIFAR-10-LT'
    papers: str  # which papers report it
    source: CifarSource  # images, labels and their layout under --data_folder
    splits: SplitFamily
    default_split: str  # --trainSplit's default
    recipe: dict  # argument defaults of train.py / train_sdclr.py: {'both' | 'simclr' | 'sdclr': {arg: value}}
    probe_sets: dict  # test.py flag group -> the subset role it probes: {'100shot': 'test_100shot', ...}
    protocols: tuple = ('bcl',)  # test.py --protocol values (the first is the default)
    groups: object = class_groups  # the Many/Medium/Few rule: D_i class counts -> (many, medium, few) class ids

    @property
    def num_classes(self):
        return self.source.num_classes

    def defaults(self, sdclr):
        """The recipe's argument defaults for train.py (sdclr False) or train_sdclr.py."""
        return {**self.recipe.get('both', {}), **self.recipe.get('sdclr' if sdclr else 'simclr', {})}

    def labels(self, data_folder, train=True):
        return load_cifar(data_folder, train, self.source)[1]

    def two_view_dataset(self, data_folder, indices, bcl, rand_k, rand_strength, seed):
        """The pre-training dataset at `indices` of the train set (design 1.2; BCL's 1.4 with `bcl`)."""
        if bcl:
            return MemoBoostedCIFAR(data_folder, indices, rand_k, rand_strength, seed=seed, source=self.source)
        return TwoViewCIFAR(data_folder, indices, seed=seed, source=self.source)

    def eval_dataset(self, data_folder, train, indices=None):
        return EvalCIFAR(data_folder, train, indices, source=self.source)


def _registry():
    from data.benchmarks import cifar10_lt, cifar100_lt
    return {b.name: b for b in (cifar100_lt.BENCHMARK, cifar10_lt.BENCHMARK)}


BENCHMARKS = _registry()
DEFAULT = 'cifar100'


def get_benchmark(name):
    return BENCHMARKS[name]


def benchmark_of(train_split):
    """The benchmark whose split layout holds `train_split` (a D_i name), or None."""
    for benchmark in BENCHMARKS.values():
        if benchmark.splits.prefix_of(train_split) is not None:
            return benchmark
    return None
