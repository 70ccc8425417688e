"""Published image lists (design 9.1): parsing, file checks, pins (SHA-256 or git blob id), line counts
and the Places-LT label fix, on real files in temporary folders."""
import hashlib
import os
import subprocess

import numpy as np
import pytest

import split.resolve as resolve
from data.benchmarks import get_benchmark, places_lt
from data.image_list import ImageList, check_image_files, load_rgb, read_image_list
from data.synthetic import write_synthetic_imagenet
from utils import InputError


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def test_list_parses_into_one_buffer():
    paths = ['train/n01440764/n01440764_762.JPEG', 'train/n01443537/a.JPEG', 'val/ü/b.JPEG']
    image_list = ImageList(paths, [0, 1, 1])
    assert isinstance(image_list.buffer, np.ndarray) and image_list.buffer.dtype == np.uint8
    assert image_list.offsets.tolist() == np.cumsum([0] + [len(p.encode()) for p in paths]).tolist()
    assert [image_list.relpath(i) for i in range(3)] == paths
    assert image_list.class_counts(3).tolist() == [1, 2, 0]
    sub = image_list.subset([2, 0])
    assert [sub.relpath(i) for i in range(2)] == [paths[2], paths[0]] and sub.labels.tolist() == [1, 0]


def test_read_image_list_and_its_errors(tmp_path):
    good = write(tmp_path / 'good.txt', 'train/a/1.JPEG 0\n\ntrain/b/2.JPEG 2\n')
    image_list = read_image_list(good, 3)
    assert [image_list.relpath(i) for i in range(2)] == ['train/a/1.JPEG', 'train/b/2.JPEG']
    assert image_list.labels.tolist() == [0, 2]
    with pytest.raises(InputError, match=r'bad.txt line 2: expected "RELPATH LABEL"'):
        read_image_list(write(tmp_path / 'bad.txt', 'a.JPEG 0\nb.JPEG\n'), 3)
    with pytest.raises(InputError, match=r'range.txt line 1: label 3 is outside 0..2 \(3 classes\)'):
        read_image_list(write(tmp_path / 'range.txt', 'a.JPEG 3\n'), 3)
    with pytest.raises(InputError, match='lists no image'):
        read_image_list(write(tmp_path / 'empty.txt', '\n'), 3)


def test_missing_and_escaping_files_are_one_line_errors(tmp_path):
    root = tmp_path / 'root'
    for name in ('train/a/1.JPEG', 'train/a/2.JPEG'):
        write(root / name, 'x')
    present = ImageList(['train/a/1.JPEG', 'train/a/2.JPEG'], [0, 0])
    check_image_files(str(root), present, 'mine.txt')  # all there: no error
    missing = ImageList(['train/a/1.JPEG'] + [f'train/b/{i}.JPEG' for i in range(5)], [0] * 6)
    with pytest.raises(InputError, match=r'^5 of the 6 images of mine.txt are missing under .*'
                                         r'\(e.g. train/b/0.JPEG, train/b/1.JPEG, train/b/2.JPEG\)'):
        check_image_files(str(root), missing, 'mine.txt')
    for outside in ('../secret.JPEG', '/etc/passwd', 'train/../../x.JPEG'):
        with pytest.raises(InputError, match='outside --data_folder'):
            check_image_files(str(root), ImageList(['train/a/1.JPEG', outside], [0, 0]), 'mine.txt')


def test_git_blob_id_is_what_git_prints(tmp_path):
    path = write(tmp_path / 'list.txt', 'train/a/1.JPEG 0\n' * 1000)
    printed = subprocess.run(['git', 'hash-object', path], capture_output=True, text=True, check=True).stdout.strip()
    assert resolve.git_blob_id(path) == printed
    assert resolve.file_pin(path, 'git-blob:' + '0' * 40) == 'git-blob:' + printed
    assert resolve.file_pin(path, 'f' * 64) == hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.fixture
def published_list(tmp_path, monkeypatch):
    """Places-LT's published train name, served from a file:// URL with this content's pin (sha256 or blob)."""
    def serve(text, pin_kind='sha256', lines=None):
        source = write(tmp_path / 'remote' / places_lt.TRAIN, text)
        pin = (hashlib.sha256(text.encode()).hexdigest() if pin_kind == 'sha256'
               else 'git-blob:' + resolve.git_blob_id(source))
        monkeypatch.setitem(resolve.PUBLISHED_SHA256, places_lt.TRAIN, pin)
        monkeypatch.setitem(resolve.PUBLISHED_URL, places_lt.TRAIN, (tmp_path / 'remote').as_uri() + '/{name}')
        monkeypatch.setitem(places_lt.BENCHMARK.lines, places_lt.TRAIN, lines)
        return str(tmp_path / 'split')
    return serve


@pytest.mark.parametrize('pin_kind', ['sha256', 'git-blob'])
def test_published_list_is_fetched_checked_and_relabelled(published_list, pin_kind):
    """The Places-LT train list's five reordered classes get the official indices of the evaluation lists
    (design 9.1: desert/sand 117 -> 116, desert/vegetation 118 -> 117, desert_road 116 -> 118, 141 <-> 142)."""
    published = [('train/desert-sand/1.jpg', 117), ('train/desert-vegetation/2.jpg', 118),
                 ('train/desert_road/3.jpg', 116), ('train/field-wild/4.jpg', 142), ('train/field_road/5.jpg', 141),
                 ('train/airfield/6.jpg', 0)]
    split_root = published_list(''.join(f'{p} {label}\n' for p, label in published), pin_kind, lines=6)
    image_list = resolve.load_image_list(places_lt.TRAIN, 365, split_root)
    assert os.path.isfile(os.path.join(split_root, places_lt.TRAIN))  # fetched into place
    assert image_list.labels.tolist() == [116, 117, 118, 141, 142, 0]
    # the fix is the one permutation of these five classes
    fix = places_lt.LABEL_FIXES[places_lt.TRAIN]
    assert sorted(fix) == sorted(fix.values()) == [116, 117, 118, 141, 142]


def test_published_list_pins_and_line_counts_refuse_other_files(published_list):
    split_root = published_list('a.jpg 0\nb.jpg 1\n', 'git-blob', lines=3)
    with pytest.raises(InputError, match=r'has 2 images, not 3 \(design 9.1\)'):
        resolve.load_image_list(places_lt.TRAIN, 365, split_root)
    with open(os.path.join(split_root, places_lt.TRAIN), 'a') as f:
        f.write('c.jpg 2\n')  # tampered: the pin no longer matches
    with pytest.raises(InputError, match='differs from the published Places_LT/Places_LT_train.txt'):
        resolve.load_image_list(places_lt.TRAIN, 365, split_root)


def test_offline_fetch_says_where_to_put_the_list(tmp_path, monkeypatch):
    def offline(url, path):
        raise OSError('network is unreachable')
    monkeypatch.setattr(resolve, '_download', offline)
    with pytest.raises(InputError, match=r'fetching https://raw.githubusercontent.com/MediaBrain-SJTU/Geometric-'
                                         r'Harmonization/9f7057c.*/split/Places_LT/Places_val.txt failed '
                                         r'\(network is unreachable\).*place the file at .*'
                                         r'Places_LT/Places_val.txt \(from the folder split/ of '
                                         r'github.com/MediaBrain-SJTU/Geometric-Harmonization\)'):
        resolve.load_image_list(places_lt.TEST, 365, str(tmp_path / 'split'))


def test_every_published_list_has_a_pin_of_a_known_kind():
    """Design 9.1's 15 ImageNet-scale lists: 11 SHA-256 pins, 4 git blob ids (the largest files)."""
    pins = {name: pin for name, pin in resolve.PUBLISHED_SHA256.items() if name.endswith('.txt')}
    assert len(pins) == 15
    kinds = [('git-blob' if pin.startswith('git-blob:') else 'sha256') for pin in pins.values()]
    assert kinds.count('sha256') == 11 and kinds.count('git-blob') == 4
    assert all(len(pin) == len('git-blob:') + 40 if pin.startswith('git-blob:') else len(pin) == 64
               for pin in pins.values())


def test_synthetic_jpegs_and_a_list_of_ones_own(tmp_path):
    written = write_synthetic_imagenet(str(tmp_path / 'data'), str(tmp_path / 'split'), 'fam', 'imagenet_lt',
                                       num_classes=3, head=8, tail=2, sizes=(30, 90), seed=0)
    benchmark = get_benchmark('imagenet_lt')
    train = resolve.load_image_list(written['lists']['TRAIN'], 1000, str(tmp_path / 'split'))
    assert written['lists']['TRAIN'] == 'fam/' + benchmark.default_split
    assert train.class_counts(3).tolist() == [8, 4, 2]  # 8 * (2 / 8) ** (r / 2)
    check_image_files(written['data_root'], train, 'TRAIN')
    sizes = {load_rgb(os.path.join(written['data_root'], train.relpath(i))).size for i in range(len(train))}
    assert len(sizes) > 5 and all(30 <= s <= 90 for size in sizes for s in size)  # varied, real JPEGs
    with open(os.path.join(written['data_root'], train.relpath(0)), 'rb') as f:
        assert f.read(2) == b'\xff\xd8'  # JPEG
    mine = write(tmp_path / 'split' / 'mine.txt', f'{train.relpath(0)} 0\n{train.relpath(9)} 2\n')
    own = resolve.load_image_list('mine.txt', 1000, str(tmp_path / 'split'))
    assert own.labels.tolist() == [0, 2] and os.path.isfile(mine)


def test_a_family_missing_a_list_says_which_and_how_to_write_it(tmp_path):
    """A generated family (data/synthetic.py) without one of its lists: the error names that list and its full
    path and data.synthetic's command, whichever of the family's lists is read first (not CIFAR's
    split.generate); a missing list of one's own names its path."""
    split_root = str(tmp_path / 'split')
    lists = write_synthetic_imagenet(str(tmp_path / 'data'), split_root, 'myfam', 'imagenet100_lt', num_classes=3,
                                     head=4, tail=2)['lists']
    benchmark = get_benchmark('imagenet100_lt')
    missing = os.path.join(split_root, lists['fewshot'])
    os.remove(missing)
    for name in (lists['TRAIN'], lists['fullshot'], lists['TEST']):
        with pytest.raises(InputError) as error:
            resolve.load_image_list(name, 100, split_root, benchmark)
        message = str(error.value)
        assert '\n' not in message and 'split.generate' not in message
        assert f'lacks its few-shot probe list {missing}:' in message
        assert '`python -m data.synthetic DATA --dataset imagenet100_lt --family myfam`' in message
    with pytest.raises(InputError) as error:
        resolve.load_image_list('mine.txt', 100, split_root, benchmark)
    message = str(error.value)
    assert f'split mine.txt not found at {os.path.join(split_root, "mine.txt")}' in message
    assert '\n' not in message and 'split.generate' not in message
    # a published probe name under a folder without the family's pre-training list is a list of one's own
    own = write(tmp_path / 'split' / 'other' / benchmark.probe_lists['fewshot'], 'train/a/1.JPEG 0\n')
    assert resolve.load_image_list(os.path.relpath(own, split_root), 100, split_root, benchmark).labels.tolist() == [0]
