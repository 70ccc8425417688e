"""The GPU report's tables (issue 21): markdown rendered from a report.json written by
benchmarks/gpu_check.py, and the README's GPU section rewritten from a committed one, so that no
number there is typed by hand.

    python benchmarks/report.py benchmarks/results/gpu_report.json                 # print the markdown
    python benchmarks/report.py benchmarks/results/gpu_report.json --readme README.md   # rewrite the section
    python benchmarks/report.py --legacy benchmarks/results/h100_simclr_bcl_i.json \\
      benchmarks/results/h100_sdclr_bcl_d.json benchmarks/results/h100_eval.json \\
      --write benchmarks/results/gpu_report.json    # a report from bench.py JSON of before the honest baseline

The README section lies between the two MARKERS; tests/test_bench.py checks that it equals what
the committed report renders.

`--legacy`: the H100 runs of issue 6 timed the published loop in exact float32 only, not the
honest baseline (the published loop with torch's defaults: TF32 convolutions, float32 matmuls).
That baseline does at least the work of our `--tf32` row (the same convolutions, plus float32
matmuls, the per-sample momentum loop, its host syncs and history buffer; loader workers
re-created each epoch in both), so it runs at most as fast: a row's images/s over the `--tf32`
row's is a LOWER BOUND on its speed-up against the honest baseline. Rows slower than that bound
get no ratio (re-measure with gpu_check.py). The parts that never ran on a GPU are recorded as
not yet measured.
"""
import argparse
import json
import os
import sys

MARKERS = ('<!-- gpu-report:begin -->', '<!-- gpu-report:end -->')
RUN_IT = '`python benchmarks/gpu_check.py --output DIR`'
GOAL = dict(method='BCL-D', minutes=30, speedup=5)  # the project's goal line (issue 21)
EPOCHS = 2000
PART_TITLES = {
    'cuda_tests': 'CUDA half of the test suite', 'quick_start': 'README quick start', 'training': 'training benchmark',
    'device_augment': '--gpu_aug augmentation alone', 'checkpoint': 'background checkpoint write',
    'torchrun': 'torchrun --nproc_per_node 1 (NCCL) vs plain run', 'test_py': 'test.py on a checkpoint',
    'probe': 'in-training probe', 'sdclr_probe': 'test.py --protocol sdclr probe vs the published loop',
    'eval': 'test.py evaluation (bench.py)', 'loader': 'loader ceiling',
    'imagenet': 'ImageNet-100-LT at 224 px (ResNet-50)'}
LATER_PARTS = ('imagenet',)  # gpu_check.py parts newer than some reports: shown there as not yet measured
CONFIG_NAMES = {'baseline': 'published loop, torch defaults (TF32 conv.)',
                'baseline_fp32': 'published loop, exact float32 (second reference)',
                'default': 'default (exact float32)', 'persistent': '`--persistent_workers`',
                'cudnn_benchmark': '`--cudnn_benchmark`', 'tf32': '`--tf32`', 'bf16': '`--amp bf16`',
                'channels_last': '`--channels_last`', 'compile': '`--compile`', 'gpu_aug': '`--gpu_aug`',
                'all': 'every flag', 'all_gpu_aug': 'every flag + `--gpu_aug`'}


# ----------------------------------------------------------------------------- ratios

def speedups(rows, reference, lower_bound=False):
    """Each training row's images/s over its method's `reference` row: {'speedup', 'speedup_kind'}
    added in place ('measured' or 'lower bound'; no ratio below 1 for a bound, which says nothing)."""
    for row in rows:
        ref = next((r for r in rows if r['method'] == row['method'] and r['config'] == reference), None)
        value = row['images_per_s'] / ref['images_per_s'] if ref else None
        if lower_bound and value is not None and value < 1:
            value = None
        row['speedup'], row['speedup_kind'] = value, ('lower bound' if lower_bound else 'measured') if value else None
    return rows


def goal_line(report):
    """The goal (BCL-D 2000 epochs + test.py within 30 minutes on one GPU, >= 5x the honest
    baseline) against the report's figures: the fastest BCL-D row, extrapolated."""
    training = figures(report, 'training')
    rows = [r for r in training.get('rows', []) if r['method'] == GOAL['method']]
    if not rows:
        return f'Goal ({GOAL["method"]}): not yet measured: run {RUN_IT}.'
    best = min(rows, key=lambda r: r['epoch_s_extrapolated'])
    test_s = figures(report, 'test_py').get('seconds') or figures(report, 'eval').get('ours_total_s')
    minutes = EPOCHS * best['epoch_s_extrapolated'] / 60 + (test_s or 0) / 60
    ratio = (f'{"at least " if best["speedup_kind"] == "lower bound" else ""}{best["speedup"]:.2f}x'
             if best['speedup'] else 'not known')
    verdict = 'met' if minutes <= GOAL['minutes'] and best['speedup_kind'] == 'measured' and \
        best['speedup'] >= GOAL['speedup'] else 'not met'
    return (f'Goal: {GOAL["method"]} {EPOCHS} epochs + test.py within {GOAL["minutes"]} min on one GPU, at least '
            f'{GOAL["speedup"]}x the honest baseline. EXTRAPOLATED from this report: {minutes:.0f} min '
            f'({CONFIG_NAMES.get(best["config"], best["config"])}: {EPOCHS} x {best["epoch_s_extrapolated"]:.2f} s'
            f' + test.py {test_s or 0:.1f} s), {ratio} the honest baseline: {verdict}'
            f'{"" if test_s else " (test.py not measured)"}.')


def figures(report, name):
    part = next((p for p in report['parts'] if p['name'] == name), None)
    return part['figures'] if part and part['status'] != 'not measured' else {}


# ----------------------------------------------------------------------------- markdown

def with_later_parts(report):
    """The report's parts, then each of LATER_PARTS it lacks (made before gpu_check.py had it), not measured."""
    names = {p['name'] for p in report['parts']}
    return report['parts'] + [not_measured(name, 'gpu_check.py had no such part when this report was made')
                              for name in LATER_PARTS if name not in names]


def render(report):
    """The report's markdown: the machine, the parts' status, then each part's table."""
    parts = with_later_parts(report)
    m = report['machine']
    lines = [f'GPU report: {m["gpu"]}, torch {m["torch"]}, CUDA {m["cuda"]}, cuDNN {m["cudnn"]}; '
             f'{report["started"]}. Produced by `{report["command"]}`, rendered from `{report["file"]}` by '
             f'`python benchmarks/report.py`.', '', report['note'], '',
             '| part | status | seconds | budget s |', '|---|---|---|---|']
    for p in parts:
        status = p['status'] if p['status'] in ('passed', 'measured') else f'**{p["status"]}**'
        seconds = f'{p["seconds"]:.0f}' if p.get('seconds') is not None else '-'
        lines.append(f'| {PART_TITLES[p["name"]]} | {status} | {seconds} | {p.get("budget_s") or "-"} |')
    lines += ['', goal_line(report)]
    for p in parts:
        lines += ['', *part_lines(p, report)]
    return '\n'.join(lines) + '\n'


def part_lines(part, report):
    if part['status'] == 'not measured':
        return [f'{PART_TITLES[part["name"]]}: **not yet measured on a GPU**: run {RUN_IT}.'
                + (f' ({part["why"]})' if part.get('why') else '')]
    if not part['figures']:
        lines = [f'{PART_TITLES[part["name"]]}: no figures.']
    elif part['name'] in RENDERERS:
        lines = RENDERERS[part['name']](part['figures'], report)
    else:
        lines = [f'{PART_TITLES[part["name"]]}: {summary(part["figures"])}.']
    if part['status'] in ('failed', 'cut short'):
        lines.append(f'({PART_TITLES[part["name"]]} {part["status"]} after {part["seconds"]:.0f} s: '
                     'the figures above are what it had measured.)')
    return lines


def render_training(f, report):
    ref = report['reference']
    kind = 'LOWER BOUND (see the note above)' if ref.get('bound') else 'measured in the same run'
    epochs = f['rows'][0].get('run_epochs', EPOCHS)  # the published run: 2000 epochs on CIFAR, 500 on image lists
    lines = [f'Training, batch {f["batch_size"]}, {f["workers"]} loader workers: steady-state images/s; speed-up = '
             f'images/s over {ref["label"]}, {kind}; epoch and {epochs}-epoch times EXTRAPOLATED from '
             f'{f["timed"]}.', '',
             '| method | config | img/s | speed-up vs honest baseline | data wait | epoch s | '
             f'{epochs} epochs | peak MB |',
             '|---|---|---|---|---|---|---|---|']
    for r in f['rows']:
        if r['speedup']:
            speedup = f'{"≥ " if r["speedup_kind"] == "lower bound" else ""}{r["speedup"]:.2f}x'
        else:
            speedup = 'not known: re-measure' if ref.get('bound') else '-'
        lines.append(f'| {r["method"]} | {CONFIG_NAMES.get(r["config"], r["config"])} | {r["images_per_s"]:,.0f} | '
                     f'{speedup} | {100 * r["data_wait_share"]:.0f}% | {r["epoch_s_extrapolated"]:.1f} | '
                     f'{r[f"hours_{epochs}_epochs_extrapolated"]:.1f} h | {r["peak_memory_mb"]:,.0f} |')
    return lines + (['', f'({f["remark"]})'] if f.get('remark') else [])


def render_eval(f, report):
    return ['| evaluation | published loop | ours | speed-up |', '|---|---|---|---|'] + [
        f'| {row["what"]} | {row["published"]} | {row["ours"]} | {row["speedup"]} |' for row in f['rows']]


def render_device_augment(f, report):
    return [f'--gpu_aug augmentation alone on the device, per batch of {f["batch_size"]} (two views each):', '',
            '| pipeline | img/s | ms per batch |', '|---|---|---|'] + [
        f'| {r["pipeline"]} | {r["images_per_s"]:,.0f} | {r["batch_ms"]:.1f} |' for r in f['rows']]


def render_checkpoint(f, report):
    lines = ['model.pt written in the background: seconds the training loop loses per write (median of 5):', '',
             '| family | MB | synchronous s | background: copy + slowed s | the write itself s |',
             '|---|---|---|---|---|']
    return lines + [f'| {r["family"]} | {r["megabytes"]:.0f} | {r["synchronous_s"]:.3f} | {r["blocking_s"]:.3f} + '
                    f'{r["slowed_s"]:.3f} | {r["background_s"]:.3f} |' for r in f['rows']]


def render_loader(f, report):
    workers = sorted({r['workers'] for r in f['rows']})
    lines = [f'Augmentation alone (two views, no network), images/s through a DataLoader at batch {f["batch_size"]}:',
             '', '| pipeline | ' + ' | '.join(f'{w} worker(s)' for w in workers) + ' |',
             '|---' * (len(workers) + 1) + '|']
    for pipeline in dict.fromkeys(r['pipeline'] for r in f['rows']):
        rates = {r['workers']: r['images_per_s'] for r in f['rows'] if r['pipeline'] == pipeline}
        lines.append(f'| {pipeline} | ' + ' | '.join(f'{rates[w]:,.0f}' for w in workers) + ' |')
    return lines


def render_imagenet(f, report):
    """gpu_check's ImageNet part: --gpu_aug's device half, the loader per core, training with its 500-epoch
    extrapolation, and the loader cores one GPU needs (measured figures only)."""
    pipelines = list(dict.fromkeys(r['pipeline'] for r in f['per_core'] if r['pipeline'] != 'any'))
    lines = [f'{f["dataset"]} at 224 px, ResNet-50, on {f["data"]}.', '',
             *render_device_augment({'batch_size': f['batch_size'], 'rows': f['device_augment']}, report),
             '', '(image_list_views alone on batches decoded beforehand: the decode is the loader workers\')', '',
             f'Loader, images/s per core (one process, one thread), on {f["per_core"][0]["images"]} JPEGs; two views '
             'each, decode alone one image:', '', '| loader path | ' + ' | '.join(pipelines) + ' |',
             '|---' * (len(pipelines) + 1) + '|']
    for what in dict.fromkeys(r['what'] for r in f['per_core']):
        rates = {r['pipeline']: r['images_per_s_per_core'] for r in f['per_core'] if r['what'] == what}
        lines.append(f'| {what} | ' + ' | '.join(f'{rates.get(p, rates.get("any")):,.1f}' for p in pipelines) + ' |')
    if f['rows']:
        lines += ['', *render_training(f, report), '',
                  '(the published loop here: its DataLoader, torchvision\'s Compose per view, workers re-created every '
                  'epoch, no pinned memory, the per-sample momentum loop, TF32 convolutions with cuDNN\'s benchmark '
                  'on, as its ImageNet scripts set it)']
    lines += [''] + [f'{r["method"]}: loader cores one GPU needs through {r["what"]}: network '
                     f'{r["network_images_per_s"]:,.0f} img/s ({CONFIG_NAMES.get(r["config"], r["config"])}) / '
                     f'{r["images_per_s_per_core"]:,.1f} img/s per core = {r["cores"]:.3g} cores' for r in f['cores']]
    return lines


def summary(f):
    """A part's figures as one line (tests, quick start, torchrun, test.py, probe)."""
    return '; '.join(f'{k.replace("_", " ")} {v:.4g}' if isinstance(v, float) else f'{k.replace("_", " ")} {v}'
                     for k, v in f.items()) or 'no figures'


RENDERERS = {'training': render_training, 'eval': render_eval, 'device_augment': render_device_augment,
             'checkpoint': render_checkpoint, 'loader': render_loader, 'imagenet': render_imagenet}


def replace_section(text, markdown):
    """`text` (the README) with the part between MARKERS replaced by `markdown`."""
    begin, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    return text[:begin] + '\n' + markdown + text[end:]


def readme_section(text):
    begin, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    return text[begin:end].lstrip('\n')


# ----------------------------------------------------------------------------- the H100 runs of issue 6

def legacy_report(paths, output):
    """A report (gpu_check.py's shape) from bench.py JSON files timed before the honest baseline:
    ratios as lower bounds against the `--tf32` row (module docstring), the rest not measured."""
    runs = [load(path) for path in paths]
    first = runs[0]
    training = [dict(r) for run in runs for r in run['training']]
    for r in training:  # the old `baseline` is the exact-float32 one
        r['config'] = 'baseline_fp32' if r['config'] == 'baseline' else r['config']
    speedups(training, 'tf32', lower_bound=True)
    s = next(run['settings'] for run in runs if run['training'])
    evaluation = next(run for run in runs if run['eval'] and run['settings']['parts'] == 'eval')
    loader = next(run for run in runs if run['loader'] and run['settings']['loader_workers'])
    parts = [not_measured('cuda_tests', 'the suite\'s CUDA half passed on this H100 before the keyed views '
                                        'and --gpu_aug; not since'),
             not_measured('quick_start'),
             {'name': 'training', 'status': 'measured', 'seconds': None, 'budget_s': None, 'figures': {
                 'batch_size': s['batch_size'], 'workers': s['num_workers'], 'rows': training,
                 'timed': f'{s["warmup_epochs"]} warm-up + {s["epochs"]} timed epochs of {s["steps"]} steps, '
                          f'to {training[0]["steps_per_epoch"]} steps per epoch + the measured overhead',
                 'remark': 'SimCLR and BCL-I before the keyed views of issue 11, SDCLR and BCL-D after; '
                           '--gpu_aug rows: not yet measured'}},
             {'name': 'eval', 'status': 'measured', 'seconds': None, 'budget_s': None,
              'figures': legacy_eval(evaluation)},
             {'name': 'loader', 'status': 'measured', 'seconds': None, 'budget_s': None,
              'figures': {'batch_size': loader['settings']['batch_size'], 'rows': loader['loader']}},
             not_measured('device_augment'), not_measured('checkpoint', 'measured on CPU only, where no '
                                                                        'device-to-host copy is involved'),
             not_measured('torchrun', 'NCCL has never run'), not_measured('test_py'), not_measured('probe')]
    return {'command': 'python benchmarks/bench.py --baseline (issue 6, before gpu_check.py)',
            'file': os.path.relpath(output, ROOT), 'sources': [os.path.relpath(p, ROOT) for p in paths],
            'started': 'measured 2026-11-24', 'smoke': False,
            'machine': {'gpu': first['device'], 'torch': first['torch'], 'cuda': first['torch'].split('+cu')[-1],
                        'cudnn': 'not recorded', 'cpu': '16 cores'},
            'reference': {'config': 'baseline', 'label': 'the honest baseline (published loop, torch defaults)',
                          'bound': 'tf32'},
            'note': ('Not a gpu_check.py report: the H100 runs of issue 6 (`' + '`, `'.join(
                os.path.relpath(p, ROOT) for p in paths) + '`) timed the published loop in exact float32 only. '
                'The honest baseline (the published loop with torch\'s defaults: TF32 convolutions, float32 '
                'matmuls) does at least the work of our `--tf32` row (the same convolutions; float32 matmuls; '
                'the per-sample momentum loop, its host sync and history buffer; workers re-created every epoch '
                'in both), so it runs at most as fast: each speed-up below is the row\'s images/s over the '
                '`--tf32` row\'s, a LOWER BOUND on its speed-up against the honest baseline. Rows slower than '
                'that bound have no known ratio; they, and every part marked not yet measured, are for '
                f'{RUN_IT} to measure.'),
            'parts': parts}


def legacy_eval(run):
    """test.py against the published evaluation: the published probes alone are a lower bound on
    the honest baseline (they are float32 matmuls under torch's defaults too; its feature passes
    would be faster with TF32 convolutions)."""
    published = next(r for r in run['eval'] if r['config'] == 'baseline')
    ours = next(r for r in run['eval'] if r['config'] == 'default')
    return {'ours_total_s': ours['total_s'], 'rows': [
        {'what': f'`test.py` ({ours["family"]} checkpoint: features + 11 probes of 500 epochs)',
         'published': f'exact float32 {published["total_s"]:.1f} s (11 feature passes {published["features_s"]:.1f} s, '
                      f'probes {published["probes_s"]:.1f} s); honest baseline: at least the probes, '
                      f'{published["probes_s"]:.1f} s',
         'ours': f'{ours["total_s"]:.1f} s (1 pass {ours["features_s"]:.1f} s, stacked probes '
                 f'{ours["probes_s"]:.1f} s)',
         'speedup': f'≥ {published["probes_s"] / ours["total_s"]:.1f}x (vs exact float32: '
                    f'{published["total_s"] / ours["total_s"]:.1f}x)'},
        {'what': 'in-training full-shot probe (every `--eval_freq 20` epochs)', 'published': 'not known: re-measure',
         'ours': f'{ours["in_training_eval_s"]:.1f} s: {100 * ours["in_training_eval_s"] / 3600:.2f} h per 2000 epochs',
         'speedup': '-'}]}


def not_measured(name, why=None):
    return {'name': name, 'status': 'not measured', 'seconds': None, 'budget_s': None, 'figures': {},
            **({'why': why} if why else {})}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        sys.exit(f'error: cannot read {path} ({error})')


def main(argv=None):
    parser = argparse.ArgumentParser(description='Markdown of a gpu_check.py report; the README section from it.')
    parser.add_argument('report', nargs='?', help='report.json (gpu_check.py)')
    parser.add_argument('--readme', help='rewrite this README\'s section between ' + ' and '.join(MARKERS))
    parser.add_argument('--legacy', nargs='+', help='bench.py JSON files of before the honest baseline')
    parser.add_argument('--write', help='with --legacy: the report.json to write')
    args = parser.parse_args(argv)
    if args.legacy:
        if not args.write:
            sys.exit('error: --legacy needs --write REPORT.json')
        report = legacy_report(args.legacy, args.write)
        with open(args.write, 'w') as f:
            json.dump(report, f, indent=1)
        print(f'wrote {args.write}')
        return
    if not args.report:
        sys.exit('error: pass a report.json (see --help)')
    markdown = render(load(args.report))
    if not args.readme:
        print(markdown, end='')
        return
    with open(args.readme) as f:
        text = f.read()
    if not all(marker in text for marker in MARKERS):
        sys.exit(f'error: {args.readme} has no section between {" and ".join(MARKERS)}')
    with open(args.readme, 'w') as f:
        f.write(replace_section(text, markdown))
    print(f'{args.readme}: GPU section rewritten from {args.report}')


if __name__ == '__main__':
    main()
