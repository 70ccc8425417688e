"""The run's history: one JSON line per finished epoch in `metrics.jsonl` beside `log.txt`, and the
same scalars in TensorBoard with `--tensorboard`.

A line holds: epoch, loss (mean per-sample loss), lr (the last step's), time_s (training time of
the epoch), images_per_s, sparsity (SDCLR / BCL-D), probe {top1, top5, many, medium, few} when the
in-training probe ran, and for BCL bcl_weight {many, medium, few}: per class group of D_i (design
6's groups; null for a group without samples) the mean and the quantiles of the weights that epoch's update set (the ones the next
epoch augments with). A resumed run first drops the lines of the epochs it will run again, so every
epoch appears once. An epoch's line is written before its in-training probe and completed with the
probe's result afterwards.
"""
import contextlib
import json
import os
import sys

import numpy as np

from checkpoint import temp_path
from data.benchmarks import class_groups
from eval_cifar import GROUPS
from utils import InputError, WriteFailed

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
TENSORBOARD_HINT = '--tensorboard needs the tensorboard package: pip install tensorboard (or drop the flag)'


def check_tensorboard():
    """InputError before any work if --tensorboard cannot write."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise InputError(TENSORBOARD_HINT) from None


def bcl_weight_stats(weights, labels, class_counts):
    """{group: {'mean', 'q10', 'q25', 'q50', 'q75', 'q90'}} of the BCL weights of the samples whose
    class is in that group (design 6's Many/Medium/Few of D_i)."""
    weights, labels = np.asarray(weights, dtype=np.float64), np.asarray(labels)
    stats = {}
    for name, classes in zip(GROUPS, class_groups(class_counts)):
        w = weights[np.isin(labels, classes)]
        stats[name] = None if w.size == 0 else {  # None: no sample of the group in D_i (tiny splits only)
            'mean': float(w.mean()), **{f'q{round(100 * q)}': float(v) for q, v in zip(QUANTILES, np.quantile(w, QUANTILES))}}
    return stats


def _record(line):
    """The record a metrics.jsonl line holds: a JSON object with an integer `epoch`; else None."""
    try:
        record = json.loads(line.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get('epoch'), int) or isinstance(record['epoch'], bool):
        return None
    return record


def read_metrics(path):
    """The records of a metrics.jsonl, in file order. A line that is not a JSON object with an
    integer `epoch` (binary bytes, a hand edit, a truncated copy) is skipped, and the skipped
    lines are counted in one warning on stderr: the rest of the history still plots and resumes.
    A last line cut short (no final newline: a kill during its write) is dropped without a word."""
    with open(path, 'rb') as f:
        lines = f.read().split(b'\n')  # after a final newline, the last element is b''
    records, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is not None:
            records.append(record)
        elif number < len(lines):
            skipped.append(number)
    if skipped:
        print(f'warning: {path}: skipped {len(skipped)} unreadable line(s) (first: line {skipped[0]})',
              file=sys.stderr)
    return records


def _scalars(record, prefix=''):
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _scalars(value, f'{prefix}{key}/')
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != 'epoch':
            yield f'{prefix}{key}', value


class MetricsLog:
    """Appends one line per epoch to FOLDER/metrics.jsonl (and to TensorBoard in FOLDER/tensorboard);
    does nothing when not `enabled` (ranks other than 0 of a distributed run).

    A resumed run keeps the lines of the epochs before `first_epoch`, from this folder's history or,
    when it continues another folder's checkpoint, from `history_from` (that folder). An epoch's line
    is written when the epoch ends, before its in-training probe, and `add_probe` adds the probe's
    result to it afterwards (a kill during the probe loses nothing but the probe; issue 20). Rewrites
    are atomic (temp file, rename); a failed write is a one-line WriteFailed.
    """

    def __init__(self, folder, first_epoch, tensorboard=False, enabled=True, history_from=None):
        self.path, self.enabled, self.records, self.writer = os.path.join(folder, 'metrics.jsonl'), enabled, [], None
        if not enabled:
            return
        source = os.path.join(history_from, 'metrics.jsonl') if history_from else self.path
        if os.path.exists(source):
            self.records = [r for r in read_metrics(source) if r['epoch'] < first_epoch]
            self._rewrite()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(folder, 'tensorboard'), purge_step=first_epoch)

    def _rewrite(self):
        tmp = temp_path(self.path)
        try:
            with open(tmp, 'w') as f:
                f.writelines(json.dumps(r) + '\n' for r in self.records)
            os.replace(tmp, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise WriteFailed(f'could not write {self.path} ({error.strerror or error})') from None

    def record(self, epoch):
        """The line of `epoch` (a dict), or None."""
        return next((r for r in self.records if r['epoch'] == epoch), None)

    def append(self, record):
        if not self.enabled:
            return
        try:
            with open(self.path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as error:
            raise WriteFailed(f'could not write {self.path} ({error.strerror or error})') from None
        self.records.append(record)
        self._scalars(record['epoch'], record)

    def add_probe(self, epoch, probe):
        """Add the in-training probe's result to the line of `epoch` (already written)."""
        if not self.enabled:
            return
        self.record(epoch)['probe'] = probe
        self._rewrite()
        self._scalars(epoch, {'probe': probe})

    def _scalars(self, epoch, record):
        if self.writer is not None:
            for name, value in _scalars(record):
                self.writer.add_scalar(name, value, epoch)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
