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

from utils import InputError

SPLIT_ROOT = os.path.dirname(os.path.abspath(__file__))
SUBSETS = 'cifar100_imbSub_with_subsets/'
PUBLISHED_URL = ('https://raw.githubusercontent.com/MediaBrain-SJTU/BCL/'
                 'a2342f86fa3e2f8c5efc5b98334126133b0b360b/split/{name}')
PUBLISHED_SHA256 = {
    'cifar100/cifar100_trainIdxList.npy': '482bb2cd15900c6500c77c17212fd1fc73725b821d6dab631941e4960956afda',
    'cifar100/cifar100_valIdxList.npy': 'd0654dcc18b91345da49ba895a499641ff9d11757245ae79759dc45e9b83ec6d',
    'cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy': '109b4ec343997dc34e6b9f85b66f3f0f486d796cc109abadaa3ba645200778e2',
    'cifar100_imbSub_with_subsets/cifar100_split1_test_100shot.npy': 'dd1ae1b5ade957a3b54380181a02413468589bf0bedddab49e64f31aea10474f',
    'cifar100_imbSub_with_subsets/cifar100_split1_test_50shot.npy': '83cc12a78fc6128a18b6ad9663247059c35efeab7d0552c2a38e42301ef5c404',
    'cifar100_imbSub_with_subsets/cifar100_split2_D_i.npy': '813b59c6741bedc96e8ca0c64beb3457fda2077c97f44d74dc1a93f9501e7679',
    'cifar100_imbSub_with_subsets/cifar100_split2_test_100shot.npy': '927118e8ab9dd13d7120bd10dfac62d4f86b76ff5013ee35f9a5dbebfbd91d79',
    'cifar100_imbSub_with_subsets/cifar100_split2_test_50shot.npy': '8a38a424320a5f2a509fae7390bb30229c14099a3aab7534c392b34aa7d40e6a',
    'cifar100_imbSub_with_subsets/cifar100_split3_D_i.npy': '7bb5c112bc3e39a189968fdde51a6365e85f0108ec03485de21e272a9084fbbb',
    'cifar100_imbSub_with_subsets/cifar100_split3_test_100shot.npy': '27f016592f2be4ad29d66483816bf50d4c3088c7289a0f643edb68c634fee2b9',
    'cifar100_imbSub_with_subsets/cifar100_split3_test_50shot.npy': '3ceb0af4e531087d02872852c013e7d50069002f0166038ceedefae61b2eef63',
    'cifar100_imbSub_with_subsets/cifar100_split4_D_i.npy': '4de1ed95764e23d52e539c53c2e45f1d99820ae49be3a49a6f822fa0cd220d69',
    'cifar100_imbSub_with_subsets/cifar100_split4_test_100shot.npy': '605172c374e3eb4a6d0bc4be1f8716ee8add3b6502bec86117104e728172aa4b',
    'cifar100_imbSub_with_subsets/cifar100_split4_test_50shot.npy': '36c3ea8108dc0a510d32414cbb2a9354c029ce56c499cd697e34b2c1184ea306',
    'cifar100_imbSub_with_subsets/cifar100_split5_D_i.npy': '9282893b3f49480603e93424c7ba54918202888ce42c6871e9ec3fa5b8b7e20b',
    'cifar100_imbSub_with_subsets/cifar100_split5_test_100shot.npy': '4287082e96b019ce943707ac3a2bfe320ec8ecfb59e4a0319e0ceac39956760a',
    'cifar100_imbSub_with_subsets/cifar100_split5_test_50shot.npy': '866606edafbc606925133afbaa97492613666960318bc7402e00e556d52bb985',
}
GENERATE_HINT = ('generate splits with `python -m split.generate --data_folder DATA --name NAME` and pass '
                 '`--trainSplit NAME/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy`')


def family_files(family, num_splits=5):
    """The file names of a family (prefix '' for the published one, 'NAME/' for a generated one)."""
    def subset(k, role):
        return f'{family}{SUBSETS}cifar100_split{k}_{role}.npy'
    splits = range(1, num_splits + 1)
    return {'train': f'{family}cifar100/cifar100_trainIdxList.npy',
            'val': f'{family}cifar100/cifar100_valIdxList.npy',
            'D_i': [subset(k, 'D_i') for k in splits],
            'shots': {100: [subset(k, 'test_100shot') for k in splits],
                      50: [subset(k, 'test_50shot') for k in splits]}}


def protocol_files(train_split):
    """The train list, val list and the 100/50-shot subsets (k = 1..5) of train_split's family."""
    name = posixpath.normpath(train_split)
    if SUBSETS not in name:
        raise InputError(f'cannot tell which split family {train_split!r} belongs to: a D_i split lies in '
                         f'<family>/{SUBSETS} (e.g. {SUBSETS}cifar100_split1_D_i.npy); or {GENERATE_HINT}')
    files = family_files(name.split(SUBSETS)[0])
    return {'train': files['train'], 'val': files['val'], 'shots': files['shots']}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def _download(url, path):
    """Write the bytes at `url` to `path` (tests replace this or point the URL at a file://)."""
    with urllib.request.urlopen(url, timeout=30) as response, open(path, 'wb') as f:
        f.write(response.read())


def _fetch_published(name, path):
    """Download published `name` to `path`: temp file in the same folder, sum check, rename."""
    url = PUBLISHED_URL.format(name=name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.download'
    try:
        _download(url, tmp)
        got = sha256(tmp)
        if got != PUBLISHED_SHA256[name]:
            raise ValueError(f'its SHA-256 is {got}, not the published {PUBLISHED_SHA256[name]}')
        os.replace(tmp, path)
    except Exception as e:  # network, disk or checksum: one error with both remedies
        raise InputError(f'split {name} is missing and fetching {url} failed ({e}); nothing was kept. '
                         f'Either place the file at {path} (from the folder split/ of '
                         f'github.com/MediaBrain-SJTU/BCL), or {GENERATE_HINT}') from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_split(name, split_root=SPLIT_ROOT):
    """Absolute path of split `name` (relative to split_root), fetching a missing published one."""
    rel = posixpath.normpath(name)
    path = os.path.abspath(os.path.join(split_root, rel))
    if rel in PUBLISHED_SHA256:
        if not os.path.exists(path):
            _fetch_published(rel, path)
        elif sha256(path) != PUBLISHED_SHA256[rel]:
            raise InputError(f'{path} differs from the published {rel} (SHA-256 mismatch); delete it to '
                             f'fetch the published file again, or {GENERATE_HINT}')
    elif not os.path.isfile(path):
        raise InputError(f'split {name} not found at {path} (and it is not a published split name); '
                         f'{GENERATE_HINT}')
    return path


def load_split(name, dataset_size, split_root=SPLIT_ROOT):
    """The indices of split `name`: a 1-D int64 array of unique indices in [0, dataset_size)."""
    path = resolve_split(name, split_root)
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
    return indices.astype(np.int64)
