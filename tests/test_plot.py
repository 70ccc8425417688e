"""Run history and plots (issue 14): metrics.jsonl after a run and after a resume, the BCL weight
statistics against an independent computation, every plot's PNG and the arrays it draws."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import plot
import train
from data.cifar100 import load_cifar
from data.benchmarks import class_groups
from metrics import QUANTILES, MetricsLog, read_metrics
from test_train import tiny_split


@pytest.fixture(scope='module')
def bcl_run(synthetic_cifar, synthetic_splits, tmp_path_factory):
    """BCL-I, 32 samples, 3 epochs, a checkpoint every epoch; then the same run again, resumed
    from its epoch-1 checkpoint into the same folder (epochs 2 and 3 are trained twice)."""
    folder = tmp_path_factory.mktemp('plot_run')
    split = tiny_split(synthetic_splits, 32)
    argv = ['BCL_I', '--bcl', '--rand_k', '1', '--epochs', '3', '--batch_size', '16', '--num_workers', '0',
            '--gpus', 'cpu', '--data_folder', synthetic_cifar, '--trainSplit', split, '--save_dir', str(folder),
            '--eval_freq', '0', '--save_freq', '1']
    train.main(argv)
    straight = read_metrics(folder / 'BCL_I' / 'metrics.jsonl')
    train.main(argv + ['--resume', '--checkpoint', str(folder / 'BCL_I' / 'model_1.pt')])
    return folder / 'BCL_I', straight, split


def test_metrics_lines_after_a_run_and_after_a_resume(bcl_run, synthetic_cifar, synthetic_splits):
    run, straight, split = bcl_run
    records = read_metrics(run / 'metrics.jsonl')
    assert [r['epoch'] for r in straight] == [1, 2, 3]
    assert [r['epoch'] for r in records] == [1, 2, 3]  # epochs 2, 3 replaced, not duplicated
    for before, after in zip(straight, records):  # the resumed run is the same run
        assert before['loss'] == after['loss'] and before['lr'] == after['lr']
        assert before['bcl_weight'] == after['bcl_weight']
    log = (run / 'log.txt').read_text().splitlines()
    for record in records:
        assert record['time_s'] > 0 and record['images_per_s'] == pytest.approx(32 / record['time_s'])
        line = [x for x in log if x.startswith(f'epoch {record["epoch"]}/3 ')][-1]
        assert f'loss {record["loss"]:.4f}' in line and f'lr {record["lr"]:.6g}' in line
        assert 'probe' not in record and 'sparsity' not in record

    # the weights of epoch 3's update, per class group of D_i, computed here from the checkpoint
    weights = torch.load(run / 'model_3.pt', weights_only=True)['momentum_weight'].numpy()
    _, labels = load_cifar(synthetic_cifar, train=True)
    split_root, _ = synthetic_splits
    labels = labels[np.load(f'{split_root}/{split}')]
    counts = np.bincount(labels, minlength=100)
    for group, classes in zip(('many', 'medium', 'few'), class_groups(counts)):
        w = weights[np.isin(labels, classes)]
        stats = records[-1]['bcl_weight'][group]
        if w.size == 0:  # 32 samples: a group can be empty
            assert stats is None
            continue
        assert stats['mean'] == pytest.approx(w.mean())
        assert [stats[f'q{round(100 * q)}'] for q in QUANTILES] == pytest.approx(np.quantile(w, QUANTILES))


def png_size(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        return image.size


def test_run_plots_are_pngs_of_the_metrics(bcl_run):
    run, _, _ = bcl_run
    written = plot.main([str(run)])
    assert sorted(written) == sorted([str(run / 'loss_lr.png'), str(run / 'bcl_weights.png')])  # no probe ran
    assert all(png_size(run / name) == (800, 500) for name in ('loss_lr.png', 'bcl_weights.png'))

    records = read_metrics(run / 'metrics.jsonl')
    fig = plot.plot_loss_lr(records, 'run')
    loss_axis, lr_axis = fig.axes
    assert list(loss_axis.lines[0].get_xdata()) == [1, 2, 3]
    assert list(loss_axis.lines[0].get_ydata()) == [r['loss'] for r in records]
    assert list(lr_axis.lines[0].get_ydata()) == [r['lr'] for r in records]
    fig = plot.plot_bcl_weights(records, 'run')
    means = [list(line.get_ydata()) for line in fig.axes[0].lines]
    present = [g for g in ('many', 'medium', 'few') if records[0]['bcl_weight'][g]]
    assert means == [[r['bcl_weight'][g]['mean'] for r in records] for g in present] and means


def test_probe_plot_draws_the_probe_results():
    records = [{'epoch': e, 'loss': 5.0, 'lr': 0.1} for e in (1, 2, 3)]
    assert plot.plot_probe(records, 'x') is None  # no probe ran
    records[1]['probe'] = {'top1': 40.0, 'top5': 70.0, 'many': 50.0, 'medium': 40.0, 'few': 30.0}
    records[2]['probe'] = {'top1': 45.0, 'top5': 72.0, 'many': 52.0, 'medium': 46.0, 'few': 37.0}
    fig = plot.plot_probe(records, 'x')
    lines = fig.axes[0].lines
    assert [list(line.get_xdata()) for line in lines] == [[2, 3]] * 4
    assert [list(line.get_ydata()) for line in lines] == [[40.0, 45.0], [50.0, 52.0], [40.0, 46.0], [30.0, 37.0]]


def test_per_class_plot_of_results_files(tmp_path):
    rng = np.random.default_rng(0)
    counts = np.floor(450 * 0.01 ** (rng.permutation(100) / 99)).astype(int)
    paths = []
    for k, method in enumerate(('SimCLR', 'BCL-I')):
        per_class = rng.uniform(0, 100, 100)
        groups = {g: float(per_class[c].mean()) for g, c in zip(('many', 'medium', 'few'), class_groups(counts))}
        result = {'method': method, 'model': 'SimCLR', 'probe_epochs': 500, '100shot': None, '50shot': None,
                  'fullshot': {'top1': float(per_class.mean()), 'top5': 90.0, **groups, 'std': 1.0,
                               'per_class': per_class.tolist(), 'class_counts': counts.tolist()}}
        paths.append(tmp_path / f'{method}.json')
        paths[-1].write_text(json.dumps(result))
    assert plot.main([str(p) for p in paths]) == [str(tmp_path / 'per_class_accuracy.png')]
    assert png_size(tmp_path / 'per_class_accuracy.png') == (800, 500)

    results = [json.loads(p.read_text()) for p in paths]
    fig = plot.plot_per_class(results, ['a', 'b'])
    axis = fig.axes[0]
    assert axis.get_xscale() == 'log'
    scatters = [c for c in axis.collections if c.get_offsets().shape[0] == 100]  # one per file
    assert len(scatters) == 2
    for scatter, result in zip(scatters, results):
        np.testing.assert_array_equal(scatter.get_offsets(), np.stack([counts, result['fullshot']['per_class']], 1))


def test_plot_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (f'error: {tmp_path} has no metrics.jsonl: pass a run folder '
                                               f'(checkpoints/EXP) written by train.py / train_sdclr.py')


def test_tensorboard_flag(bcl_run, synthetic_cifar, tmp_path, capsys):
    run, _, split = bcl_run
    argv = ['tb', '--epochs', '1', '--batch_size', '16', '--num_workers', '0', '--gpus', 'cpu', '--eval_freq', '0',
            '--data_folder', synthetic_cifar, '--trainSplit', split, '--save_dir', str(tmp_path), '--tensorboard']
    if importlib.util.find_spec('tensorboard') is None:
        with pytest.raises(SystemExit):
            train.main(argv)
        assert capsys.readouterr().err.strip() == ('error: --tensorboard needs the tensorboard package: '
                                                   'pip install tensorboard (or drop the flag)')
        assert not (tmp_path / 'tb').exists()  # refused before any work
    else:  # the same scalars as metrics.jsonl
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        train.main(argv)
        events = EventAccumulator(str(tmp_path / 'tb' / 'tensorboard'))
        events.Reload()
        (record,) = read_metrics(tmp_path / 'tb' / 'metrics.jsonl')
        assert {'loss', 'lr', 'time_s', 'images_per_s'} <= set(events.Tags()['scalars'])
        (loss,) = events.Scalars('loss')
        assert loss.step == 1 and loss.value == pytest.approx(record['loss'], rel=1e-6)


# ----------------------------------------------------------------------------- issue 20.10: robustness

def run_plot(argv, capsys):
    """plot.main's return value (or its SystemExit), stdout lines and stderr lines."""
    try:
        result = plot.main(argv)
    except SystemExit as exit_info:
        result = exit_info
    out, err = capsys.readouterr()
    return result, out.splitlines(), err.splitlines()


def write_metrics(folder, lines):
    folder.mkdir(exist_ok=True)
    path = folder / 'metrics.jsonl'
    path.write_bytes(b''.join(line if isinstance(line, bytes) else (json.dumps(line) + '\n').encode()
                              for line in lines))
    return path


def test_bad_metrics_lines_are_skipped_and_counted_once(tmp_path, capsys):
    """A non-object line, lines without an integer epoch, binary bytes and non-JSON: skipped, one
    warning; the cut-short last line silently. plot.py plots the rest, and a resume keeps it."""
    path = write_metrics(tmp_path / 'run', [
        {'epoch': 1, 'loss': 5.0, 'lr': 0.1}, [1, 2], {'loss': 4.0}, b'\xff\xfe\x00\x81 binary\n', b'not json\n',
        {'epoch': '2'}, {'epoch': True}, b'\n', {'epoch': 2, 'loss': 4.5, 'lr': 0.05}, b'{"epoch": 3, "lo'])
    assert [r['epoch'] for r in read_metrics(path)] == [1, 2]
    assert capsys.readouterr().err.splitlines() == [f'warning: {path}: skipped 6 unreadable line(s) (first: line 2)']

    written, out, err = run_plot([str(tmp_path / 'run')], capsys)
    assert written == [str(tmp_path / 'run' / 'loss_lr.png')] and out == [f'wrote {written[0]}']
    assert err == [f'warning: {path}: skipped 6 unreadable line(s) (first: line 2)']
    assert png_size(tmp_path / 'run' / 'loss_lr.png') == (800, 500)

    MetricsLog(str(tmp_path / 'run'), first_epoch=2).close()  # what train.py --resume from epoch 1 does
    assert read_metrics(path) == [{'epoch': 1, 'loss': 5.0, 'lr': 0.1}]
    assert capsys.readouterr().err.count('warning:') == 1  # the resume's read; the rewritten file is clean


def test_duplicated_epochs_plot_the_last_record_with_a_warning(tmp_path, capsys):
    epochs = ((1, 5.0), (2, 4.0), (3, 3.0), (2, 4.4), (3, 3.3), (4, 2.0))  # 2 and 3 written twice
    path = write_metrics(tmp_path / 'run', [{'epoch': e, 'loss': loss, 'lr': 0.1} for e, loss in epochs])
    written, _, err = run_plot([str(tmp_path / 'run')], capsys)
    assert written == [str(tmp_path / 'run' / 'loss_lr.png')]
    assert err == [f'warning: {path}: 2 duplicated epoch(s), plotted the last record of each']
    records = plot.latest_per_epoch(read_metrics(path), path)
    loss_axis = plot.plot_loss_lr(records, 'run').axes[0]
    assert list(loss_axis.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert list(loss_axis.lines[0].get_ydata()) == [5.0, 4.4, 3.3, 2.0]


def test_missing_fields_plot_what_is_there(tmp_path, capsys):
    """No lr at all, a probe without 'many', a BCL group without q10: those points or series are left
    out, every other one is drawn."""
    probe = {'top1': 40.0, 'top5': 70.0, 'many': 50.0, 'medium': 40.0, 'few': 30.0}
    stats = {'mean': 0.5, 'q10': 0.1, 'q25': 0.3, 'q50': 0.5, 'q75': 0.7, 'q90': 0.9}
    without_q10 = {k: v for k, v in stats.items() if k != 'q10'}
    lines = [{'epoch': 1, 'loss': 5.0, 'probe': {k: v for k, v in probe.items() if k != 'many'},
              'bcl_weight': {'many': without_q10, 'medium': None, 'few': stats}},
             {'epoch': 2, 'loss': 4.0, 'probe': probe, 'bcl_weight': {'many': stats, 'medium': None}}]
    folder = tmp_path / 'run'
    write_metrics(folder, lines)
    written, _, err = run_plot([str(folder)], capsys)
    assert sorted(written) == sorted(str(folder / n) for n in ('loss_lr.png', 'probe.png', 'bcl_weights.png'))
    assert err == []

    records = read_metrics(folder / 'metrics.jsonl')
    fig = plot.plot_loss_lr(records, 'run')
    assert len(fig.axes) == 1 and list(fig.axes[0].lines[0].get_ydata()) == [5.0, 4.0]  # no lr axis
    lines = plot.plot_probe(records, 'run').axes[0].lines
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [2], [1, 2], [1, 2]]  # top1, many, medium, few
    axis = plot.plot_bcl_weights(records, 'run').axes[0]
    assert [list(line.get_xdata()) for line in axis.lines] == [[1, 2], [1]]  # means of many, few
    assert len(axis.collections) == 4  # many: 10-90% at epoch 2 only, 25-75%; few: both bands
    assert plot.plot_loss_lr([{'epoch': 1}], 'run') is None and plot.plot_bcl_weights(records[:0], 'run') is None


def results_file(path, per_class, counts):
    full = {'top1': float(np.mean(per_class)), 'top5': 90.0, 'many': 50.0, 'medium': 40.0, 'few': 30.0, 'std': 8.2,
            'per_class': per_class, 'class_counts': counts}
    path.write_text(json.dumps({'method': 'SimCLR', 'model': 'SimCLR', 'probe_epochs': 500, 'fullshot': full,
                                '100shot': None, '50shot': None}))
    return str(path)


def test_malformed_per_class_results_are_one_line_errors(tmp_path, capsys):
    for name, per_class, counts in (('short', [50.0] * 99, [10] * 100), ('text', [50.0] * 100, ['10'] * 100)):
        path = results_file(tmp_path / f'{name}.json', per_class, counts)
        result, out, err = run_plot([path], capsys)
        assert isinstance(result, SystemExit) and result.code == 1 and out == []
        assert len(err) == 1 and err[0].startswith(f'error: {path} is not a test.py results file ("fullshot" '), err
    assert not (tmp_path / 'per_class_accuracy.png').exists()


def test_output_is_the_png_written_or_a_one_line_error(tmp_path, capsys):
    path = results_file(tmp_path / 'r.json', [50.0] * 100, list(range(100)))
    for output, message in ((tmp_path / 'plot', 'the plot is a PNG, pass a path ending in .png'),
                            (tmp_path / 'plot.jpg', 'the plot is a PNG, pass a path ending in .png'),
                            (tmp_path / 'nowhere' / 'p.png', f'folder {tmp_path / "nowhere"} does not exist')):
        result, out, err = run_plot([path, '--output', str(output)], capsys)
        assert isinstance(result, SystemExit) and result.code == 1 and out == []
        assert err == [f'error: --output {output}: {message}' + ('' if 'PNG' in message else
                                                                   ': create it or pass another path')]
    result, _, err = run_plot([str(tmp_path), '--output', str(tmp_path / 'p.png')], capsys)  # a run folder only
    assert err == ['error: --output names the per-class plot of results files: pass test.py results files too']
    assert sorted(os.listdir(tmp_path)) == ['r.json']  # nothing written
    written, out, err = run_plot([path, '--output', str(tmp_path / 'p.PNG')], capsys)
    assert written == [str(tmp_path / 'p.PNG')] and out == [f'wrote {tmp_path / "p.PNG"}'] and err == []
    assert png_size(tmp_path / 'p.PNG') == (800, 500)
