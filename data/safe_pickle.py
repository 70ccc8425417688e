"""CIFAR pickles read without running code, and checked against the official md5s (issue 20.11).

CIFAR's files are Python pickles, and `pickle.load` calls whatever a file names: anyone who can
write a shared data folder would run code in every job that reads it. `load_cifar_pickle` is the
one reader for every CIFAR layout (CIFAR-10 and CIFAR-100):

- a restricted unpickler that resolves only the globals a CIFAR batch needs (NumPy's array
  reconstruction; dict, list, str, bytes and int are pickle opcodes and need none), so a file
  that names anything else is refused before anything is called;
- the md5 of a file whose name is an official one (torchvision's table), unless its folder
  holds the marker file `NOT_OFFICIAL`: data/synthetic.py writes it, and a user marks a folder
  of their own data by creating it. The unpickler is restricted in every case, marker or not.
"""
import codecs
import hashlib
import os
import pickle

import numpy as np

NOT_OFFICIAL = 'NOT_OFFICIAL'  # marker file: this folder's files are not the official ones, skip the md5
_CORE = np._core if hasattr(np, '_core') else np.core


def _latin1_encode(text, encoding='latin1'):
    """What a Python 3 protocol-2 pickle calls to rebuild bytes (`_codecs.encode(text, 'latin1')`),
    limited to that one codec: another could import a module."""
    if encoding != 'latin1':
        raise pickle.UnpicklingError(f'_codecs.encode with encoding {encoding!r} is not allowed in a CIFAR batch')
    return codecs.encode(text, 'latin1')


# (module, name) -> the object. numpy 1 pickles name numpy.core, numpy 2 numpy._core: both map to the
# installed one without importing by name (numpy.core is a deprecated alias in numpy 2).
ALLOWED_GLOBALS = {
    **{(f'numpy.{core}.multiarray', '_reconstruct'): _CORE.multiarray._reconstruct for core in ('core', '_core')},
    **{(f'numpy.{core}.multiarray', 'scalar'): _CORE.multiarray.scalar for core in ('core', '_core')},
    **{(f'numpy.{core}.numeric', '_frombuffer'): _CORE.numeric._frombuffer for core in ('core', '_core')},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_encode,
}


def _input_error(message):
    """utils.InputError, imported here: utils imports torch, and data/synthetic.py (which writes the
    marker) should stay a numpy-only script."""
    from utils import InputError
    return InputError(message)


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ALLOWED_GLOBALS (nothing of it was called)."""


class CifarUnpickler(pickle.Unpickler):
    """An Unpickler that can build dicts, lists, str, bytes, ints and NumPy arrays, and nothing else."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f'{module}.{name}') from None


def official_md5s(torchvision_dataset):
    """{file name: md5} of a torchvision CIFAR class's official files (train, test and meta)."""
    entries = torchvision_dataset.train_list + torchvision_dataset.test_list
    return {**dict(entries), torchvision_dataset.meta['filename']: torchvision_dataset.meta['md5']}


def file_md5(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            digest.update(chunk)
    return digest.hexdigest()


def mark_not_official(folder, note):
    """Write the NOT_OFFICIAL marker into `folder` (its official-named files then skip the md5)."""
    with open(os.path.join(folder, NOT_OFFICIAL), 'w') as f:
        f.write(note.rstrip('\n') + '\n')


def check_official(path, official, dataset):
    """InputError (one line) if `path` has an official file name, its folder has no NOT_OFFICIAL
    marker, and its md5 is not the official one. Reads the whole file (0.28 s for 150 MB, measured on
    the 2-core CI machine): call it once per file and process (data.cifar100.read_batch is cached)."""
    folder, name = os.path.split(os.path.abspath(path))
    if name not in official or os.path.exists(os.path.join(folder, NOT_OFFICIAL)):
        return
    md5 = file_md5(path)
    if md5 != official[name]:
        raise _input_error(f'{path} is not the official {dataset} file (md5 {md5}, expected {official[name]}): '
                         f'delete {folder} and download it again, or, if it is your own data, create the '
                         f'empty file {os.path.join(folder, NOT_OFFICIAL)} to load it without this check')


def load_cifar_pickle(path, official, dataset):
    """The object pickled in CIFAR file `path` (Python 2 pickles: latin1 strings), after
    check_official, through CifarUnpickler. A forbidden global is a one-line InputError; other
    failures (truncated, not a pickle) propagate for the caller to name the file."""
    check_official(path, official, dataset)
    try:
        with open(path, 'rb') as f:
            return CifarUnpickler(f, encoding='latin1').load()
    except ForbiddenGlobal as e:
        raise _input_error(f'{path} is not a {dataset} batch: it names the Python global {e}, which a CIFAR file '
                         f'never holds; refused without calling it, since loading it could run code: delete '
                         f'{os.path.dirname(os.path.abspath(path))} and download it again') from None
