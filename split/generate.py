"""Generate split files with the protocol of the published ones (design 1.1, 9.1).

    python -m split.generate [--dataset cifar100|cifar10] --data_folder DATA --name NAME [--seed 0]

writes the family `split/NAME/` in the benchmark's published layout (data/benchmarks/), e.g. CIFAR-100:

    NAME/cifar100/cifar100_trainIdxList.npy                          probe-training list
    NAME/cifar100/cifar100_valIdxList.npy                            validation list
    NAME/cifar100_imbSub_with_subsets/cifar100_split{k}_D_i.npy      long-tailed pre-training set
    NAME/cifar100_imbSub_with_subsets/cifar100_split{k}_test_100shot.npy
    NAME/cifar100_imbSub_with_subsets/cifar100_split{k}_test_50shot.npy
    NAME/cifar100_imbSub_with_subsets/cifar100_split{k}_S_b.npy      SDCLR's few-shot set (4 a class of D_i)

and CIFAR-10 (`--dataset cifar10`): NAME/cifar10/{trainIdxList,valIdxList}.npy and
NAME/cifar10_imbSub_with_subsets/split{k}_{D_i,S_b}.npy, and prints the flags to pass. The defaults
give the real protocol: CIFAR-100 50 val and 400 train per class, D_i from the 450 non-val samples
of a class with imbalance ratio 100 (450 down to 4 per class, 9,754 in total); CIFAR-10 500 val and
4,500 train, D_i 4,500 down to 45 (11,165), S_b 45 a class. For small data (the synthetic folder,
20 per class), e.g.:

    python -m split.generate --data_folder DATA --name synthetic --val_per_class 2 \
        --train_per_class 16 --imbalance_ratio 10 --shot_sizes 8 4

The shot files keep the role names test_100shot / test_50shot whatever --shot_sizes is;
the few-shot evaluation reads splits 1..5, so keep --num_splits at 5 for it.
Every array is sorted ascending (the published files' order is not part of the protocol;
sorted files are easy to compare). A given seed always gives the same files, and split k
draws from its own generator seeded by (seed, k), so it does not depend on --num_splits
(S_b is drawn last, so adding it left the other files of a seed unchanged).
"""
import argparse
import os

import numpy as np

from data.benchmarks import DEFAULT, INDEX_SPLIT_BENCHMARKS, get_benchmark, long_tail_count
from split.resolve import SPLIT_ROOT, family_files
from utils import InputError, fail


def generate_splits(labels, seed=0, val_per_class=None, train_per_class=None, pool_per_class=None,
                    imbalance_ratio=None, num_splits=5, shot_sizes=None, benchmark=None):
    """The whole protocol of design 1.1 / 9.1 from the train labels: {relative file name: sorted int64 array}.

    Per class: `val_per_class` random samples form the validation list; `train_per_class`
    random non-val samples the train list; the D_i pool is the non-val samples (or
    `pool_per_class` of them, drawn at random). For each split k: classes in a random
    order r = 0..C-1, class r keeps long_tail_count(pool, r) random pool samples; the
    benchmark's shot subsets (CIFAR-100: two) draw shot_sizes[i] per class from the train list,
    independently of each other; last, S_b draws D_i's smallest class count per class from D_i
    (SDCLR's balanced few-shot set: 4 a class on CIFAR-100, 45 on CIFAR-10).
    """
    benchmark = benchmark or get_benchmark(DEFAULT)
    protocol = benchmark.splits.protocol  # the published values of what is not given (CIFAR-100's by default)
    val_per_class = protocol.val if val_per_class is None else val_per_class
    train_per_class = protocol.train if train_per_class is None else train_per_class
    imbalance_ratio = protocol.imbalance if imbalance_ratio is None else imbalance_ratio
    shot_sizes = tuple(size for _, size in protocol.shots) if shot_sizes is None else tuple(shot_sizes)
    roles = [role for role, _ in protocol.shots]
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1 or len(labels) == 0:
        raise InputError('labels must be a non-empty 1-D integer array')
    classes, counts = np.unique(labels, return_counts=True)
    if val_per_class < 0 or train_per_class < 1 or num_splits < 1 or imbalance_ratio < 1:
        raise InputError('need val_per_class >= 0, train_per_class >= 1, num_splits >= 1 '
                         'and imbalance_ratio >= 1')
    non_val = counts.min() - val_per_class
    if train_per_class > non_val:
        raise InputError(f'the smallest class has {counts.min()} samples: too few for {val_per_class} val + '
                         f'{train_per_class} train per class; lower --val_per_class or --train_per_class')
    if pool_per_class is not None and not 1 <= pool_per_class <= non_val:
        raise InputError(f'--pool_per_class must be in [1, {non_val}] '
                         f'(the non-val samples of the smallest class)')
    if len(shot_sizes) != len(roles) or not all(1 <= s <= train_per_class for s in shot_sizes):
        raise InputError(f'--shot_sizes needs {len(roles)} size(s) in [1, {train_per_class}] (the train list per class) '
                         f'for {benchmark.title}\'s {", ".join(roles) or "no"} subsets')

    rng = np.random.default_rng([seed, 0])
    val, train, pool = [], [], []
    for c in classes:
        order = rng.permutation(np.flatnonzero(labels == c))
        rest = order[val_per_class:]
        val.append(order[:val_per_class])
        train.append(rest[:train_per_class])
        pool.append(rest if pool_per_class is None else rng.choice(rest, pool_per_class, replace=False))

    def sort(parts):
        return np.sort(np.concatenate(parts)).astype(np.int64)

    names = family_files('', num_splits, benchmark)
    arrays = {names['train']: sort(train), names['val']: sort(val)}
    for k in range(1, num_splits + 1):
        rng = np.random.default_rng([seed, k])
        d_i = []
        for r, c in enumerate(rng.permutation(len(classes))):  # class c gets rank r in the tail
            count = long_tail_count(len(pool[c]), r, len(classes), imbalance_ratio)
            d_i.append(rng.choice(pool[c], count, replace=False))
        arrays[names['D_i'][k - 1]] = sort(d_i)
        for size, role in zip(shot_sizes, roles):
            arrays[names['subsets'][role][k - 1]] = sort([rng.choice(t, size, replace=False) for t in train])
        tail = min(len(d) for d in d_i)
        if tail:  # (none when some class keeps no sample: small data with a large imbalance ratio)
            arrays[names['subsets']['S_b'][k - 1]] = sort([rng.choice(d, tail, replace=False) for d in d_i])
    return arrays


PUBLISHED_FOLDERS = sorted({name.split("/")[0] for b in INDEX_SPLIT_BENCHMARKS.values()
                            for name in b.splits.published})


def check_family_name(name):
    """A generated family is one plain folder name beside the published folders."""
    if (not name or name in ['.', '..'] + PUBLISHED_FOLDERS
            or any(ch in name for ch in '/\\') or name.startswith('.')):
        raise InputError(f'--name {name!r}: use one plain folder name (no "/", not one of '
                         f'{", ".join(PUBLISHED_FOLDERS)}, which hold the published files)')


def write_splits(arrays, split_root, name):
    """Save `arrays` as split_root/name/<relative name>, each file atomically (temp file + rename).

    Refuses to overwrite a file with different content: experiments may already use it.
    Returns {relative name: written path}.
    """
    check_family_name(name)
    paths = {rel: os.path.join(split_root, name, rel) for rel in arrays}
    for rel, path in paths.items():
        if os.path.exists(path) and not np.array_equal(np.load(path, allow_pickle=False), arrays[rel]):
            raise InputError(f'{path} already exists with other indices; pick another --name '
                             f'(or delete {os.path.join(split_root, name)} if nothing uses it)')
    for rel, path in paths.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'wb') as f:
            np.save(f, arrays[rel])
        os.replace(tmp, path)
    return paths


def main(argv=None, split_root=SPLIT_ROOT):
    parser = argparse.ArgumentParser(description='Generate long-tailed split files with the published protocol '
                                                 '(design 1.1, 9.1); the defaults are the --dataset\'s.')
    parser.add_argument('--dataset', default=DEFAULT, choices=sorted(INDEX_SPLIT_BENCHMARKS))
    parser.add_argument('--data_folder', required=True, help='the dataset\'s folder (as torchvision downloads it)')
    parser.add_argument('--name', required=True, help='family name: files go to split/NAME/')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--val_per_class', type=int, default=None, help='default: 50 (CIFAR-100), 500 (CIFAR-10)')
    parser.add_argument('--train_per_class', type=int, default=None, help='default: 400 (CIFAR-100), 4500 (CIFAR-10)')
    parser.add_argument('--pool_per_class', type=int, default=None,
                        help='D_i pool per class (default: every non-val sample, 450 on CIFAR-100)')
    parser.add_argument('--imbalance_ratio', type=float, default=None, help='default: 100')
    parser.add_argument('--num_splits', type=int, default=5)
    parser.add_argument('--shot_sizes', type=int, nargs='*', default=None,
                        help='per-class sizes of the train-list shot subsets (CIFAR-100: test_100shot and '
                             'test_50shot, default 100 50; CIFAR-10: none)')
    args = parser.parse_args(argv)
    benchmark = get_benchmark(args.dataset)
    try:
        check_family_name(args.name)
        labels = benchmark.labels(args.data_folder)
        arrays = generate_splits(labels, args.seed, args.val_per_class, args.train_per_class, args.pool_per_class,
                                 args.imbalance_ratio, args.num_splits, args.shot_sizes, benchmark)
        paths = write_splits(arrays, split_root, args.name)
    except InputError as e:
        fail(str(e))
    for rel, path in paths.items():
        print(f'wrote {path} ({len(arrays[rel])} indices)')
    print(f'use: --dataset {benchmark.name} --trainSplit {args.name}/{benchmark.default_split}')


if __name__ == '__main__':
    main()
