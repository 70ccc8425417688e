"""The benchmark's own contract (benchmarks/bench.py, report.py): what the baseline is, bad
input refused before any measurement, and the README's GPU section generated from a committed
report, not typed by hand."""
import os
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import bench  # noqa: E402


def test_an_unwritable_output_is_refused_before_any_measurement(tmp_path, capsys):
    """--output under a regular file: a one-line error and exit 1 before anything is printed
    or measured (it used to fail with a traceback after the whole run)."""
    (tmp_path / 'file').write_text('')
    for output in (tmp_path / 'file' / 'out.json', tmp_path):
        with pytest.raises(SystemExit) as stopped:
            bench.main(['--smoke', '--output', str(output)])
        assert stopped.value.code == 1
        out, err = capsys.readouterr()
        assert out == ''
        assert err.count('\n') == 1 and err.startswith(f'error: cannot write --output {output} (')
    assert os.listdir(tmp_path) == ['file']


def test_the_baseline_is_the_published_loop_with_torch_defaults():
    """`baseline`: deterministic cuDNN (the published setup_seed), TF32 convolutions and float32
    matmuls (torch's defaults, which the published code does not touch); `baseline_fp32`: TF32
    off. Every ratio is against `baseline`."""
    cpu = torch.device('cpu')
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        settings = {}
        for config in bench.BASELINES:
            bench.set_cuda_math(bench.CONFIGS[config], cpu)
            settings[config] = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    finally:
        bench.set_cudnn(cpu, saved[0], saved[2])
        torch.backends.cudnn.deterministic = saved[1]
        torch.backends.cuda.matmul.allow_tf32 = saved[3]
    assert settings == {'baseline': (False, True, True, False), 'baseline_fp32': (False, True, False, False)}
    assert all(bench.CONFIGS[c]['published'] for c in bench.BASELINES)
    reference = bench.reference_of(['baseline', 'baseline_fp32', 'default'], torch.device('cuda'))
    assert reference['config'] == 'baseline' and reference['second'] == 'baseline_fp32'
    assert 'TF32' in reference['label'] and 'exact float32 (second reference)' in reference['second_label']
    assert bench.reference_of(['default', 'tf32'], cpu)['config'] == 'default'


def test_the_readme_gpu_section_is_what_the_committed_report_renders():
    """The README's GPU section is generated (report.py --readme): a hand edit, or a report
    changed without regenerating it, fails here."""
    import report
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    committed = report.load(os.path.join(ROOT, 'benchmarks', 'results', 'gpu_report.json'))
    assert report.readme_section(readme) == report.render(committed)
    assert report.replace_section(readme, report.render(committed)) == readme


def test_legacy_ratios_are_lower_bounds_against_the_tf32_row():
    """The H100 runs of issue 6 have no honest-baseline row: each ratio is the row's images/s over
    the --tf32 row's (the honest baseline runs at most as fast), none below 1, and the parts that
    never ran on a GPU are marked not measured."""
    import report
    paths = [os.path.join(ROOT, 'benchmarks', 'results', f'h100_{n}.json') for n in ('simclr_bcl_i', 'sdclr_bcl_d',
                                                                                     'eval')]
    legacy = report.legacy_report(paths, os.path.join(ROOT, 'benchmarks', 'results', 'gpu_report.json'))
    rows = {(r['method'], r['config']): r for r in report.figures(legacy, 'training')['rows']}
    every_flag = rows['BCL-D', 'all']
    assert every_flag['speedup_kind'] == 'lower bound'
    assert every_flag['speedup'] == pytest.approx(14768 / 8158, rel=1e-3)
    assert rows['BCL-D', 'default']['speedup'] is None  # slower than the bound: not known
    assert ('BCL-D', 'baseline') not in rows and rows['BCL-D', 'baseline_fp32']['speedup'] is None
    status = {p['name']: p['status'] for p in legacy['parts']}
    assert {status[n] for n in ('device_augment', 'torchrun', 'checkpoint', 'cuda_tests')} == {'not measured'}
    markdown = report.render(legacy)
    assert 'EXTRAPOLATED' in markdown and '≥ 1.81x' in markdown and 'not yet measured on a GPU' in markdown


def test_a_part_cut_short_leaves_no_process_behind():
    """gpu_check's budget kills a part's whole process group (pytest's workers, torchrun's ranks, a
    script's children), so nothing of it runs on while later parts are timed; the output so far is kept."""
    import subprocess
    import gpu_check
    with pytest.raises(subprocess.TimeoutExpired) as cut:
        gpu_check.run_command(['bash', '-c', 'sleep 60 & echo $!; wait'], timeout=2)
    child = int(cut.value.output.split()[0])
    for _ in range(50):  # reaped by init once killed
        if not os.path.exists(f'/proc/{child}') or open(f'/proc/{child}/stat').read().split()[2] == 'Z':
            break
        time.sleep(0.1)
    assert not os.path.exists(f'/proc/{child}') or open(f'/proc/{child}/stat').read().split()[2] == 'Z'


def test_image_list_bench_smoke_reports_every_row_and_its_extrapolation(tmp_path, capsys):
    """bench.py --dataset imagenet100_lt --smoke on the CPU (16 tiny JPEGs, ResNet-50 at 224 px, batch 4, 1 step):
    the loader per core for each path and pipeline, --gpu_aug's device half for both pipelines, SimCLR's training
    rows (the published loop, ours, --gpu_aug) with ImageNet-100-LT's epoch (12,205 images) and 500-epoch times
    extrapolated from the measured step and overhead, and the loader cores one GPU needs from those figures."""
    import math
    results = bench.main(['--dataset', 'imagenet100_lt', '--smoke', '--output', str(tmp_path / 'in100.json')])
    assert results['settings']['jpegs'] == 16 and results['settings']['epoch_images'] == 12205
    rows = results['training']
    assert [(r['method'], r['config'], r['pipeline']) for r in rows] == [
        ('SimCLR', config, 'base') for config in ('baseline', 'default', 'gpu_aug')]
    for r in rows:
        assert r['steps_per_epoch'] == math.ceil(12205 / 4) and r['run_epochs'] == 500
        assert r['epoch_s_extrapolated'] == pytest.approx(r['epoch_overhead_s'] + 3052 * r['step_s'])
        assert r['hours_500_epochs_extrapolated'] == pytest.approx(500 * r['epoch_s_extrapolated'] / 3600)
        assert r['images_per_s'] == pytest.approx(4 / r['step_s'])
    per_core = {(r['path'], r['pipeline']): r['images_per_s_per_core'] for r in results['per_core']}
    assert set(per_core) == {('decode', 'any')} | {(path, pipeline) for path in ('published', 'ours', 'gpu_aug_worker')
                                                   for pipeline in ('base', 'BCL k=2')}
    assert all(math.isfinite(v) and v > 0 for v in per_core.values())
    assert [r['pipeline'] for r in results['device_augment']] == ['base', 'BCL k=2']
    assert all(r['batch_ms'] > 0 and r['images_per_s'] == pytest.approx(4000 / r['batch_ms'])
               for r in results['device_augment'])
    cores = {r['path']: r for r in results['cores']}
    assert set(cores) == {'published', 'ours', 'gpu_aug_worker'}
    for path, config in (('published', 'baseline'), ('ours', 'default'), ('gpu_aug_worker', 'gpu_aug')):
        network = next(r['network_images_per_s'] for r in rows if r['config'] == config)
        assert cores[path]['config'] == config
        assert cores[path]['cores'] == pytest.approx(network / per_core[path, 'base'])
    out = capsys.readouterr().out
    assert 'epoch and 500-epoch times EXTRAPOLATED to 3052 steps/epoch' in out and 'smoke test passed' in out
    assert out.count('loader cores one GPU needs') == 3
    import report  # the same figures as gpu_check.py's ImageNet part renders them in report.md and the README
    figures = {'dataset': 'ImageNet-100-LT', 'data': results['data'], 'batch_size': 4, 'workers': 1,
               'device_augment': results['device_augment'], 'per_core': results['per_core'],
               'rows': report.speedups(rows, 'baseline'), 'cores': results['cores'], 'timed': '1 epoch of 1 step'}
    markdown = '\n'.join(report.render_imagenet(figures, {'reference': results['reference']}))
    assert '| 500 epochs |' in markdown and 'EXTRAPOLATED' in markdown and '| BCL k=2 |' in markdown
    assert markdown.count('loader cores one GPU needs') == 3 and markdown.count('| SimCLR |') == 3


def test_image_list_bench_refuses_what_it_cannot_measure(tmp_path, capsys):
    """Before any measurement, one line each: a part that is CIFAR's only, and ImageNet-LT-exp's epoch, whose
    size is not known here, without --epoch_images."""
    with pytest.raises(SystemExit) as stopped:
        bench.main(['--dataset', 'imagenet100_lt', '--parts', 'eval', '--output', str(tmp_path / 'a.json')])
    assert stopped.value.code == 'error: unknown part eval: use train, loader (on imagenet100_lt)'
    with pytest.raises(SystemExit) as stopped:
        bench.main(['--dataset', 'imagenet_lt_exp', '--smoke', '--output', str(tmp_path / 'b.json')])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'ImageNet-LT-exp' in err and '--epoch_images' in err
