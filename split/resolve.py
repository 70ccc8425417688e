"""Find, fetch and check split files (design 1.1).

A split name (`--trainSplit`) is relative to `split/`. The published files are not
committed: a missing one is downloaded from the authors' repository at a pinned commit on
first use, checked against its SHA-256 and renamed into place (nothing is kept on a
mismatch). An existing published file is checked against its sum on every use (cheap:
the files are at most 320 KB), so a corrupted or different file never runs silently.
Generated families (`python -m split.generate`) live in `split/NAME/` with the same layout.
"""
import hashlib
import os
import posixpath
import urllib.request

import numpy as np

from data.benchmarks import (BENCHMARKS, DEFAULT, INDEX_SPLIT_BENCHMARKS, ImageListBenchmark, get_benchmark,
                             long_tail_count)
from data.image_list import read_image_list
from utils import InputError

SPLIT_ROOT = os.path.dirname(os.path.abspath(__file__))
# every benchmark's published files (data/benchmarks/): name -> (URL template, pin), pin a SHA-256 or
# 'git-blob:' + git's blob id (design 9.1 pins the largest lists that way)
PUBLISHED = {name: entry for b in BENCHMARKS.values()
             for name, entry in (b.published if isinstance(b, ImageListBenchmark) else b.splits.published).items()}
PUBLISHED_URL = {name: url for name, (url, _) in PUBLISHED.items()}
PUBLISHED_SHA256 = {name: pin for name, (_, pin) in PUBLISHED.items()}  # the pins (most are SHA-256)
PUBLISHED_OWNER = {name: b for b in BENCHMARKS.values()
                   for name in (b.published if isinstance(b, ImageListBenchmark) else b.splits.published)}
PUBLISHED_ROLE = {name: (b, role) for b in INDEX_SPLIT_BENCHMARKS.values()
                  for role, names in [('train', [b.splits.train]), ('val', [b.splits.val]),
                                      ('D_i', b.splits.files()['D_i']), *b.splits.files()['subsets'].items()]
                  for name in names if name in b.splits.published}


def generate_hint(benchmark=None):
    benchmark = benchmark or get_benchmark(DEFAULT)
    if isinstance(benchmark, ImageListBenchmark):
        return ('write a list of your own in the same format ("RELPATH LABEL" a line, paths relative to '
                f'--data_folder) under split/, or pass the published --trainSplit {benchmark.default_split}')
    flag = '' if benchmark.name == DEFAULT else f' --dataset {benchmark.name}'
    return (f'generate splits with `python -m split.generate{flag} --data_folder DATA --name NAME` and pass '
            f'`--trainSplit NAME/{benchmark.default_split}`')


def family_files(family, num_splits=5, benchmark=None):
    """The file names of a family (prefix '' for the published one, 'NAME/' for a generated one):
    {'train', 'val', 'D_i', 'subsets': {role: names}, 'shots': {size: names} (the train-list subsets)}."""
    benchmark = benchmark or get_benchmark(DEFAULT)
    files = benchmark.splits.files(family, num_splits)
    return {**files, 'shots': {size: files['subsets'][role] for role, size in benchmark.splits.protocol.shots}}


def protocol_files(train_split, benchmark=None):
    """The train list, val list and probe subsets (k = 1..5) of train_split's family (family_files)."""
    benchmark = benchmark or get_benchmark(DEFAULT)
    name = posixpath.normpath(train_split)
    prefix = benchmark.splits.prefix_of(name)
    if prefix is None:
        example = benchmark.default_split
        raise InputError(f'cannot tell which split family {train_split!r} belongs to: a {benchmark.title} D_i split '
                         f'lies in <family>/{benchmark.splits.subsets} (e.g. {example}); or {generate_hint(benchmark)}')
    files = family_files(prefix, benchmark=benchmark)
    return {key: files[key] for key in ('train', 'val', 'subsets', 'shots')}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path):
    """What `git hash-object` prints for the file: sha1 of b"blob <size>\\0" + its bytes (design 9.1)."""
    digest = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def file_pin(path, pin):
    """The file's digest in the kind of `pin`: 'git-blob:' + its blob id, or its SHA-256."""
    return 'git-blob:' + git_blob_id(path) if pin.startswith('git-blob:') else sha256(path)


def pin_kind(pin):
    return 'git blob id' if pin.startswith('git-blob:') else 'SHA-256'


def _download(url, path):
    """Write the bytes at `url` to `path` (tests replace this or point the URL at a file://)."""
    with urllib.request.urlopen(url, timeout=30) as response, open(path, 'wb') as f:
        f.write(response.read())


def _fetch_published(name, path):
    """Download published `name` to `path`: temp file in the same folder, sum check, rename."""
    url = PUBLISHED_URL[name].format(name=name)
    benchmark = PUBLISHED_OWNER[name]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.download'
    try:
        _download(url, tmp)
        got = file_pin(tmp, PUBLISHED_SHA256[name])
        if got != PUBLISHED_SHA256[name]:
            raise ValueError(f'its {pin_kind(got)} is {got}, not the published {PUBLISHED_SHA256[name]}')
        os.replace(tmp, path)
    except Exception as e:  # network, disk or checksum: one error with both remedies
        raise InputError(f'split {name} is missing and fetching {url} failed ({e}); nothing was kept. '
                         f'Either place the file at {path} (from the folder split/ of '
                         f'github.com/{"/".join(url.split("/")[3:5])}), or {generate_hint(benchmark)}') from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_split(name, split_root=SPLIT_ROOT, benchmark=None):
    """Absolute path of split `name` (relative to split_root), fetching a missing published one
    (`benchmark`: whose generate hint an error gives)."""
    rel = posixpath.normpath(name)
    path = os.path.abspath(os.path.join(split_root, rel))
    if rel in PUBLISHED_SHA256:
        if not os.path.exists(path):
            _fetch_published(rel, path)
        elif file_pin(path, PUBLISHED_SHA256[rel]) != PUBLISHED_SHA256[rel]:
            raise InputError(f'{path} differs from the published {rel} ({pin_kind(PUBLISHED_SHA256[rel])} '
                             f'mismatch); delete it to fetch the published file again, or '
                             f'{generate_hint(PUBLISHED_OWNER[rel])}')
    elif not os.path.isfile(path):
        raise InputError(f'split {name} not found at {path} (and it is not a published split name); '
                         f'{generate_hint(benchmark)}')
    return path


def load_split(name, dataset_size, split_root=SPLIT_ROOT, labels=None, benchmark=None):
    """The indices of split `name`: a 1-D int64 array of unique indices in [0, dataset_size). With the
    train set's `labels`, a published file's class counts are checked against its protocol."""
    path = resolve_split(name, split_root, benchmark)
    try:
        indices = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated, not .npy, pickled objects...
        raise InputError(f'cannot read split {path} as a .npy array ({e}); regenerate or re-fetch it') from e
    if not isinstance(indices, np.ndarray) or indices.ndim != 1:
        raise InputError(f'split {path} must be a 1-D array of indices, got shape '
                         f'{getattr(indices, "shape", type(indices).__name__)}')
    if not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f'split {path} must hold integer indices, got dtype {indices.dtype}')
    if len(indices) == 0:
        raise InputError(f'split {path} is empty')
    unique, counts = np.unique(indices, return_counts=True)
    if len(unique) != len(indices):
        raise InputError(f'split {path} has {len(indices) - len(unique)} duplicate indices '
                         f'(e.g. {unique[counts > 1][0]}); each image may appear once')
    if unique[0] < 0 or unique[-1] >= dataset_size:
        raise InputError(f'split {path} has indices in [{unique[0]}, {unique[-1]}] but the dataset has '
                         f'{dataset_size} images (valid: 0..{dataset_size - 1}); was the split made for '
                         f'another data folder?')
    rel = posixpath.normpath(name)
    if labels is not None and rel in PUBLISHED_ROLE:
        check_published_counts(rel, indices, labels)
    return indices.astype(np.int64)


LIST_ROLES = {'fullshot': 'full-shot probe', '100shot': '100-shot probe', 'fewshot': 'few-shot probe'}


def family_lists(name, benchmark):
    """{role: list name} of the family that image list `name` would belong to ('NAME/' + one of `benchmark`'s
    published names, as data/synthetic.py writes them), or None for a published name or any other list."""
    names = {'pre-training': benchmark.default_split,
             **{LIST_ROLES.get(group, group): n for group, n in benchmark.probe_lists.items()},
             'test': benchmark.test_list}
    for published in names.values():
        if name.endswith('/' + published):
            prefix = name[:-len(published)]
            return {role: prefix + n for role, n in names.items()}
    return None


def check_family(name, split_root, benchmark):
    """A family's lists are all there before any is read: a pre-training list named like the published one under
    a folder (`mine/ImageNet_LT/ImageNet_LT_train.txt`) is read as a family bringing its own probe and test
    lists (ImageListBenchmark.family_prefix), so a missing one is named here with both ways out, not reported
    later as an unknown split with CIFAR's advice. A probe or test name under a folder without the family's
    pre-training list is a list of one's own."""
    lists = family_lists(name, benchmark)
    if lists is None:
        return
    train = lists['pre-training']
    if name != train and not os.path.isfile(os.path.join(split_root, train)):
        return
    missing = [(role, rel) for role, rel in lists.items() if not os.path.isfile(os.path.join(split_root, rel))]
    if not missing:
        return
    prefix = train[:-len(benchmark.default_split)]
    lacks = ', '.join(f'{role} list {os.path.abspath(os.path.join(split_root, rel))}' for role, rel in missing)
    synthetic = f'`python -m data.synthetic DATA --dataset {benchmark.name} --family {prefix.rstrip("/")}`'
    published = ', '.join(rel[len(prefix):] for _, rel in missing)
    if missing[0][0] == 'pre-training':
        raise InputError(f'the {benchmark.title} family {prefix} lacks its {lacks}: write the family ({synthetic} '
                         f'for synthetic JPEGs and lists) or copy the published {published} to those paths')
    raise InputError(f'the {benchmark.title} family {prefix} ({train}: the published name under a folder, which '
                     f'brings its own probe and test lists) lacks its {lacks}: put them there (copies of the '
                     f'published {published}, or {synthetic} for a synthetic family), or pass the pre-training list '
                     f'under another name (e.g. --trainSplit {prefix}train.txt) to probe on the published lists')


def load_image_list(name, num_classes, split_root=SPLIT_ROOT, benchmark=None):
    """The image list `name` (relative to split_root; a published one fetched and checked against its pin, its
    line count against design 9.1's, its labels fixed where 9.1 names a defect), as a data.image_list.ImageList.
    `benchmark` (an ImageListBenchmark): a missing list's error says what to write (check_family, generate_hint)."""
    rel = posixpath.normpath(name)
    owner = PUBLISHED_OWNER.get(rel)
    if benchmark is not None and owner is None:
        check_family(rel, split_root, benchmark)
    image_list = read_image_list(resolve_split(name, split_root, owner or benchmark), num_classes)
    if owner is not None:
        expected = owner.lines.get(rel)
        if expected is not None and len(image_list) != expected:
            raise InputError(f'the published list {rel} has {len(image_list):,} images, not {expected:,} (design 9.1): '
                             f'delete {os.path.join(split_root, rel)} to fetch it again')
        fix = owner.label_fixes.get(rel)
        if fix:
            labels = image_list.labels.copy()
            for published, ours in fix.items():
                labels[image_list.labels == published] = ours
            image_list.labels = labels
    return image_list


def expected_counts(benchmark, role, per_class_total):
    """The per-class counts the protocol gives a published file (design 1.1, 9.1); D_i's in rank order
    (the class order is drawn), the others one per class. `per_class_total`: the train set's counts."""
    protocol, num_classes = benchmark.splits.protocol, benchmark.num_classes
    pool = int(per_class_total.min()) - protocol.val
    tail = [long_tail_count(pool, r, num_classes, protocol.imbalance) for r in range(num_classes)]
    sizes = {'train': protocol.train, 'val': protocol.val, 'S_b': tail[-1], **dict(protocol.shots)}
    return tail if role == 'D_i' else [sizes[role]] * num_classes


def check_published_counts(rel, indices, labels):
    """A published file's class counts must be its protocol's with these labels: with the official data
    they are (checked on the published files); with another folder they are not, and training on it would
    silently not be the benchmark."""
    benchmark, role = PUBLISHED_ROLE[rel]
    labels = np.asarray(labels)
    counts = np.bincount(labels[indices], minlength=benchmark.num_classes)
    expected = expected_counts(benchmark, role, np.bincount(labels, minlength=benchmark.num_classes))
    got = sorted(counts.tolist(), reverse=True) if role == 'D_i' else counts.tolist()
    if got != expected:
        raise InputError(f'the published split {rel} has {", ".join(map(str, got[:6]))}... images per class'
                         f'{" (sorted)" if role == "D_i" else ""} with the labels of this --data_folder, not the '
                         f'protocol\'s {", ".join(map(str, expected[:6]))}... (design 9.1): pass the folder of the '
                         f'official {benchmark.source.name} (--dataset {benchmark.name}), or {generate_hint(benchmark)}')
