"""Split generator (design 1.1 protocol) and resolver (fetch, checksum, validation)."""
import hashlib
import math
import os
import urllib.error

import numpy as np
import pytest

import split.resolve as resolve
from data.cifar100 import load_cifar
from split.generate import generate_splits, long_tail_count, main
from split.resolve import PUBLISHED_SHA256, family_files, load_split, protocol_files, resolve_split
from data.benchmarks import get_benchmark
from utils import InputError

SUB = 'cifar100_imbSub_with_subsets/'
SYN_VAL, SYN_TRAIN, SYN_POOL, SYN_RATIO, SYN_SHOTS = 2, 16, 18, 10, (8, 4)


def per_class(indices, labels):
    return np.bincount(labels[indices], minlength=100)


@pytest.fixture(scope='module')
def real_size():
    """The default protocol on labels shaped like CIFAR-100 train (500 per class, interleaved)."""
    labels = np.tile(np.arange(100), 500)
    return labels, generate_splits(labels, seed=0)


def test_real_size_counts(real_size):
    labels, arrays = real_size
    files = family_files('')
    # the same 22 relative names as the published family (BCL's 17 and SDCLR's five S_b)
    assert sorted(arrays) == sorted(get_benchmark('cifar100').splits.published)
    assert all(a.dtype == np.int64 and a.ndim == 1 and np.all(np.diff(a) > 0) for a in arrays.values())
    assert (per_class(arrays[files['train']], labels) == 400).all()
    assert (per_class(arrays[files['val']], labels) == 50).all()
    expected = [450, 429, 410, 391, 373, 356, 340, 324, 310, 296]  # floor(450 * 0.01 ** (r / 99)), r < 10
    orders = []
    for k in range(5):
        counts = per_class(arrays[files['D_i'][k]], labels)
        ranked = np.sort(counts)[::-1]
        assert ranked[0] == 450 and ranked[-1] == 4 and counts.sum() == 9754
        assert list(ranked[:10]) == expected
        assert list(ranked) == [math.floor(450 * 0.01 ** (r / 99)) for r in range(100)]
        assert (per_class(arrays[files['shots'][100][k]], labels) == 100).all()
        assert (per_class(arrays[files['shots'][50][k]], labels) == 50).all()
        orders.append(tuple(np.argsort(-counts, kind='stable')))
    assert len(set(orders)) == 5  # each split draws its own class order


def test_real_size_disjoint_and_nested(real_size):
    _, arrays = real_size
    files = family_files('')
    train, val = arrays[files['train']], arrays[files['val']]
    assert len(np.intersect1d(train, val)) == 0
    for k in range(5):
        assert len(np.intersect1d(arrays[files['D_i'][k]], val)) == 0
        for shot in (100, 50):
            assert np.isin(arrays[files['shots'][shot][k]], train).all()


def test_long_tail_count_is_exact():
    # 64 * 64 ** (-r / 6) = 64 / 2 ** r exactly; float arithmetic gives 1.999... -> 1 at r = 5.
    assert [long_tail_count(64, r, 7, 64) for r in range(7)] == [64, 32, 16, 8, 4, 2, 1]
    assert [long_tail_count(18, r, 100, 10) for r in (0, 99)] == [18, 1]
    assert long_tail_count(450, 99, 100, 100) == 4 and long_tail_count(450, 0, 100, 100) == 450


def test_determinism_and_independent_draws():
    labels = np.tile(np.arange(100), 20)
    kwargs = dict(val_per_class=2, train_per_class=16, imbalance_ratio=10, shot_sizes=(8, 4))
    a, b = generate_splits(labels, seed=3, **kwargs), generate_splits(labels, seed=3, **kwargs)
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    other = generate_splits(labels, seed=4, **kwargs)
    assert all(not np.array_equal(a[n], other[n]) for n in a)
    files = family_files('')
    d_i = [a[name] for name in files['D_i']]
    assert all(not np.array_equal(d_i[0], d) for d in d_i[1:])
    # Split k has its own generator: the first two splits do not depend on --num_splits.
    two = generate_splits(labels, seed=3, num_splits=2, **kwargs)
    assert len(two) == 2 + 4 * 2 and all(np.array_equal(two[n], a[n]) for n in two)
    # The two shot draws are independent: a nested draw (4-shot = start of the 8-shot) would
    # make every class's 4-shot a subset of its 8-shot; independent draws almost never do
    # (probability 70/1820 per class).
    shot8, shot4 = a[files['shots'][100][0]], a[files['shots'][50][0]]
    nested = [set(shot4[labels[shot4] == c]) <= set(shot8[labels[shot8] == c]) for c in range(100)]
    assert sum(nested) < 20


def test_pool_per_class_caps_the_pool():
    labels = np.tile(np.arange(100), 500)
    arrays = generate_splits(labels, pool_per_class=200, num_splits=1, shot_sizes=(100, 50))
    files = family_files('', 1)
    counts = np.sort(per_class(arrays[files['D_i'][0]], labels))[::-1]
    assert list(counts) == [long_tail_count(200, r, 100, 100) for r in range(100)]
    assert counts[0] == 200 and counts[-1] == 2
    assert len(np.intersect1d(arrays[files['D_i'][0]], arrays[files['val']])) == 0


@pytest.mark.parametrize('kwargs, message', [
    (dict(val_per_class=5, train_per_class=16), 'too few'),
    (dict(val_per_class=2, train_per_class=16, pool_per_class=19), 'pool_per_class'),
    (dict(val_per_class=2, train_per_class=16, shot_sizes=(17, 4)), 'shot_sizes'),
])
def test_generate_rejects_impossible_sizes(kwargs, message):
    with pytest.raises(InputError, match=message):
        generate_splits(np.tile(np.arange(100), 20), **kwargs)


def test_cli_family_on_synthetic_folder(synthetic_cifar, synthetic_splits):
    split_root, name = synthetic_splits
    _, labels = load_cifar(synthetic_cifar, train=True)
    files = protocol_files(f'{name}/{SUB}cifar100_split1_D_i.npy')
    train = load_split(files['train'], len(labels), split_root)
    val = load_split(files['val'], len(labels), split_root)
    assert (per_class(train, labels) == SYN_TRAIN).all() and (per_class(val, labels) == SYN_VAL).all()
    assert len(np.intersect1d(train, val)) == 0
    expected = [math.floor(SYN_POOL * 0.1 ** (r / 99)) for r in range(100)]
    assert expected[0] == 18 and expected[-1] == 1
    for k in range(1, 6):
        d_i = load_split(f'{name}/{SUB}cifar100_split{k}_D_i.npy', len(labels), split_root)
        assert list(np.sort(per_class(d_i, labels))[::-1]) == expected
        assert len(np.intersect1d(d_i, val)) == 0
        for shot, size in zip((100, 50), SYN_SHOTS):
            subset = load_split(files['shots'][shot][k - 1], len(labels), split_root)
            assert (per_class(subset, labels) == size).all() and np.isin(subset, train).all()
    written = sorted(os.path.relpath(os.path.join(d, f), os.path.join(split_root, name))
                     for d, _, fs in os.walk(os.path.join(split_root, name)) for f in fs)
    # the published layout (other tests add small splits of their own to this shared family), no temp files left
    assert set(get_benchmark('cifar100').splits.published) <= set(written)
    assert not [f for f in written if not f.endswith('.npy')]


def test_cli_prints_train_split_and_refuses_overwrite(synthetic_cifar, tmp_path, capsys):
    args = ['--data_folder', synthetic_cifar, '--name', 'mine', '--val_per_class', '2',
            '--train_per_class', '16', '--shot_sizes', '8', '4', '--num_splits', '1']
    main(args, split_root=str(tmp_path))
    out = capsys.readouterr().out
    assert '--trainSplit mine/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy' in out
    assert out.count('wrote ') == 5
    main(args, split_root=str(tmp_path))  # same seed, same files: fine
    with pytest.raises(SystemExit) as exit_info:
        main(args + ['--seed', '1'], split_root=str(tmp_path))
    assert exit_info.value.code == 1
    assert 'already exists with other indices' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args[:3] + ['../escape'] + args[4:], split_root=str(tmp_path))
    assert 'plain folder name' in capsys.readouterr().err


# ---------------------------------------------------------------- resolver

NAME = f'{SUB}cifar100_split1_D_i.npy'


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Serve the published names from a local folder through the real _download (file:// URL)."""
    source = tmp_path / 'source'
    (source / SUB).mkdir(parents=True)
    np.save(source / NAME, np.arange(0, 50000, 7, dtype=np.int64))
    monkeypatch.setitem(resolve.PUBLISHED_URL, NAME, source.as_uri() + '/{name}')
    root = tmp_path / 'root'
    root.mkdir()
    return source / NAME, str(root)


def test_checksum_refusal_keeps_nothing(served):
    _, root = served
    with pytest.raises(InputError) as error:
        resolve_split(NAME, root)
    message = str(error.value)
    assert 'SHA-256' in message and PUBLISHED_SHA256[NAME] in message and 'nothing was kept' in message
    assert 'python -m split.generate' in message and os.path.join(root, NAME) in message
    assert files_under(root) == []


def test_fetch_success_is_atomic(served, monkeypatch):
    source, root = served
    data = source.read_bytes()
    monkeypatch.setitem(PUBLISHED_SHA256, NAME, hashlib.sha256(data).hexdigest())
    final = os.path.join(root, NAME)
    calls = []
    real_download = resolve._download

    def spy(url, path):
        calls.append(path)
        assert not os.path.exists(final)  # the final name only ever holds a checked file
        real_download(url, path)

    monkeypatch.setattr(resolve, '_download', spy)
    assert resolve_split(NAME, root) == final
    assert len(calls) == 1 and calls[0] != final and os.path.dirname(calls[0]) == os.path.dirname(final)
    assert open(final, 'rb').read() == data and files_under(root) == [NAME]
    assert resolve_split(NAME, root) == final and len(calls) == 1  # present: no second download
    assert np.array_equal(load_split(NAME, 50000, root), np.arange(0, 50000, 7))


def test_existing_published_file_with_other_content_is_refused(tmp_path):
    (tmp_path / SUB).mkdir()
    np.save(tmp_path / NAME, np.arange(10))
    with pytest.raises(InputError, match='differs from the published'):
        resolve_split(NAME, str(tmp_path))


def test_missing_published_offline_names_both_remedies(tmp_path, monkeypatch):
    def offline(url, path):
        open(path, 'wb').write(b'partial')
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(resolve, '_download', offline)
    with pytest.raises(InputError) as error:
        resolve_split(NAME, str(tmp_path))
    message = str(error.value)
    assert 'no network' in message
    assert f'place the file at {os.path.join(str(tmp_path), NAME)}' in message
    assert 'python -m split.generate --data_folder DATA --name NAME' in message
    assert '--trainSplit NAME/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy' in message
    assert files_under(str(tmp_path)) == []  # the partial download is gone


def test_missing_generated_name(tmp_path, monkeypatch):
    monkeypatch.setattr(resolve, '_download', lambda url, path: pytest.fail('must not download'))
    with pytest.raises(InputError) as error:
        resolve_split(f'nope/{NAME}', str(tmp_path))
    assert 'not a published split name' in str(error.value)
    assert 'python -m split.generate' in str(error.value)


@pytest.mark.parametrize('array, message', [
    (np.zeros((4, 2), dtype=np.int64), '1-D'),
    (np.arange(5, dtype=np.float32), 'integer'),
    (np.array([1, 2, 2, 3]), '1 duplicate indices'),
    (np.array([0, 5, 100]), r'\[0, 100\] but the dataset has 100 images.*another data folder'),
    (np.array([-1, 3]), 'another data folder'),
    (np.array([], dtype=np.int64), 'empty'),
])
def test_load_split_rejects(tmp_path, array, message):
    np.save(tmp_path / 'bad.npy', array)
    with pytest.raises(InputError, match=message):
        load_split('bad.npy', 100, str(tmp_path))


def test_load_split_unreadable(tmp_path):
    (tmp_path / 'garbage.npy').write_bytes(b'not a numpy file')
    with pytest.raises(InputError, match='cannot read'):
        load_split('garbage.npy', 100, str(tmp_path))
    np.save(tmp_path / 'objects.npy', np.array([1, 'a'], dtype=object))
    with pytest.raises(InputError, match='cannot read'):
        load_split('objects.npy', 100, str(tmp_path))


def test_load_split_returns_int64(tmp_path):
    np.save(tmp_path / 'ok.npy', np.array([9, 0, 4], dtype=np.int32))
    indices = load_split('ok.npy', 10, str(tmp_path))
    assert indices.dtype == np.int64 and list(indices) == [9, 0, 4]


def test_protocol_files():
    published = protocol_files(f'{SUB}cifar100_split3_D_i.npy')
    assert published['train'] == 'cifar100/cifar100_trainIdxList.npy'
    assert published['val'] == 'cifar100/cifar100_valIdxList.npy'
    assert published['shots'][100] == [f'{SUB}cifar100_split{k}_test_100shot.npy' for k in range(1, 6)]
    assert published['shots'][50] == [f'{SUB}cifar100_split{k}_test_50shot.npy' for k in range(1, 6)]
    names = [published['train'], published['val']] + published['shots'][100] + published['shots'][50]
    assert set(names) <= set(PUBLISHED_SHA256) and len(get_benchmark('cifar100').splits.published) == 22
    generated = protocol_files(f'./mine/{SUB}cifar100_split1_D_i.npy')
    assert generated['train'] == 'mine/cifar100/cifar100_trainIdxList.npy'
    assert generated['shots'][50][4] == f'mine/{SUB}cifar100_split5_test_50shot.npy'
    with pytest.raises(InputError, match='split family'):
        protocol_files('my_split.npy')
