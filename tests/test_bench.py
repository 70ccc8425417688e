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
