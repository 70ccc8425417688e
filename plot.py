"""Pictures of runs and results (issue 14), headless (matplotlib's Agg backend).

    python plot.py checkpoints/EXP [checkpoints/EXP2 ...]
        writes beside each run's metrics.jsonl: loss_lr.png (training loss and learning rate per
        epoch), probe.png (in-training full-shot probe: top-1 and Many/Medium/Few, if it ran) and,
        for BCL, bcl_weights.png (per class group of D_i: mean BCL weight and its 10-90% and 25-75%
        quantile bands per epoch).
    python plot.py RESULTS.json [RESULTS2.json ...] [--output per_class.png]
        writes per-class full-shot test accuracy against the class's image count in D_i (log
        scale; Many/Medium/Few shaded; each file one colour, with its group means), beside the
        first file unless --output says where.
"""
import os

import matplotlib
matplotlib.use('Agg')  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval_cifar import GROUPS, class_groups  # noqa: E402
from metrics import read_metrics  # noqa: E402
from utils import ArgumentParser, InputError, fail  # noqa: E402

FIGSIZE, DPI = (8, 5), 100  # every PNG is 800 x 500 pixels
GROUP_COLOURS = {'many': 'tab:blue', 'medium': 'tab:orange', 'few': 'tab:green'}


def plot_loss_lr(records, title):
    epochs = [r['epoch'] for r in records]
    fig, loss_axis = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    loss_axis.plot(epochs, [r['loss'] for r in records], color='tab:blue', label='loss')
    loss_axis.set_xlabel('epoch')
    loss_axis.set_ylabel('mean per-sample NT-Xent loss', color='tab:blue')
    lr_axis = loss_axis.twinx()
    lr_axis.plot(epochs, [r['lr'] for r in records], color='tab:red', label='learning rate')
    lr_axis.set_ylabel('learning rate (end of epoch)', color='tab:red')
    loss_axis.set_title(f'{title}: training loss and learning rate')
    return fig


def _epochs_with(records, key):
    """(the records that hold `key`, their epochs, a new figure and its axis), or None if none does."""
    holding = [r for r in records if key in r]
    if not holding:
        return None
    return (holding, [r['epoch'] for r in holding], *plt.subplots(figsize=FIGSIZE, dpi=DPI))


def _finish(fig, axis, ylabel, title):
    axis.set_xlabel('epoch')
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    return fig


def plot_probe(records, title):
    """None when no in-training probe ran."""
    found = _epochs_with(records, 'probe')
    if found is None:
        return None
    probed, epochs, fig, axis = found
    axis.plot(epochs, [r['probe']['top1'] for r in probed], 'k-o', label='all classes (top-1)')
    for group in GROUPS:
        axis.plot(epochs, [r['probe'][group] for r in probed], '-o', color=GROUP_COLOURS[group],
                  label=f'{group.capitalize()} classes')
    return _finish(fig, axis, 'full-shot linear probe top-1 accuracy (%)', f'{title}: in-training full-shot probe')


def plot_bcl_weights(records, title):
    """None for a run without BCL."""
    found = _epochs_with(records, 'bcl_weight')
    if found is None:
        return None
    weighted, epochs, fig, axis = found
    for group in GROUPS:
        present = [(e, r['bcl_weight'][group]) for e, r in zip(epochs, weighted) if r['bcl_weight'][group]]
        if not present:  # no sample of this group in D_i
            continue
        group_epochs, stats = zip(*present)
        colour = GROUP_COLOURS[group]
        axis.fill_between(group_epochs, [s['q10'] for s in stats], [s['q90'] for s in stats], color=colour, alpha=0.1)
        axis.fill_between(group_epochs, [s['q25'] for s in stats], [s['q75'] for s in stats], color=colour, alpha=0.25)
        axis.plot(group_epochs, [s['mean'] for s in stats], color=colour, label=f'{group.capitalize()} classes (mean)')
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
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f'wrote {path}')
    return path


def plot_run(folder):
    path = os.path.join(folder, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise InputError(f'{folder} has no metrics.jsonl: pass a run folder (checkpoints/EXP) written by '
                         f'train.py / train_sdclr.py')
    records = read_metrics(path)
    if not records:
        raise InputError(f'{path} holds no finished epoch yet')
    title = os.path.basename(os.path.normpath(folder))
    written = [save(plot_loss_lr(records, title), os.path.join(folder, 'loss_lr.png'))]
    for name, make in (('probe.png', plot_probe), ('bcl_weights.png', plot_bcl_weights)):
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
        if not result['fullshot'] or 'class_counts' not in result['fullshot']:
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
        written = [png for folder in runs for png in plot_run(folder)]
        if results:
            written += plot_results(results, args.output)
        return written
    except InputError as error:
        fail(str(error))


if __name__ == '__main__':
    main()
