"""Checkpoint files: written atomically and durably, read safely, never poisoned, never
overwritten by accident.

- `save`: temp file beside the target, flushed and fsynced, renamed over it, folder fsynced;
  any failure removes the temp file and is a one-line InputError that says the target is unchanged.
- `load`: `torch.load(weights_only=True)`: tensors, plain containers and plain numpy arrays only, so
  a downloaded file cannot run code; a file that needs more is refused with a one-line InputError.
- `non_finite`: the names of floating tensors holding NaN or inf, anywhere in a nested state.
- `Checkpoints`: the policy of one experiment folder (what is saved when, which checkpoint is
  the newest finite one, refusing to start a fresh run over an existing one), writing in the
  background: a CPU copy of the state is taken at once, and a thread serialises and fsyncs it
  while training goes on (a synchronous write of a ResNet-18 SDCLR state took 0.09-0.3 s on this
  project's CPU machine, and design 5 saves every 2 epochs).
"""
import contextlib
import copy
import errno
import os
import re
import shutil
import sys
import threading

import numpy as np
import torch

from utils import InputError, WriteFailed

# Plain numpy arrays (data only; their contents go through the same restricted unpickler): the
# previous checkpoint format stored numpy's RNG state as one, and those runs must stay resumable.
NUMPY_ARRAYS = [(np._core if hasattr(np, '_core') else np.core).multiarray._reconstruct, np.ndarray, np.dtype,
                *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float32, np.float64)}]
SAFE_LOAD_ADVICE = ('if you trust the file, re-save what you need with plain torch types, e.g. '
                    "torch.save(torch.load(PATH, weights_only=False)['state_dict'], NEW_PATH)")
# The files a run and its tools write in its experiment folder (issue 20: never glob a user-supplied
# path; --overwrite deletes these and nothing else): checkpoints and their per-process temp files,
# the log, the history, test.py's results of its checkpoints and plot.py's pictures of the run.
CHECKPOINT_NAME = re.compile(r'model(_\d+)?\.pt')
RUN_FILE_NAME = re.compile(r'(model(_\d+)?\.pt|metrics\.jsonl|model(_\d+)?_results\.json)(\.\d+)?\.tmp'
                           r'|log\.txt|metrics\.jsonl|model(_\d+)?_results\.json|(loss_lr|probe|bcl_weights)\.png')


def temp_path(path):
    """The temp file beside `path` of this process: two processes never share one (issue 20)."""
    return f'{path}.{os.getpid()}.tmp'


def write_failure_reason(error, folder):
    """Why a write failed, in words: the OS's reason, or for torch's own writer (which reports a
    full disk as 'enforce fail at inline_container.cc...') what the folder's state says."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = ' '.join(str(error).split())
    if 'inline_container' not in text and 'PytorchStreamWriter' not in text:  # not torch's writer: its words
        return text[:160]
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < 2 ** 26:  # under 64 MB left
            return f'No space left on device ({stats.f_bavail * stats.f_frsize // 2 ** 20} MB free)'
    except OSError:
        pass
    if not os.access(folder, os.W_OK):
        return 'the folder is read-only or not writable'
    return 'the write failed: the disk may be full or read-only'


def save(state, path):
    """Write `state` to `path` atomically (a crash leaves the old file or the new one, never half)."""
    tmp = temp_path(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # the temp file never stays, whatever stopped the write
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(error, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            raise
        reason = write_failure_reason(error, os.path.dirname(os.path.abspath(path)))
        raise WriteFailed(f'could not write checkpoint {path} ({reason}); {os.path.basename(path)} there is '
                          f'unchanged') from None
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _fsync_folder(folder):
    """Make the rename durable. Some file systems (network, FUSE) cannot fsync a folder: the file
    itself is already complete and in place, so that is not an error."""
    try:
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise InputError(f'could not sync folder {folder} after writing a checkpoint ({error.strerror})') from None


def load(path, what='checkpoint'):
    """torch.load(path, weights_only=True) on the CPU, with one-line errors."""
    if not os.path.isfile(path):
        raise InputError(f'{what} {path} does not exist: check the path')
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAYS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        text = str(error)
        if 'unsupported global' in text.lower():  # a pickled Python object (a class, a function)
            raise InputError(f'{what} {path} holds Python objects beyond tensors and plain containers; '
                             f'refused, since loading it could run arbitrary code: {SAFE_LOAD_ADVICE}') from None
        reason = (text.splitlines() or [''])[0][:160]
        raise InputError(f'cannot read {what} {path} ({type(error).__name__}: {reason}): pass a file saved by '
                         'train.py / train_sdclr.py or a published checkpoint') from None


def _floating_tensors(obj, prefix=''):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix or 'tensor', obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _floating_tensors(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating_tensors(value, f'{prefix}.{i}' if prefix else str(i))


def non_finite(state):
    """Names of the floating tensors in `state` (nested dicts/lists) that hold NaN or inf.
    One host sync per device, however many tensors."""
    named = list(_floating_tensors(state))
    if not named:
        return []
    by_device = {}
    for i, (_, tensor) in enumerate(named):
        by_device.setdefault(tensor.device, []).append(i)
    bad = []
    for device, positions in by_device.items():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in positions]).cpu()
        bad += [positions[j] for j in (~flags).nonzero().flatten().tolist()]
    return [named[i][0] for i in sorted(bad)]


def to_host(state):
    """A copy of `state` (nested dicts/lists) whose tensors are CPU copies: training goes on
    changing the originals in place (weights, SGD buffers, momentum losses) while it is written.
    Containers keep their type, and a state_dict its `_metadata` (module versions that
    load_state_dict reads), so the file is byte for byte the one a synchronous save of the state
    on the CPU writes (tensors of a CUDA run are stored as CPU tensors; every reader here loads
    with map_location='cpu')."""
    if isinstance(state, torch.Tensor):
        return state.detach().to('cpu', copy=True)
    if isinstance(state, dict):
        copied = type(state)((key, to_host(value)) for key, value in state.items())
        if hasattr(state, '_metadata'):
            copied._metadata = copy.deepcopy(state._metadata)
        return copied
    if isinstance(state, (list, tuple)):
        return type(state)(to_host(value) for value in state)
    return state


class BackgroundWrite:
    """`save(state, path)` for each path, in order, in a thread; its failure is kept in `error`.
    The thread is not a daemon: an interpreter that exits still finishes the write."""

    def __init__(self, state, paths):
        self.error = None
        self.done = threading.Event()  # not Thread.join: an interrupted join can mark a live thread stopped
        self.thread = threading.Thread(target=self._write, args=(state, paths), name='checkpoint-write')
        self.thread.start()

    def _write(self, state, paths):
        try:
            for path in paths:
                save(state, path)
        except BaseException as error:  # raised in the training thread by Checkpoints.wait
            self.error = error
        finally:
            self.done.set()


def describe(names, limit=3):
    return ', '.join(names[:limit]) + (f' (+{len(names) - limit} more)' if len(names) > limit else '')


class Checkpoints:
    """The checkpoints of one experiment folder (design 5: `model.pt` every 2 epochs and after
    the last, `model_{epoch}.pt` every `save_freq` epochs; 0 = never). Only a process that
    `writes` (rank 0 of a distributed run) writes or removes files. Writes run in the background,
    one at a time, inside `writing()`."""

    def __init__(self, folder, save_freq, last_epoch, writes=True):
        self.folder, self.save_freq, self.last_epoch, self.writes = folder, save_freq, last_epoch, writes
        self.latest = os.path.join(folder, 'model.pt')
        self.newest_finite = None  # (path, epoch) of the newest checkpoint known to be finite and on disk
        self.pending = None  # (BackgroundWrite, paths, epoch) of the write in flight

    def _listed(self, pattern):
        """The folder's files whose whole name matches `pattern` (the folder is listed, never globbed:
        a run name may hold glob characters, issue 20)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(self.folder, name) for name in names
                      if pattern.fullmatch(name) and os.path.isfile(os.path.join(self.folder, name)))

    def existing(self):
        """The checkpoints a run wrote here: model.pt and model_{epoch}.pt."""
        return self._listed(CHECKPOINT_NAME)

    def refuse_fresh_run_over(self, experiment):
        """A fresh run must not replace a run's checkpoints (a resubmitted job would)."""
        found = self.existing()
        if found:
            named = self.latest if self.latest in found else found[-1]
            raise InputError(f'{self.folder} already holds {os.path.basename(named)}'
                             f'{f" and {len(found) - 1} more checkpoint(s)" if len(found) > 1 else ""}: '
                             f'continue it with --resume, or choose another experiment name than {experiment!r} '
                             f'(--overwrite deletes them and starts over there)')

    def remove_all(self):
        """--overwrite: start over in this folder. Deletes the files a run writes (checkpoints and
        their temp files, log, metrics, the TensorBoard folder) and nothing else."""
        if not self.writes:
            return
        for path in self.existing() + self._listed(RUN_FILE_NAME):
            os.remove(path)
        shutil.rmtree(os.path.join(self.folder, 'tensorboard'), ignore_errors=True)

    def resumed_from(self, path, epoch):
        self.newest_finite = (path, epoch)

    def newest_finite_text(self):
        if self.newest_finite is None:
            return 'no finite checkpoint of this run exists yet'
        path, epoch = self.newest_finite
        return f'the newest finite checkpoint, {path} (epoch {epoch}), is kept'

    def resume_advice(self, remedy='free space or fix permissions'):
        """How to go on after the run failed (`remedy` first): from the newest checkpoint, or from
        scratch when this run has none yet (then --resume would find nothing). A write in flight is
        waited for first, so that the checkpoint named is on disk."""
        self.wait_reporting()
        if self.newest_finite is None:
            return f'no checkpoint of this run exists yet: {remedy}, then start the run again (same command)'
        path, epoch = self.newest_finite
        return (f'the newest checkpoint, {path} (epoch {epoch}), is intact: {remedy}, then continue with '
                f'{self.resume_command()}')

    def resume_command(self):
        """The flags that continue the newest checkpoint on disk: --resume for this folder's model.pt."""
        path = self.latest if self.newest_finite is None else self.newest_finite[0]
        return '--resume' if path == self.latest else f'--resume --checkpoint {path}'

    def diverged(self, what):
        """The InputError of a run whose loss or state became non-finite (`what` says where)."""
        self.wait_reporting()  # the checkpoint it names is on disk; the divergence stays the error
        return InputError(f'training diverged: {what}; nothing was saved for it and {self.newest_finite_text()}. The '
                          f'run is deterministic, so --resume would diverge again: start a new experiment (or '
                          f'--overwrite) with a lower --lr')

    def check_finite(self, state, epoch, where):
        """InputError naming what is non-finite, the epoch and the newest finite checkpoint."""
        bad = non_finite(state)
        if bad:
            raise self.diverged(f'{len(bad)} tensor(s) are NaN or inf after {where} of epoch {epoch} ({describe(bad)})')

    def paths_due(self, epoch, probe_due):
        """The files to write at the end of `epoch`. model.pt also before every in-training probe, so
        that a failing or interrupted probe never costs training."""
        paths = []
        if epoch % 2 == 0 or epoch == self.last_epoch or probe_due:
            paths.append(self.latest)
        if self.save_freq and epoch % self.save_freq == 0:
            paths.append(os.path.join(self.folder, f'model_{epoch}.pt'))
        return paths

    def write(self, state, paths, epoch):
        """Start writing `state` (the state after `epoch`) to `paths`: once the previous write is
        on disk (its error is raised here), a CPU copy is taken and written in the background."""
        self.wait()
        if self.writes and paths:
            self.pending = (BackgroundWrite(to_host(state), paths), paths, epoch)
        else:
            self._written(paths, epoch)

    def wait(self):
        """Return once the write in flight is on disk; a failed write raises its one-line InputError
        (the file it would have replaced is intact)."""
        if self.pending is not None:
            writing, paths, epoch = self.pending
            writing.done.wait()  # a second Ctrl-C here leaves it pending: writing() waits again
            self.pending = None
            if isinstance(writing.error, WriteFailed):
                raise InputError(f'{writing.error}; {self.resume_advice()}') from None
            if writing.error is not None:
                raise writing.error
            self._written(paths, epoch)

    def wait_reporting(self):
        """wait() when the run already fails for another reason: a failed write is printed on its
        own line (`error: ...`) rather than raised in place of that reason."""
        try:
            self.wait()
        except Exception as write_error:
            print(f'error: {write_error}', file=sys.stderr)

    def _written(self, paths, epoch):
        if paths:  # model.pt when it is among them (what a plain --resume reads)
            self.newest_finite = (self.latest if self.latest in paths else paths[0], epoch)

    @contextlib.contextmanager
    def advising(self):
        """A failed write of the run's log or history (WriteFailed) becomes one line that says which
        checkpoint is intact and how to go on."""
        try:
            yield self
        except WriteFailed as error:
            raise InputError(f'{error}; {self.resume_advice()}') from None

    @contextlib.contextmanager
    def writing(self):
        """Every write started inside is on disk when this exits. When the run fails for another
        reason, that error is the one raised; a failed write is then printed on its own line."""
        try:
            yield self
        except BaseException:
            self.wait_reporting()
            raise
        self.wait()
