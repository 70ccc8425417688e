"""CIFAR-100 loading, the two-view and evaluation datasets (design 1.2) and the
memory-boosted dataset (design 1.4), on the synthetic folder with the real loader."""
import collections
import io
import os
import pickle
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_tensor

from data.augmentations import augment_view
from data.cifar100 import CIFAR100, EvalCIFAR, TwoViewCIFAR, load_cifar, read_batch
from data.keyed_random import keyed_uniforms
from data.memoboosted_cifar100 import MemoBoostedCIFAR, momentum_weight
from data.safe_pickle import NOT_OFFICIAL, file_md5, load_cifar_pickle
from data.view_params import SHARED_VIEW, rand_strength_magnitude
from utils import InputError


def raw_batch(folder, name):
    with open(os.path.join(folder, 'cifar-100-python', name), 'rb') as f:
        entry = pickle.load(f, encoding='latin1')
    return np.asarray(entry['data']), np.asarray(entry['fine_labels'])


@pytest.mark.parametrize('train, size', [(True, 2000), (False, 1000)])
def test_load_matches_raw_pickle(synthetic_cifar, train, size):
    images, labels = load_cifar(synthetic_cifar, train=train, download=False)
    raw, raw_labels = raw_batch(synthetic_cifar, 'train' if train else 'test')
    assert images.shape == (size, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (size,) and labels.dtype == np.int64
    assert np.array_equal(labels, raw_labels)
    # pixel (y, x) of channel c is byte c * 1024 + y * 32 + x of the row
    for i, y, x, c in [(0, 0, 0, 0), (7, 31, 0, 1), (size - 1, 5, 17, 2), (123, 31, 31, 2)]:
        assert images[i, y, x, c] == raw[i, c * 1024 + y * 32 + x]
    assert load_cifar(synthetic_cifar, train=train)[0] is images  # cached


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(InputError, match='CIFAR-100 not found in .*nowhere.*cifar-100-python'):
        load_cifar(str(tmp_path / 'nowhere'), train=True, download=False)


def test_missing_folder_download_fails(tmp_path, monkeypatch):
    """The real torchvision download path runs; its network call fails as offline."""
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise OSError('no network')
    monkeypatch.setattr(torchvision.datasets.cifar, 'download_and_extract_archive', offline)
    with pytest.raises(InputError, match=r'not found in .*empty.*download failed \(OSError: no network\)'):
        TwoViewCIFAR(str(tmp_path / 'empty'), indices=[0, 1])


def test_two_view_dataset(synthetic_cifar):
    indices = np.array([5, 0, 1999, 100, 200])
    dataset = TwoViewCIFAR(synthetic_cifar, indices)
    raw, raw_labels = raw_batch(synthetic_cifar, 'train')
    assert len(dataset) == 5 and dataset.num_class == 100
    assert np.array_equal(dataset.labels, raw_labels[indices]) and dataset.labels.dtype == np.int64
    expected_counts = np.zeros(100, dtype=np.int64)
    np.add.at(expected_counts, raw_labels[indices], 1)
    assert np.array_equal(dataset.class_counts, expected_counts)
    assert np.array_equal(dataset.images[2].transpose(2, 0, 1).reshape(-1), raw[1999])
    torch.manual_seed(0)
    for i in range(len(dataset)):
        views, position = dataset[i]
        assert position == i
        assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
        assert views.min() >= 0 and views.max() <= 1 and views.max() > 0.5
        assert not torch.equal(views[0], views[1])


@pytest.mark.parametrize('train', [True, False])
def test_eval_dataset(synthetic_cifar, train):
    raw, raw_labels = raw_batch(synthetic_cifar, 'train' if train else 'test')
    indices = [3, 999, 0] if train else None
    dataset = EvalCIFAR(synthetic_cifar, train=train, indices=indices)
    assert len(dataset) == (3 if train else 1000)
    positions = [0, 1, 2] if train else [0, 1, 999]
    for position, source in zip(positions, indices or positions):
        image, label = dataset[position]
        expected = torch.from_numpy(raw[source].reshape(3, 32, 32).astype(np.float32)) / 255
        assert image.dtype == torch.float32 and torch.equal(image, expected)
        assert type(label) is int and label == raw_labels[source]


def test_momentum_weight_formula():
    # mean 4, deviations (-3, -2, -1, 6): the max is the max-|z| side and maps to 1
    assert np.allclose(momentum_weight(np.array([1.0, 2, 3, 10])), [0.25, 1 / 3, 5 / 12, 1.0])
    # mean 7, deviations (-7, 1, 2, 4): the min is the max-|z| side and maps to 0
    weight = momentum_weight(torch.tensor([0.0, 8, 9, 11]))
    assert weight.dtype == np.float64 and np.allclose(weight, [0.0, 4 / 7, 9 / 14, 11 / 14])
    assert np.allclose(momentum_weight(torch.tensor([3.0, 1.0], dtype=torch.float64)), [1.0, 0.0])
    # all equal: 0.5 everywhere (the published formula would give NaN)
    assert np.array_equal(momentum_weight(np.full(4, 2.5)), np.full(4, 0.5))
    assert np.array_equal(momentum_weight([7.0]), [0.5])


def test_strength_rules():
    assert rand_strength_magnitude(0.0, 1, 30, None) == 10
    assert rand_strength_magnitude(0.5, 1, 30, None) == 20
    assert rand_strength_magnitude(1.0, 1, 20, None) == 20
    assert rand_strength_magnitude(0.5, 2, 30, 0.4) == pytest.approx(10)
    assert rand_strength_magnitude(1.0, 3, 25, 1.0) == 25
    assert rand_strength_magnitude(0.0, 2, 30, 0.9) == 5


@pytest.mark.parametrize('rand_k, rand_strength', [(1, 30), (2, 30), (3, 20)])
def test_memoboosted_view_params_follow_design(synthetic_cifar, rand_k, rand_strength):
    """Design 1.4 on the dataset's drawn parameters: k ops per view, applied iff their uniform
    < w_i (all with w = 1, none with w = 0), magnitude m_i by the k rule, with k >= 2 from the
    sample's own u (keyed view 2), shared by both views; the rendered views are those params."""
    dataset = MemoBoostedCIFAR(synthetic_cifar, np.arange(10), rand_k, rand_strength, seed=4)
    assert dataset.momentum_weight.dtype == torch.float64 and not dataset.momentum_weight.any()
    loss = np.arange(10.0)  # symmetric: weights 0, 1/9, ..., 1
    dataset.update_momentum_weight(torch.from_numpy(loss))
    weight = momentum_weight(loss)
    dataset.set_epoch(3)
    positions = torch.tensor([0, 3, 9])
    params = dataset.view_params(positions)
    u = keyed_uniforms(dataset.views_key(), positions, (SHARED_VIEW,), 1)[:, 0, 0]
    assert params.ops.shape == (3, 2, rand_k) and params.op_applied.shape == (3, 2, rand_k)
    for row, i in enumerate(positions.tolist()):
        expected = rand_strength_magnitude(weight[i], rand_k, rand_strength, float(u[row]))
        assert params.magnitude[row].tolist() == [pytest.approx(expected, rel=1e-12)] * 2
    assert not params.op_applied[0].any() and params.op_applied[2].all()  # w = 0 and w = 1
    views, position = dataset[3]
    img = Image.fromarray(dataset.images[3])
    for view, drawn in zip(views, params.per_view()[1]):
        assert torch.equal(view, to_tensor(augment_view(img, drawn)))
    if rand_k >= 2:  # u is per sample: different samples, different u
        assert len(set(u.tolist())) == 3


def test_memoboosted_zero_weight_is_plain_simclr(synthetic_cifar):
    """With all weights 0 no RandAugment op is applied: the views equal the SimCLR views of the
    same seed and epoch (the base parameters are the same draws in both datasets)."""
    plain = TwoViewCIFAR(synthetic_cifar, np.arange(4), seed=1)
    boosted = MemoBoostedCIFAR(synthetic_cifar, np.arange(4), rand_k=2, seed=1)
    for dataset in (plain, boosted):
        dataset.set_epoch(2)
    for i in range(4):
        assert torch.equal(boosted[i][0], plain[i][0])
    boosted.update_momentum_weight(np.arange(4.0))  # weights 0, 1/3, 2/3, 1: now sample 3 differs
    assert torch.equal(boosted[0][0], plain[0][0]) and not torch.equal(boosted[3][0], plain[3][0])


def test_update_rejects_wrong_length(synthetic_cifar):
    dataset = MemoBoostedCIFAR(synthetic_cifar, np.arange(4))
    with pytest.raises(ValueError, match='expected'):
        dataset.update_momentum_weight(np.arange(3.0))


class WeightEcho(MemoBoostedCIFAR):
    """Returns the weight a worker sees for sample i, and the worker's pid."""
    __getitems__ = None  # the DataLoader then fetches item by item, through __getitem__

    def __getitem__(self, i):
        return float(self.momentum_weight[i]), os.getpid()


def test_weight_update_reaches_persistent_workers(synthetic_cifar):
    dataset = WeightEcho(synthetic_cifar, np.arange(16))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)

    def epoch():
        weights, pids = zip(*[(w, p) for batch_w, batch_p in loader
                              for w, p in zip(batch_w.tolist(), batch_p.tolist())])
        return np.array(weights), set(pids)

    weights, first_pids = epoch()
    assert np.array_equal(weights, np.zeros(16)) and os.getpid() not in first_pids
    for loss in (np.arange(16.0), np.arange(16.0)[::-1] ** 2):
        dataset.update_momentum_weight(loss)
        weights, pids = epoch()
        assert pids == first_pids  # the same, persistent workers
        assert np.allclose(weights, momentum_weight(loss))


# ----------------------------------------------------------------------------- data pickles (issue 20.11)

class RunsCode:
    """Unpickling it calls `call(*args)`: what a crafted data file would do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def crafted_folder(root, synthetic_cifar, data, marked):
    """A copy of the synthetic folder whose `train` holds `data` as its 'data' entry; with or without
    the NOT_OFFICIAL marker."""
    folder = root / 'cifar-100-python'
    shutil.copytree(os.path.join(synthetic_cifar, 'cifar-100-python'), folder)
    if not marked:
        os.remove(folder / NOT_OFFICIAL)
    with open(folder / 'train', 'wb') as f:
        pickle.dump({'data': data, 'fine_labels': [0]}, f)
    read_batch.cache_clear()
    return folder


@pytest.mark.parametrize('marked', [True, False])
@pytest.mark.parametrize('payload', ['os.system', 'open'])
def test_crafted_pickle_never_runs_code(synthetic_cifar, tmp_path, payload, marked):
    """Marked NOT_OFFICIAL, the restricted unpickler refuses the global; unmarked, the md5 check
    refuses the file before unpickling. Either way the marker file never appears."""
    marker = tmp_path / 'MARKER'
    data = RunsCode(os.system, f'touch {marker}') if payload == 'os.system' else RunsCode(open, str(marker), 'w')
    folder = crafted_folder(tmp_path / 'data', synthetic_cifar, data, marked)
    with pytest.raises(InputError) as error:
        load_cifar(str(tmp_path / 'data'), train=True, download=False)
    message = str(error.value)
    assert '\n' not in message and not marker.exists()
    if marked:
        name = 'posix.system' if payload == 'os.system' else 'io.open'
        assert message.startswith(f'{folder / "train"} is not a CIFAR-100 batch: it names the Python global {name}, '
                                  f'which a CIFAR file never holds; refused without calling it')
    else:
        assert message.startswith(f'{folder / "train"} is not the official CIFAR-100 file (md5 ')
        assert f'create the empty file {folder / NOT_OFFICIAL} to load it without this check' in message


def test_harmless_but_foreign_global_is_refused(synthetic_cifar, tmp_path):
    folder = crafted_folder(tmp_path / 'data', synthetic_cifar, collections.OrderedDict(a=1), marked=True)
    with pytest.raises(InputError, match=re.escape(f'{folder / "train"} is not a CIFAR-100 batch: it names the '
                                                   'Python global collections.OrderedDict')):
        load_cifar(str(tmp_path / 'data'), train=True)


def test_official_file_names_need_the_official_md5(synthetic_cifar, tmp_path):
    import torchvision
    assert CIFAR100.official_md5 == {'train': torchvision.datasets.CIFAR100.train_list[0][1],
                            'test': torchvision.datasets.CIFAR100.test_list[0][1],
                            'meta': torchvision.datasets.CIFAR100.meta['md5']}
    folder = tmp_path / 'cifar-100-python'
    shutil.copytree(os.path.join(synthetic_cifar, 'cifar-100-python'), folder)
    os.remove(folder / NOT_OFFICIAL)
    for train in (True, False):
        read_batch.cache_clear()
        with pytest.raises(InputError, match='is not the official CIFAR-100 file'):
            load_cifar(str(tmp_path), train=train)
    # a file with the table's md5 loads unmarked; other names are never checked
    path = str(folder / 'train')
    entry = load_cifar_pickle(path, {'train': file_md5(path)}, 'CIFAR-100')
    assert np.array_equal(entry['fine_labels'], raw_batch(synthetic_cifar, 'train')[1])
    os.rename(folder / 'train', folder / 'my_train')
    assert load_cifar_pickle(str(folder / 'my_train'), CIFAR100.official_md5, 'CIFAR-100')['fine_labels'] == entry['fine_labels']


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote the official files: bytes as Python 2 str (BINSTRING), NumPy as
    numpy.core.multiarray."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack('<i', len(obj)) + obj)
        self.memoize(obj)
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, '__module__', '').replace('numpy._core', 'numpy.core')
        self.write(pickle.GLOBAL + f'{module}\n{name or obj.__name__}\n'.encode())
        self.memoize(obj)


def test_python2_pickle_as_the_official_files_loads(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump({'data': images, 'fine_labels': [5, 0, 99], 'batch_label': b'x'})
    assert b'numpy.core.multiarray\n_reconstruct' in buffer.getvalue() and b'_codecs' not in buffer.getvalue()
    (tmp_path / 'train').write_bytes(buffer.getvalue())
    entry = load_cifar_pickle(str(tmp_path / 'train'), {}, 'CIFAR-100')
    assert np.array_equal(entry['data'], images) and entry['fine_labels'] == [5, 0, 99] and entry['batch_label'] == 'x'
