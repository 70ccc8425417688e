"""The experiment folder (issue 20): run names are one folder name and never globbed, --overwrite
deletes only the project's files, one run at a time (folder_lock.py), a checkpoint of another
folder never replaces a run silently. Synthetic data, CPU, tiny splits."""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import train
from folder_lock import LOCK_NAME, FolderLock
from test_reliability import ROOT, load, one_line_error
from test_reliability import base_args  # noqa: F401 (a fixture)


def train_run(base_args, save_dir, name, *flags, epochs=1):
    train.main([name] + base_args(save_dir, epochs=epochs) + list(flags))
    return os.path.join(save_dir, name)


def file_bytes(folder):
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name))}


def test_glob_characters_in_a_name_touch_no_other_run(base_args, tmp_path, capsys):
    """'exp?' --overwrite deleted expA's and expB's checkpoints (glob); 'run[1]' trained twice was not
    refused (its glob matched nothing) and replaced the first run."""
    runs = {name: file_bytes(train_run(base_args, tmp_path, name)) for name in ('expA', 'expB')}
    train_run(base_args, tmp_path, 'exp?', '--overwrite')
    for name, files in runs.items():
        assert file_bytes(tmp_path / name) == files, name
    assert load(tmp_path / 'exp?' / 'model.pt')['epoch'] == 1

    first = file_bytes(train_run(base_args, tmp_path, 'run[1]'))
    message = one_line_error(train.main, ['run[1]'] + base_args(tmp_path, epochs=1), capsys)
    assert 'already holds model.pt and 1 more checkpoint(s)' in message and "'run[1]'" in message
    assert file_bytes(tmp_path / 'run[1]') == first


@pytest.mark.parametrize('name', ['..', '.', '', '/tmp/elsewhere', 'a/b'])
def test_a_run_name_is_one_folder_name(name, tmp_path, capsys):
    line = one_line_error(train.main, [name, '--save_dir', str(tmp_path / 'runs')], capsys, code=2)
    assert f'{name!r} is not one folder name' in line and 'SAVE_DIR/EXPERIMENT' in line
    assert not (tmp_path / 'runs').exists()  # refused at parse time, before any work


def test_overwrite_deletes_only_the_files_a_run_writes(base_args, tmp_path):
    folder = train_run(base_args, tmp_path, 'x', epochs=2)
    assert {'model.pt', 'model_1.pt', 'model_2.pt', 'log.txt', 'metrics.jsonl'} <= set(os.listdir(folder))
    mine = {'notes.txt': b'my notes', 'model_best.pt': b'my own weights', 'model.pt.bak': b'a backup'}
    for name, content in mine.items():
        (tmp_path / 'x' / name).write_bytes(content)
    (tmp_path / 'x' / 'model_results.json').write_text('{}')  # test.py's results of the old run
    train_run(base_args, tmp_path, 'x', '--overwrite', '--save_freq', '0')
    assert sorted(os.listdir(folder)) == sorted(['log.txt', 'metrics.jsonl', 'model.pt', *mine])
    assert all((tmp_path / 'x' / name).read_bytes() == content for name, content in mine.items())
    assert load(tmp_path / 'x' / 'model.pt')['epoch'] == 1


HOLDER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from folder_lock import FolderLock
    with FolderLock({folder!r}):
        print('locked', flush=True)
        time.sleep(120)
''')


def test_a_second_run_in_a_folder_is_refused_while_the_first_lives(base_args, tmp_path, capsys):
    """Another process holds the folder (as a live run does): a run there stops before writing
    anything, naming the holder's PID and host; once the holder is killed (SIGKILL: no clean-up),
    the OS has released the lock and the run trains. The lock file goes when a run ends."""
    folder = tmp_path / 'R'
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', HOLDER.format(root=ROOT, folder=str(folder))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        message = one_line_error(train.main, ['R'] + base_args(tmp_path, epochs=1), capsys)
        assert message.startswith(f'error: {folder} is in use by another run (PID {holder.pid} on host '
                                  f'{socket.gethostname()}, since ')
        assert sorted(os.listdir(folder)) == [LOCK_NAME]  # nothing of the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train_run(base_args, tmp_path, 'R')
    assert load(folder / 'model.pt')['epoch'] == 1 and LOCK_NAME not in os.listdir(folder)


def test_the_lock_is_per_open_file_and_its_file_is_renewed(tmp_path):
    """Two holders in one process conflict too (flock locks belong to open files); a lock released
    deletes its file, and the next holder writes its own PID into a new one."""
    with FolderLock(str(tmp_path)) as lock:
        with pytest.raises(Exception, match=f'in use by another run \\(PID {os.getpid()} on host'):
            FolderLock(str(tmp_path)).acquire()
    assert not os.path.exists(lock.path)
    with FolderLock(str(tmp_path)) as again:
        assert open(again.path).read().startswith(f'PID {os.getpid()} on host ')
    assert not os.path.exists(again.path)


def test_a_checkpoint_of_another_folder_never_replaces_a_run(base_args, tmp_path, capsys):
    """B holds a finished run: continuing SRC's checkpoint there is refused (nothing touched); with
    --overwrite B's run is deleted and SRC continues there with SRC's history, equal to SRC's own
    continuation; into a clean folder it continues without --overwrite."""
    src = train_run(base_args, tmp_path, 'SRC', epochs=2)
    b = train_run(base_args, tmp_path / 'other', 'B', epochs=2)
    before = file_bytes(b)
    resume = ['B'] + base_args(tmp_path / 'other', epochs=2) + ['--resume', '--checkpoint',
                                                                 os.path.join(src, 'model_1.pt')]
    message = one_line_error(train.main, resume, capsys)
    assert f'{b} holds a run of its own (model.pt, model_1.pt, model_2.pt, metrics.jsonl)' in message
    assert 'a new experiment name' in message and '--overwrite' in message
    assert file_bytes(b) == before

    train.main(resume + ['--overwrite'])
    continued, reference = load(os.path.join(b, 'model.pt')), load(os.path.join(src, 'model.pt'))
    assert continued['epoch'] == 2
    assert all(torch.equal(v, reference['state_dict'][k]) for k, v in continued['state_dict'].items())
    from metrics import read_metrics
    history, src_history = read_metrics(os.path.join(b, 'metrics.jsonl')), read_metrics(os.path.join(src, 'metrics.jsonl'))
    assert [r['epoch'] for r in history] == [1, 2] and history[0] == src_history[0]  # SRC's epoch 1, copied
    assert not (tmp_path / 'other' / 'B' / 'model_1.pt').exists()  # B's own run is gone

    (tmp_path / 'other' / 'D').mkdir()  # the history of a run killed before its first checkpoint is a run too
    (tmp_path / 'other' / 'D' / 'metrics.jsonl').write_text('{"epoch": 1, "loss": 5.0}\n')
    message = one_line_error(train.main, ['D'] + resume[1:], capsys)
    assert 'holds a run of its own (metrics.jsonl)' in message

    clean = ['C'] + base_args(tmp_path / 'other', epochs=2) + ['--resume', '--checkpoint',
                                                                os.path.join(src, 'model_1.pt')]
    train.main(clean)
    assert load(tmp_path / 'other' / 'C' / 'model.pt')['epoch'] == 2


def test_overwrite_with_a_resume_of_the_folder_itself_is_refused(base_args, tmp_path, capsys):
    folder = train_run(base_args, tmp_path, 'x', epochs=2)
    before = file_bytes(folder)
    message = one_line_error(train.main, ['x'] + base_args(tmp_path, epochs=2) + ['--resume', '--overwrite'], capsys)
    assert 'would delete the run it continues' in message and file_bytes(folder) == before
