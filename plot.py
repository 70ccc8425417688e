"""Pictures of runs and results (issue 14), headless (matplotlib's Agg backend).

    python plot.py checkpoints/EXP [checkpoints/EXP2 ...]
        writes beside each run's metrics.jsonl: loss_lr.png (training loss and learning rate per
        epoch), probe.png (in-training full-shot probe: top-1 and Many/Medium/Few, if it ran) and,
        for BCL, bcl_weights.png (per class group of D_i: mean BCL weight and its 10-90% and 25-75%
        quantile bands per epoch).
    python plot.py RESULTS.json [RESULTS2.json ...] [--output per_class.png]
        writes per-class full-shot test accuracy against the class's image count in D_i (log
        scale; Many/Medium/Few shaded; each file one colour, with its group means), beside the
        first file unless --output says where (a .png in an existing folder, checked before plotting).

Unreadable metrics lines are skipped with one warning (metrics.read_metrics), an epoch written twice
is plotted from its last line with one warning, and a field missing from some lines leaves out those
points (or that series, or that plot): the rest of the history is drawn. Errors are one line.
"""
import collections
import numbers
import os
import sys

import matplotlib
matplotlib.use('Agg')  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.benchmarks import class_groups
from eval_cifar import GROUPS  # noqa: E402
from metrics import read_metrics  # noqa: E402
from utils import ArgumentParser, InputError, fail  # noqa: E402

FIGSIZE, DPI = (8, 5), 100  # every PNG is 800 x 500 pixels
GROUP_COLOURS = {'many': 'tab:blue', 'medium': 'tab:orange', 'few': 'tab:green'}


def _number(record, *keys):
    """record[k1][k2]... if it is a real number, else None: a field missing or malformed in some
    lines (older versions, hand edits) leaves out those points, not the plot."""
    value = record
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def series(records, *fields):
    """(epochs, one list of values per field) over the records holding a number at every field
    (a field: a tuple of nested keys, e.g. ('probe', 'top1'))."""
    rows = [(r['epoch'], [_number(r, *field) for field in fields]) for r in records]
    rows = [(epoch, values) for epoch, values in rows if None not in values]
    return [epoch for epoch, _ in rows], [[values[i] for _, values in rows] for i in range(len(fields))]


def plot_loss_lr(records, title):
    """None if no line holds a loss or a learning rate; a series no line holds is left out."""
    loss_epochs, (loss,) = series(records, ('loss',))
    lr_epochs, (lr,) = series(records, ('lr',))
    if not loss_epochs and not lr_epochs:
        return None
    fig, loss_axis = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    loss_axis.set_xlabel('epoch')
    if loss_epochs:
        loss_axis.plot(loss_epochs, loss, color='tab:blue', label='loss')
        loss_axis.set_ylabel('mean per-sample NT-Xent loss', color='tab:blue')
    if lr_epochs:
        lr_axis = loss_axis.twinx()
        lr_axis.plot(lr_epochs, lr, color='tab:red', label='learning rate')
        lr_axis.set_ylabel('learning rate (end of epoch)', color='tab:red')
    loss_axis.set_title(f'{title}: training loss and learning rate')
    return fig


def _finish(fig, axis, ylabel, title):
    axis.set_xlabel('epoch')
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    return fig


def plot_probe(records, title):
    """None when no in-training probe ran; a probe value missing from a line leaves out that point."""
    lines = [(series(records, ('probe', 'top1')), 'k-o', {}, 'all classes (top-1)')]
    lines += [(series(records, ('probe', group)), '-o', {'color': GROUP_COLOURS[group]},
               f'{group.capitalize()} classes') for group in GROUPS]
    lines = [line for line in lines if line[0][0]]
    if not lines:
        return None
    fig, axis = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for (epochs, (values,)), style, colour, label in lines:
        axis.plot(epochs, values, style, label=label, **colour)
    return _finish(fig, axis, 'full-shot linear probe top-1 accuracy (%)', f'{title}: in-training full-shot probe')


def plot_bcl_weights(records, title):
    """None for a run without BCL. Per class group: the 10-90% and 25-75% quantile bands and the
    mean line, each from the lines that hold it (a group without samples in D_i is null: not drawn)."""
    parts = []  # (group, epochs, values, band alpha or None for the mean line)
    for group in GROUPS:
        stats = ('bcl_weight', group)
        for low, high, alpha in (('q10', 'q90', 0.1), ('q25', 'q75', 0.25)):
            parts.append((group, *series(records, (*stats, low), (*stats, high)), alpha))
        parts.append((group, *series(records, (*stats, 'mean')), None))
    parts = [part for part in parts if part[1]]
    if not parts:
        return None
    fig, axis = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for group, epochs, values, alpha in parts:
        if alpha is None:
            axis.plot(epochs, values[0], color=GROUP_COLOURS[group], label=f'{group.capitalize()} classes (mean)')
        else:
            axis.fill_between(epochs, *values, color=GROUP_COLOURS[group], alpha=alpha)
    axis.set_ylim(0, 1)
    return _finish(fig, axis, 'BCL weight w (bands: 25-75% and 10-90% quantiles)',
                   f'{title}: memorisation weight per class group of D_i')


def plot_per_class(results, labels):
    """results: test.py results dicts with a full-shot probe; one colour per file."""
    fig, axis = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    counts = np.asarray(results[0]['fullshot']['class_counts'])
    for group, classes in zip(GROUPS, class_groups(counts)):
        low, high = counts[classes].min(), counts[classes].max()
        axis.axvspan(low * 0.95, high * 1.05, color=GROUP_COLOURS[group], alpha=0.12, label=f'{group.capitalize()}')
    for result, label, colour in zip(results, labels, plt.rcParams['axes.prop_cycle'].by_key()['color'][3:] * 9):
        full = result['fullshot']
        axis.scatter(full['class_counts'], full['per_class'], s=12, color=colour,
                     label=f'{label}: top-1 {full["top1"]:.1f}')
        for group, classes in zip(GROUPS, class_groups(full['class_counts'])):
            span = np.asarray(full['class_counts'])[classes]
            axis.hlines(full[group], span.min(), span.max(), color=colour, linewidth=2)
    axis.set_xscale('log')
    axis.set_xlabel('images of the class in the pre-training split D_i (log scale)')
    axis.set_ylabel('full-shot test accuracy of the class (%)')
    axis.set_title('per-class linear-probe accuracy against class frequency (lines: group means)')
    axis.legend(fontsize='small')
    return fig


def save(fig, path):
    """Write `fig` as PNG to `path` (named .png by the caller: matplotlib would add .png to a name
    without it) and print the path written."""
    try:
        fig.savefig(path, dpi=DPI, format='png')
    except OSError as error:
        raise InputError(f'cannot write {path} ({error.strerror or error}): free space or fix the '
                         'permissions') from None
    finally:
        plt.close(fig)
    print(f'wrote {path}')
    return path


def check_png_output(output):
    """Fail before plotting if --output cannot be the PNG written."""
    if not output.lower().endswith('.png'):
        raise InputError(f'--output {output}: the plot is a PNG, pass a path ending in .png')
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise InputError(f'--output {output}: folder {folder} does not exist: create it or pass another path')
    if not os.access(folder, os.W_OK):
        raise InputError(f'--output {output}: folder {folder} is not writable: pass another path')


def latest_per_epoch(records, path):
    """One record per epoch, in epoch order: the last line of an epoch written twice (a copy of two
    histories, a resume by an older version), with one warning."""
    counts = collections.Counter(r['epoch'] for r in records)
    duplicated = sum(1 for n in counts.values() if n > 1)
    if duplicated:
        print(f'warning: {path}: {duplicated} duplicated epoch(s), plotted the last record of each', file=sys.stderr)
    last = {r['epoch']: r for r in records}
    return [last[epoch] for epoch in sorted(last)]


def plot_run(folder):
    path = os.path.join(folder, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise InputError(f'{folder} has no metrics.jsonl: pass a run folder (checkpoints/EXP) written by '
                         f'train.py / train_sdclr.py')
    records = latest_per_epoch(read_metrics(path), path)
    if not records:
        raise InputError(f'{path} holds no finished epoch yet')
    title = os.path.basename(os.path.normpath(folder))
    written = []
    for name, make in (('loss_lr.png', plot_loss_lr), ('probe.png', plot_probe), ('bcl_weights.png', plot_bcl_weights)):
        fig = make(records, title)
        if fig is not None:
            written.append(save(fig, os.path.join(folder, name)))
    return written


def plot_results(paths, output=None):
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location('bcl_test_script', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                      'test.py'))
    test_script = module_from_spec(spec)
    spec.loader.exec_module(test_script)
    results = [test_script.read_results(p) for p in paths]
    for path, result in zip(paths, results):
        if not result['fullshot'] or 'per_class' not in result['fullshot']:  # read_results checked the lists
            raise InputError(f'{path} has no full-shot result with class counts: evaluate with '
                             f'test.py --test_fullshot (a current version)')
    labels = [f'{r["method"]} ({os.path.basename(p)})' for r, p in zip(results, paths)]
    output = output or os.path.join(os.path.dirname(os.path.abspath(paths[0])), 'per_class_accuracy.png')
    return [save(plot_per_class(results, labels), output)]


def main(argv=None):
    parser = ArgumentParser(description='PNG plots of training runs (folders) and test.py results (.json files).')
    parser.add_argument('paths', nargs='+', help='run folders (checkpoints/EXP) and/or test.py results files')
    parser.add_argument('--output', default=None, help='PNG for the results plot (default: beside the first file)')
    args = parser.parse_args(argv)
    try:
        runs = [p for p in args.paths if os.path.isdir(p)]
        results = [p for p in args.paths if not os.path.isdir(p)]
        missing = [p for p in results if not os.path.isfile(p)]
        if missing:
            raise InputError(f'{missing[0]} does not exist: pass run folders or test.py results files')
        if args.output is not None:
            if not results:
                raise InputError('--output names the per-class plot of results files: pass test.py results files too')
            check_png_output(args.output)
        written = [png for folder in runs for png in plot_run(folder)]
        if results:
            written += plot_results(results, args.output)
        return written
    except InputError as error:
        fail(str(error))


if __name__ == '__main__':
    main()
