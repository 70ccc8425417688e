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
import torch
from torch.utils.data import Subset

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


def count_groups(class_counts, many=100, few=20):
    """Design 9.4's rule of ImageNet-100-LT, ImageNet-LT and Places-LT: (many, medium, few), arrays of
    class ids, by the pre-training count: Many > 100, Medium 20..100, Few < 20 images."""
    counts = np.asarray(class_counts)
    ids = np.arange(len(counts))
    return ids[counts > many], ids[(counts >= few) & (counts <= many)], ids[counts < few]


def recipe_defaults(recipe, sdclr):
    """A recipe's argument defaults for train.py (sdclr False) or train_sdclr.py."""
    return {**recipe.get('both', {}), **recipe.get('sdclr' if sdclr else 'simclr', {})}


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
        return recipe_defaults(self.recipe, sdclr)

    def model_options(self, sdclr):
        """models.build_model's stem and head (design 3: the CIFAR ones)."""
        return {'stem': 'cifar', 'head_layers': 2}

    def owns(self, train_split):
        """Whether `train_split` (a normalised name relative to split/) lies in this benchmark's layout."""
        return self.splits.prefix_of(train_split) is not None

    def labels(self, data_folder, train=True):
        return load_cifar(data_folder, train, self.source)[1]

    def input_files(self, data_folder):
        """The image files a run trains on (train.py digests them, so a resume on other data is refused)."""
        return self.source.paths(data_folder, train=True)

    def training_set(self, data_folder, train_split, bcl, rand_k, rand_strength, seed):
        """Design 1: the two-view pre-training dataset of `train_split` (an index file into the train set;
        design 1.4's memory-boosted one with `bcl`), read and checked."""
        from split.resolve import load_split
        labels = self.labels(data_folder)
        indices = load_split(train_split, len(labels), labels=labels, benchmark=self)
        return self.two_view_dataset(data_folder, indices, bcl, rand_k, rand_strength, seed)

    def full_shot_sets(self, data_folder, train_split, seed=0):
        """The in-training full-shot probe's data (design 6; `seed` unused: the images are not augmented):
        {'train_set' (the family's train list),
        'test_set', 'class_counts' (of D_i, for Many/Medium/Few)}."""
        from split.resolve import load_split, protocol_files
        train_set = self.eval_dataset(data_folder, train=True)
        labels = train_set.labels
        train_idx = load_split(protocol_files(train_split, self)['train'], len(labels), labels=labels, benchmark=self)
        class_counts = np.bincount(labels[load_split(train_split, len(labels), labels=labels, benchmark=self)],
                                   minlength=self.num_classes)
        return {'train_set': Subset(train_set, train_idx), 'test_set': self.eval_dataset(data_folder, train=False),
                'class_counts': class_counts}

    def evaluation_sets(self, data_folder, train_split, groups, protocol, seed=0):
        """Everything test.py's probes of `groups` need, read and checked before the slow part:
        {'class_counts' (of D_i, when 'fullshot' is probed: its Many/Medium/Few), 'test_set', and for design 6
        'train_set' (the train images) with 'index_sets' ({group: [index arrays into train_set]}), for SDCLR's
        protocol (design 9.4) 'sdclr' (eval_sdclr.CIFAR_PROTOCOL), 'val_set' and 'train_sets' ({group: [sets]}),
        each set (uint8 images [N, 32, 32, 3], labels [N]) as eval_sdclr.PadCropFlip takes them}."""
        from split.resolve import load_split, protocol_files
        train_set = self.eval_dataset(data_folder, train=True)
        labels = train_set.labels
        files = protocol_files(train_split, self)

        def load(name):
            return load_split(name, len(labels), labels=labels, benchmark=self)

        sets = {'train_set': train_set,
                'class_counts': (np.bincount(labels[load(train_split)], minlength=self.num_classes)
                                 if 'fullshot' in groups else None),
                'index_sets': {group: [load(files['train'])] if group == 'fullshot'
                               else [load(f) for f in files['subsets'][self.probe_sets[group]]] for group in groups},
                'test_set': self.eval_dataset(data_folder, train=False)}
        if protocol != 'sdclr':
            return sets
        import eval_sdclr
        images, targets = (torch.as_tensor(np.array(a)) for a in (train_set.images, train_set.labels))
        val = load(files['val'])
        test = sets['test_set']
        return {'sdclr': eval_sdclr.CIFAR_PROTOCOL, 'class_counts': sets['class_counts'],
                'val_set': (images[val], targets[val]),
                'test_set': tuple(torch.as_tensor(np.array(a)) for a in (test.images, test.labels)),
                'train_sets': {group: [(images[idx], targets[idx]) for idx in index_sets]
                               for group, index_sets in sets['index_sets'].items()}}

    def two_view_dataset(self, data_folder, indices, bcl, rand_k, rand_strength, seed):
        """The pre-training dataset at `indices` of the train set (design 1.2; BCL's 1.4 with `bcl`)."""
        if bcl:
            return MemoBoostedCIFAR(data_folder, indices, rand_k, rand_strength, seed=seed, source=self.source)
        return TwoViewCIFAR(data_folder, indices, seed=seed, source=self.source)

    def eval_dataset(self, data_folder, train, indices=None):
        return EvalCIFAR(data_folder, train, indices, source=self.source)


# design 9.2: the ImageNet-scale recipe of both papers (BCL's k = 2, design 9.3)
IMAGE_LIST_RECIPE = {'model': 'resnet50', 'rand_k': 2, 'epochs': 500, 'batch_size': 256, 'lr': 0.5,
                     'weight_decay': 1e-4, 'temperature': 0.2}


@dataclass(frozen=True)
class ImageListBenchmark:
    """An ImageNet-scale benchmark (design 9): JPEGs under --data_folder (an ImageNet or Places365 root) named
    by published `RELPATH LABEL` lists (data/image_list.py), ResNet-50 with the ImageNet stem, design 9.3's
    augmentation. Its lists are names relative to split/; a generated family ('NAME/' + the published names,
    data/synthetic.py) brings its own probe and test lists, a list of one's own (`mine.txt`) uses the published
    ones."""
    name: str
    title: str
    papers: str
    num_classes: int
    source: str  # 'ImageNet' or 'Places365': what --data_folder holds
    default_split: str  # the pre-training list
    probe_lists: dict  # test.py group -> the list its probe trains on ('fullshot', '100shot', 'fewshot')
    test_list: str
    recipe: dict
    in_training_probe: str  # the group train.py's --eval_freq probe runs
    published: dict  # list name -> (URL template, pin: SHA-256 or 'git-blob:' + git's blob id), design 9.1
    lines: dict  # list name -> its published line count, where design 9.1 gives one
    label_fixes: dict = field(default_factory=dict)  # list name -> {published label: ours} (Places-LT, 9.1)
    head_layers: dict = field(default_factory=lambda: {'simclr': 2, 'sdclr': 2})  # design 9.2
    protocols: tuple = ('bcl',)
    val_list: str = None  # the SDCLR protocol's model-selection list (design 9.4), where it runs
    groups: object = count_groups

    @property
    def probe_sets(self):
        return {group: name for group, name in self.probe_lists.items() if group != 'fullshot'}

    def defaults(self, sdclr):
        return recipe_defaults(self.recipe, sdclr)

    def model_options(self, sdclr):
        return {'stem': 'imagenet', 'head_layers': self.head_layers['sdclr' if sdclr else 'simclr']}

    def family_prefix(self, train_split):
        """'NAME/' of a generated family's pre-training list, '' for the published one or a list of one's own."""
        return train_split[:-len(self.default_split)] if self.owns(train_split) else ''

    def owns(self, train_split):
        return train_split == self.default_split or train_split.endswith('/' + self.default_split)

    def image_list(self, name, data_folder=None):
        """The list `name` (relative to split/; published ones fetched and pinned), its files checked under
        `data_folder` when given (before any work: every file a run needs exists and stays inside it)."""
        from data.image_list import check_image_files
        from split.resolve import load_image_list
        image_list = load_image_list(name, self.num_classes, benchmark=self)
        if data_folder is not None:
            check_image_files(data_folder, image_list, name)
        return image_list

    def input_files(self, data_folder):
        return []  # the list's digest is the split's; hashing 100k+ JPEGs per start would cost minutes

    def training_set(self, data_folder, train_split, bcl, rand_k, rand_strength, seed):
        from data.image_list_datasets import MemoBoostedImageList, TwoViewImageList
        image_list = self.image_list(train_split, data_folder)
        if bcl:
            return MemoBoostedImageList(data_folder, image_list, self.num_classes, rand_k, rand_strength, seed)
        return TwoViewImageList(data_folder, image_list, self.num_classes, seed)

    def _listed(self, data_folder, name, transform=None, seed=None):
        from data.image_list_datasets import EvalImageList
        return EvalImageList(data_folder, self.image_list(name, data_folder), transform, seed)

    def _probe_set(self, data_folder, name, seed):
        from data.image_list_datasets import probe_train_transform
        return self._listed(data_folder, name, probe_train_transform(), seed)

    def full_shot_sets(self, data_folder, train_split, seed=0):
        """The in-training probe's data: the `in_training_probe` list, the test list, pre-training counts."""
        prefix = self.family_prefix(train_split)
        return {'train_set': self._probe_set(data_folder, prefix + self.probe_lists[self.in_training_probe], seed),
                'test_set': self._listed(data_folder, prefix + self.test_list),
                'class_counts': self.image_list(train_split).class_counts(self.num_classes)}

    def evaluation_sets(self, data_folder, train_split, groups, protocol, seed=0):
        """Benchmark.evaluation_sets for image lists: one list per group (design 9.4), Many/Medium/Few by
        pre-training count. Design 6: features of the probe-train images with GH's RandomResizedCrop(224) +
        flip, keyed per image and `seed`. SDCLR's protocol: datasets of (view, label) as
        eval_sdclr.ResizedCropFlip takes them, the train sets with the same crop and flip (train_imagenet.py's)."""
        prefix = self.family_prefix(train_split)
        counts = self.image_list(train_split).class_counts(self.num_classes)
        test_set = self._listed(data_folder, prefix + self.test_list)
        if protocol == 'sdclr':
            import eval_sdclr
            from data.image_list_datasets import probe_train_transform
            return {'sdclr': eval_sdclr.IMAGENET_PROTOCOL, 'class_counts': counts, 'test_set': test_set,
                    'val_set': self._listed(data_folder, prefix + self.val_list),
                    'train_sets': {group: [self._listed(data_folder, prefix + self.probe_lists[group],
                                                        probe_train_transform())] for group in groups}}
        from torch.utils.data import ConcatDataset
        sets = [self._probe_set(data_folder, prefix + self.probe_lists[group], seed) for group in groups]
        starts = np.cumsum([0] + [len(s) for s in sets])
        return {'train_set': ConcatDataset(sets), 'test_set': test_set, 'class_counts': counts,
                'index_sets': {group: [np.arange(starts[i], starts[i + 1])] for i, group in enumerate(groups)}}


def _registry():
    from data.benchmarks import cifar10_lt, cifar100_lt, imagenet100_lt, imagenet_lt, imagenet_lt_exp, places_lt
    return {b.name: b for b in (cifar100_lt.BENCHMARK, cifar10_lt.BENCHMARK, imagenet100_lt.BENCHMARK,
                                imagenet_lt.BENCHMARK, imagenet_lt_exp.BENCHMARK, places_lt.BENCHMARK)}


BENCHMARKS = _registry()
INDEX_SPLIT_BENCHMARKS = {name: b for name, b in BENCHMARKS.items() if isinstance(b, Benchmark)}  # CIFAR's .npy splits
DEFAULT = 'cifar100'


def get_benchmark(name):
    return BENCHMARKS[name]


def benchmark_of(train_split):
    """The benchmark whose split layout holds `train_split` (a D_i name), or None."""
    for benchmark in BENCHMARKS.values():
        if benchmark.owns(train_split):
            return benchmark
    return None
