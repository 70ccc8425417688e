"""Failures around a run (issue 20): a split or data file replaced under its name, a damaged training
state, the in-training probe against SIGKILL and SIGTERM, a full or read-only disk outside the
checkpoint write, a loader worker killed by the OOM killer. Synthetic data, CPU, tiny splits."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import checkpoint
import metrics
import train
import utils
from data.synthetic import write_synthetic_cifar
from eval_cifar import extract_features, train_probes
from metrics import read_metrics
from preemption import StopRequest, Stopped
from test_reliability import ROOT, load, one_line_error
from test_reliability import base_args  # noqa: F401 (a fixture)
from test_train import SUBSETS


def with_flag(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


# ----------------------------------------------------------------------------- inputs replaced under their name

def test_a_split_replaced_under_its_name_is_refused_on_resume(base_args, synthetic_splits, tmp_path, capsys):
    """Same length: it trained silently on other images; another length: a RuntimeError traceback."""
    split_root, family = synthetic_splits
    name = f'{family}/{SUBSETS}/swapped_D_i.npy'
    path = os.path.join(split_root, name)
    d_i = np.load(os.path.join(split_root, f'{family}/{SUBSETS}/cifar100_split1_D_i.npy'))
    np.save(path, d_i[:32])
    argv = with_flag(['x'] + base_args(tmp_path, epochs=2), '--trainSplit', name)
    train.main(argv)
    saved = load(tmp_path / 'x' / 'model_1.pt')['inputs']
    assert saved['split'] == {'name': name, 'sha256': checkpoint_sha256(path)}
    resume = argv + ['--resume', '--checkpoint', str(tmp_path / 'x' / 'model_1.pt')]
    for other in (d_i[32:64], d_i[:40]):
        np.save(path, other)
        message = one_line_error(train.main, resume, capsys)
        assert f'was trained on split {name} with SHA-256 {saved["split"]["sha256"][:16]}' in message
        assert 'put the original file back' in message
    np.save(path, d_i[:32])  # the original again: resumes
    train.main(resume)
    assert load(tmp_path / 'x' / 'model.pt')['epoch'] == 2


def checkpoint_sha256(path):
    from split.resolve import sha256
    return sha256(path)


def test_a_data_file_replaced_is_refused_on_resume(base_args, tmp_path, capsys):
    data = tmp_path / 'data'
    write_synthetic_cifar(str(data), 'cifar100', 20, 10, seed=0)
    argv = with_flag(['x'] + base_args(tmp_path, epochs=2), '--data_folder', str(data))
    train.main(argv)
    write_synthetic_cifar(str(data), 'cifar100', 20, 10, seed=1)  # other pixels under the same names
    message = one_line_error(train.main, argv + ['--resume', '--checkpoint', str(tmp_path / 'x' / 'model_1.pt')],
                             capsys)
    assert 'was trained on data file cifar-100-python/train of ' in message
    assert 'pass the original --data_folder' in message


# ----------------------------------------------------------------------------- damaged training states

def damage(kind):
    def apply(state):
        if kind == 'no rng':
            del state['rng']
        elif kind == 'no optim':
            del state['optim']
        elif kind == 'no args':
            del state['args']
        elif kind == 'list state_dict':
            state['state_dict'] = list(state['state_dict'].values())
        elif kind == 'string epoch':
            state['epoch'] = '1'
        elif kind == 'short momentum_loss':
            state['momentum_loss'] = state['momentum_loss'][:-3]
        elif kind == 'bad rng':
            state['rng']['torch'] = torch.zeros(3)
        elif kind == 'bad progress':
            state['progress'] = {'epoch': 2, 'step': 99, 'loss_sum': 1.0, 'seen': 8, 'masks': {},
                                 'epoch_metrics': None}
        elif kind == 'wrong weight shape':
            state['state_dict']['projector.fc1.weight'] = torch.zeros(3, 3)
    return apply


DAMAGES = {'no rng': 'rng is missing', 'no optim': 'optim is missing', 'no args': 'args is missing',
           'list state_dict': 'state_dict is of type list, expected dict', 'string epoch': 'epoch is of type str, expected int',
           'short momentum_loss': 'momentum_loss holds 29 values for a split of 32 images',
           'bad rng': 'its RNG state does not restore', 'bad progress': 'its progress (epoch 2, step 99)',
           'wrong weight shape': 'other shapes: projector.fc1.weight (3, 3)'}


@pytest.fixture(scope='module')
def trained_run(synthetic_cifar, synthetic_splits, tmp_path_factory):
    """One 2-epoch run (its folder), which each damage case copies: one training instead of one per case."""
    from test_train import tiny_split
    folder = tmp_path_factory.mktemp('trained')
    train.main(['x', '--epochs', '2', '--batch_size', '16', '--num_workers', '0', '--gpus', 'cpu', '--data_folder',
                synthetic_cifar, '--trainSplit', tiny_split(synthetic_splits, 32), '--save_dir', str(folder),
                '--eval_freq', '0', '--save_freq', '1'])
    return folder / 'x'


@pytest.mark.parametrize('kind', DAMAGES)
def test_a_damaged_training_state_is_one_line_before_anything_changes(kind, trained_run, base_args, tmp_path, capsys):
    argv = ['x'] + base_args(tmp_path, epochs=2)
    shutil.copytree(trained_run, tmp_path / 'x')
    state = load(tmp_path / 'x' / 'model_1.pt')
    damage(kind)(state)
    torch.save(state, tmp_path / 'x' / 'model_1.pt')
    before = {p.name: p.read_bytes() for p in (tmp_path / 'x').iterdir()}
    message = one_line_error(train.main, argv + ['--resume', '--checkpoint', str(tmp_path / 'x' / 'model_1.pt')],
                             capsys)
    assert DAMAGES[kind] in message and 'model_1.pt' in message, message
    assert {p.name: p.read_bytes() for p in (tmp_path / 'x').iterdir()} == before


# ----------------------------------------------------------------------------- the probe and preemption

def test_a_stop_signal_ends_feature_extraction_and_probes_at_their_next_step(synthetic_cifar):
    """Within a batch of features or an epoch of the probe, not after the whole pass."""
    from data.cifar100 import EvalCIFAR
    calls = []

    class Pixels(torch.nn.Module):
        def features(self, x):
            calls.append(len(x))
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives during the second batch
            return x.mean((2, 3))
    with StopRequest() as stop:
        with pytest.raises(Stopped):
            extract_features(Pixels(), EvalCIFAR(synthetic_cifar, train=False), torch.device('cpu'),
                             batch_size=100, stop=stop)
    assert calls == [100, 100]  # of 10 batches
    stop = StopRequest()
    stop.requested = 'SIGTERM'
    with pytest.raises(Stopped):
        train_probes(torch.randn(20, 4), torch.arange(20) % 2, [np.arange(20)], 2, epochs=500, stop=stop)


@pytest.fixture(scope='module')
def small_probe_args(tmp_path_factory):
    """A CIFAR-100 folder of 4 train and 2 test images per class with its split family (probe train
    list of 2 per class) and a 32-image D_i: the in-training probe's feature pass covers 400 images,
    so that a probe costs seconds on the CPU."""
    import uuid
    from split.generate import main as generate
    from split.resolve import SPLIT_ROOT
    data = str(write_synthetic_cifar(str(tmp_path_factory.mktemp('small')), 'cifar100', 4, 2, seed=0))
    family = f'_pytest_small_{uuid.uuid4().hex[:8]}'
    generate(['--data_folder', data, '--name', family, '--val_per_class', '1', '--train_per_class', '2',
              '--imbalance_ratio', '1', '--shot_sizes', '1', '1'])
    d_i = f'{family}/{SUBSETS}/cifar100_split1_D_i.npy'
    np.save(os.path.join(SPLIT_ROOT, family, SUBSETS, 'tiny_D_i.npy'), np.load(os.path.join(SPLIT_ROOT, d_i))[:32])

    def args(save_dir, epochs=2):
        return ['--epochs', str(epochs), '--batch_size', '16', '--num_workers', '0', '--gpus', 'cpu',
                '--data_folder', data, '--trainSplit', f'{family}/{SUBSETS}/tiny_D_i.npy',
                '--save_dir', str(save_dir), '--eval_freq', '1', '--save_freq', '0']
    yield args
    shutil.rmtree(os.path.join(SPLIT_ROOT, family), ignore_errors=True)


PROBE_DRIVER = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import train
    real_probe, mode = train.full_shot_eval, {mode!r}

    def probe(*args, **kwargs):
        if mode == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a hard time limit would
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's notice, during the probe
        return real_probe(*args, **kwargs)
    if mode != 'none':
        train.full_shot_eval = probe
    train.main({argv!r})
''')


def drive_probe(argv, mode):
    code = PROBE_DRIVER.format(root=ROOT, mode=mode, argv=argv)
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('mode', ['kill', 'term'])
def test_a_probe_cut_short_loses_no_epoch_and_runs_again_on_resume(mode, small_probe_args, tmp_path):
    """SIGKILL during epoch 1's probe: the epoch's metrics line is on disk (written before the probe).
    SIGTERM during it: the probe stops at once, the run exits 143 after saving. Either way --resume
    first runs the probe that was cut off, then trains on; every epoch has its line and its probe."""
    argv = ['x'] + small_probe_args(tmp_path)
    cut = drive_probe(argv, mode)
    assert cut.returncode == (-signal.SIGKILL if mode == 'kill' else 128 + signal.SIGTERM), cut.stderr
    (record,) = read_metrics(tmp_path / 'x' / 'metrics.jsonl')
    assert record['epoch'] == 1 and 'probe' not in record and record['loss'] > 0
    if mode == 'term':
        assert 'Traceback' not in cut.stderr and 'stopped by SIGTERM after epoch 1' in cut.stderr
        assert 'the full-shot probe of epoch 1 was cut short by SIGTERM' in (tmp_path / 'x' / 'log.txt').read_text()
    resumed = drive_probe(argv + ['--resume'], 'none')
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(tmp_path / 'x' / 'metrics.jsonl')
    assert [r['epoch'] for r in records] == [1, 2] and all(1 < r['probe']['top1'] <= 100 for r in records)
    assert records[0]['loss'] == record['loss']
    log = (tmp_path / 'x' / 'log.txt').read_text()
    assert log.count('probe after epoch 1/2: full-shot top1') == 1 and 'probe after epoch 2/2' in log


# ----------------------------------------------------------------------------- disks

def failing_open(real_open, suffix, from_call, error=errno.ENOSPC):
    """`open` that raises OSError(error) for paths ending in `suffix` from its `from_call`-th such
    call (a disk that fills up, or is remounted read-only, mid-run)."""
    calls = []

    def fake(path, *args, **kwargs):
        if str(path).endswith(suffix):
            calls.append(path)
            if len(calls) >= from_call:
                raise OSError(error, os.strerror(error), str(path))
        return real_open(path, *args, **kwargs)
    return fake


def test_a_full_disk_for_the_history_says_which_checkpoint_is_intact(base_args, tmp_path, monkeypatch, capsys):
    """metrics.jsonl cannot take epoch 3's line (4 epochs, model.pt every 2): one line naming the
    file and epoch 2's intact checkpoint; no traceback, no temp file left."""
    monkeypatch.setattr(metrics, 'open', failing_open(open, 'metrics.jsonl', 3), raising=False)
    message = one_line_error(train.main, ['x'] + base_args(tmp_path, epochs=4) + ['--save_freq', '0'], capsys)
    path = tmp_path / 'x' / 'metrics.jsonl'
    assert message == (f'error: could not write {path} (No space left on device); the newest checkpoint, '
                       f'{tmp_path / "x" / "model.pt"} (epoch 2), is intact: free space or fix permissions, '
                       f'then continue with --resume')
    assert load(tmp_path / 'x' / 'model.pt')['epoch'] == 2 and not list((tmp_path / 'x').glob('*.tmp'))


def test_a_read_only_disk_at_the_start_says_no_checkpoint_exists(base_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(utils, 'open', failing_open(open, 'log.txt', 1, errno.EROFS), raising=False)
    message = one_line_error(train.main, ['x'] + base_args(tmp_path, epochs=2), capsys)
    assert message == (f'error: could not write {tmp_path / "x" / "log.txt"} (Read-only file system); no checkpoint '
                       f'of this run exists yet: free space or fix permissions, then start the run again (same '
                       f'command)')


def test_a_failed_history_rewrite_leaves_no_temp_file(base_args, tmp_path, monkeypatch, capsys):
    """--resume rewrites metrics.jsonl (temp file, rename): a disk that refuses the rename."""
    argv = ['x'] + base_args(tmp_path, epochs=3)
    train.main(with_flag(argv, '--epochs', '3'))

    def refuse(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(metrics.os, 'replace', refuse)
    message = one_line_error(train.main, argv + ['--resume', '--checkpoint', str(tmp_path / 'x' / 'model_2.pt')],
                             capsys)
    assert 'could not write' in message and 'metrics.jsonl (No space left on device)' in message
    assert 'model_2.pt (epoch 2), is intact' in message
    assert not list((tmp_path / 'x').glob('*.tmp'))


def test_torch_writer_failures_are_said_in_words(tmp_path, monkeypatch):
    """torch.save reports a full disk as '[enforce fail at inline_container.cc:...]': not shown."""
    def full(*args, **kwargs):
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 320 vs 211')
    monkeypatch.setattr(checkpoint.torch, 'save', full)
    with pytest.raises(utils.InputError) as error:
        checkpoint.save({'w': torch.ones(2)}, str(tmp_path / 'model.pt'))
    assert 'inline_container' not in str(error.value) and 'enforce fail' not in str(error.value)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert (('No space left on device (' if free < 2 ** 26 else '(the write failed: the disk may be full or read-only)')
            in str(error.value))
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(checkpoint.torch, 'save', lambda *a, **k: (_ for _ in ()).throw(RuntimeError('no pickling')))
    with pytest.raises(utils.InputError, match=r'\(no pickling\)'):  # not torch's writer: its own words
        checkpoint.save({'w': torch.ones(2)}, str(tmp_path / 'model.pt'))


def test_only_a_worker_killed_under_the_loader_is_called_a_memory_problem():
    from preemption import loader_worker_death
    assert loader_worker_death(RuntimeError('DataLoader worker (pid 7) is killed by signal: Killed. '))
    assert loader_worker_death(RuntimeError('DataLoader worker (pid(s) 7) exited unexpectedly'))
    bug = RuntimeError('Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback: ...')
    assert loader_worker_death(bug) is None and loader_worker_death(ValueError('exited unexpectedly')) is None


def test_a_folder_without_locks_warns_and_a_full_one_is_one_line(tmp_path, monkeypatch, capsys):
    import fcntl
    import folder_lock
    real_flock = fcntl.flock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(folder_lock.fcntl, 'flock', no_locks)
    with folder_lock.FolderLock(str(tmp_path)):
        assert 'cannot be locked (No locks available): nothing stops a second run' in capsys.readouterr().err
    monkeypatch.setattr(folder_lock.fcntl, 'flock', real_flock)

    def full(fd, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(folder_lock.os, 'ftruncate', full)  # writing the holder's name into the lock file
    with pytest.raises(utils.InputError, match=f'cannot lock {tmp_path} \\(No space left on device\\)'):
        folder_lock.FolderLock(str(tmp_path)).acquire()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [] and not folder_lock._held  # released, its file gone


def test_a_forked_loader_worker_does_not_hold_the_lock(tmp_path):
    import folder_lock
    with folder_lock.FolderLock(str(tmp_path)) as lock:
        child = os.fork()
        if child == 0:  # a loader worker: its copy of the lock's descriptor is closed
            try:
                os.fstat(lock.fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        assert os.fstat(lock.fd)  # the parent still holds it


# ----------------------------------------------------------------------------- loader workers

WORKER_DRIVER = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import torch
    import train
    from data.cifar100 import TwoViewCIFAR
    real = TwoViewCIFAR.__getitems__

    def getitems(self, positions):
        if torch.utils.data.get_worker_info() is not None and int(self.epoch) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does to a worker
        return real(self, positions)
    TwoViewCIFAR.__getitems__ = getitems
    train.main({argv!r})
''')


def test_a_killed_loader_worker_is_one_line_naming_memory_and_num_workers(base_args, tmp_path):
    argv = with_flag(['x'] + base_args(tmp_path, epochs=3), '--num_workers', '1')
    done = subprocess.run([sys.executable, '-c', WORKER_DRIVER.format(root=ROOT, argv=argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    first = tmp_path / 'x' / 'model_1.pt'
    assert message.startswith('error: a data loader worker died (DataLoader worker (pid')
    assert 'most likely killed for lack of memory: lower --num_workers (now 1) or free memory' in message
    assert message.endswith(f'the newest checkpoint, {first} (epoch 1), is intact: lower --num_workers or free '
                            f'memory, then continue with --resume --checkpoint {first}')
