"""Every GPU check in one command and one report (issue 21), for a GPU lent in short slots:

    python benchmarks/gpu_check.py --output DIR            # on one H100/H200: within 8 minutes
    python benchmarks/gpu_check.py --smoke --output DIR    # the same parts on the CPU, tiny sizes (CI, ~2 min)

Each part runs in its own process under its own time budget (seconds, below), in order; the
whole run stops starting parts at TOTAL_S. A part that runs past its budget is killed with its
whole process group and recorded "cut short" with its seconds and the figures it had written
(its own commands get a few seconds less, so that it can write them; the CUDA tests keep their
outcomes so far); a stale figures file of an earlier run into DIR is removed first, and the
report is rewritten after every part; a failure is "failed"
with the last lines of its output; else "passed". DIR/report.json holds the machine, GPU, torch,
CUDA and cuDNN versions, the start time and every part {name, status, seconds, budget_s,
figures}; DIR/report.md the same tables as the README (benchmarks/report.py). The exit status
is 1 if any part failed or was cut short.

Budgets on an H100-class GPU, from the H100 figures in the README (benchmarks/results/): the
suite's CUDA half ~2 min; a training configuration ~10-15 s eager (1 warm-up + 1 timed epoch of
10 steps at 2,000-8,000 images/s, plus loader start-up), ~40 s with --compile (two graphs);
test.py ~7 s plus start-up; the in-training probe ~5 s; a 2-epoch torchrun run ~15 s each.
The ImageNet part (issue 24) is estimated, not yet measured: 1,280 JPEGs written side by side
(~3 s on 16 cores), 2 x 3 batches of 256 decoded (~5 s), the loader per core on 64 images
(~6 s), SimCLR ResNet-50 at batch 256: the published loop loader-bound at ~8 x 75 images/s
(~10 s), --gpu_aug ~10 s, every flag ~50 s (ResNet-50's two graphs compiled).

To put a GPU report in the README: copy DIR/report.json to benchmarks/results/gpu_report.json,
then `python benchmarks/report.py benchmarks/results/gpu_report.json --readme README.md`.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import bench  # noqa: E402
import report  # noqa: E402
from utils import fail  # noqa: E402

TOTAL_S = 480  # 8 minutes on one H100/H200
# The ImageNet part's 90 GPU seconds come from the parts with the most slack over their estimates (module
# docstring): the CUDA tests 170 -> 145 (~2 min), the quick start 45 -> 30, the CIFAR training 140 -> 125, the
# CIFAR --gpu_aug augmentation, checkpoint, test.py and probe parts 5 s less each (each estimated at 5-7 s plus
# start-up), torchrun 35 -> 30 and sdclr_probe 25 -> 15 (2 full-shot epochs on CIFAR-size data): 480 s in all.
BUDGETS = {  # seconds on a GPU; --smoke: the CPU budgets
    'cuda_tests': (145, 30), 'quick_start': (30, 90), 'training': (125, 40), 'device_augment': (10, 20),
    'imagenet': (90, 60), 'checkpoint': (10, 25), 'torchrun': (30, 70), 'test_py': (15, 40), 'probe': (10, 30),
    'sdclr_probe': (15, 30)}
# --smoke on 2 CPU cores took 102-180 s in all (one part 6-48 s) as the machine's load varied: its budgets are
# ~3x the quickest part, and its total is their sum, so only a hung part is cut short, never a loaded machine
SMOKE_TOTAL_S = sum(smoke for _, smoke in BUDGETS.values())
TRAIN_METHODS = ('BCL-D', 'SimCLR')
TRAIN_CONFIGS = ('baseline', 'baseline_fp32', 'default', 'tf32', 'all', 'all_gpu_aug')
SMOKE_TRAIN = {'BCL-D': ('baseline', 'gpu_aug'), 'SimCLR': ('default',)}  # no bf16 / compile on 2 CPU cores
IMAGENET = 'imagenet100_lt'  # the image-list benchmark timed: ResNet-50 at 224 px, SimCLR
IMAGENET_CONFIGS = ('baseline', 'gpu_aug', 'all_gpu_aug')  # --smoke: the first two (no bf16 / compile on the CPU)
IMAGENET_STEPS, IMAGENET_LOADER_IMAGES = 5, 64  # 5 steps of 256 per timed epoch; the loader per core on 64 images
SMOKE_SIZES = (1000, 200), dict(val_per_class=1, train_per_class=4, pool_per_class=4, imbalance_ratio=4,
                            shot_sizes=(2, 1))  # --smoke data: 1,000 + 200 images, a train list of 400
SMOKE_QUICK_START = (  # (README text, --smoke text)
    ('example_data &&', 'example_data --train_per_class 10 --test_per_class 2 &&'),
    ('--val_per_class 2 --train_per_class 16 --pool_per_class 10 --imbalance_ratio 10 --shot_sizes 8 4',
     '--val_per_class 1 --train_per_class 4 --pool_per_class 4 --imbalance_ratio 4 --shot_sizes 2 1'),
    ('--epochs 2', '--epochs 1'), ('--eval_freq 2', '--eval_freq 0'), ('--batch_size 64', '--batch_size 16'),
    ('--test_50shot', '--test_50shot --probe_epochs 5'))
TAIL = 3000  # characters of a failed part's output kept
CUT_SHORT = 3  # a part process's exit status when its own command ran out of time


# ----------------------------------------------------------------------------- the parts (each in its own process)

def run_command(command, timeout, cwd=ROOT, env=None):
    """A command's (exit status, output: stdout and stderr together); past `timeout` its whole
    process group is killed (its children too: pytest's, torchrun's ranks, the quick start's
    scripts), so nothing of a part cut short runs on while later parts are timed, and
    subprocess.TimeoutExpired is raised with the output so far."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout, output=output) from None
    return process.returncode, output


def checked(command, timeout, **kwargs):
    code, output = run_command(command, timeout, **kwargs)
    if code:
        raise PartFailed(f'{" ".join(command[:4])} ... exited {code}:\n{output[-TAIL:]}')
    return output


class PartFailed(Exception):
    pass


def part_cuda_tests(ctx):
    """The device-parametrised tests on cuda:0 (their `[cuda]` ids); --smoke: two quick `[cpu]` ones."""
    selection = (['tests/test_speed.py', '-k', 'channels_last and cpu and dtype0 and simclr'] if ctx.smoke
                 else ['tests', '-k', 'cuda'])
    command = [sys.executable, '-m', 'pytest', '-v', '-p', 'no:cacheprovider', '--tb=short'] + selection
    try:
        code, output = run_command(command, ctx.budget)
    except subprocess.TimeoutExpired as expired:  # keep the outcomes so far, then report the cut
        ctx.write(test_outcomes(expired.output or ''))
        raise
    outcomes = test_outcomes(output)
    ctx.write(outcomes)
    if code or not outcomes.get('passed'):
        raise PartFailed(output[-TAIL:])


def test_outcomes(output):
    """{'passed': n, 'failed': n, 'skipped': n, 'skipped_tests': [ids]} from pytest -v's lines."""
    found = re.findall(r'^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)', output, flags=re.M)
    outcomes = {word.lower(): sum(1 for _, w in found if w == word) for word in ('PASSED', 'FAILED', 'SKIPPED', 'ERROR')}
    outcomes['skipped_tests'] = [test for test, word in found if word == 'SKIPPED']
    return outcomes


def quick_start_commands(smoke):
    """The README's quick start (its code block, without the install), in tiny sizes with --smoke."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    section = text[text.index('## Quick start'):]
    block = re.search(r'\n\n((?:    [^\n]*\n)+)', section).group(1)  # its first indented block
    command = ' '.join(block.replace('\\\n', ' ').split())
    command = command.replace('pip install -r requirements.txt && ', '')
    assert 'pip ' not in command, 'the README quick start installs something: update quick_start_commands'
    if smoke:  # tiny data, 1 epoch, no in-training probe (the probe part times it), probes of 5 epochs
        for old, new in SMOKE_QUICK_START:
            assert old in command, f'the README quick start no longer has {old!r}: update SMOKE_QUICK_START'
            command = command.replace(old, new, 1)
    return command


def part_quick_start(ctx):
    """The README quick start in a copy of the project (it writes example_data, split/example,
    checkpoints), on the GPU, or the CPU with --smoke."""
    with tempfile.TemporaryDirectory() as folder:
        copy = os.path.join(folder, 'project')
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('.git', 'checkpoints', 'example_data', '.venv',
                                                                  '__pycache__', 'tests', 'docs', 'results'))
        command = quick_start_commands(ctx.smoke).replace('python ', f'{sys.executable} ')
        start = time.perf_counter()
        output = checked(['bash', '-c', 'set -e; ' + command], ctx.budget, cwd=copy)
        results = os.path.join(copy, 'checkpoints', 'example_BCL_D', 'model_results.json')
        with open(results) as f:
            top1 = json.load(f)['fullshot']['top1']
        ctx.write({'seconds': time.perf_counter() - start, 'fullshot_top1': top1,
                   'epochs_logged': output.count('epoch 1/')})


def bench_args(ctx, extra=()):
    args = bench.get_parser().parse_args(['--methods', ','.join(TRAIN_METHODS)] + list(extra))
    if ctx.smoke:
        bench.smoke_settings(args)
    else:
        args.epochs, args.warmup_epochs = 1, 1  # 10 timed steps: enough for a median at batch 512
    args.smoke = ctx.smoke
    return args


def part_data(ctx):
    """bench.py's arguments and data: the real sizes, or SMOKE_SIZES."""
    args = bench_args(ctx)
    return args, bench.prepare_data(args, SMOKE_SIZES if ctx.smoke else None)


def part_training(ctx):
    """bench.py's training rows, batch 512, BCL-D and SimCLR: the two baselines, default, --tf32,
    every flag and every flag with --gpu_aug; ratios against the honest baseline."""
    (args, data), device = part_data(ctx), ctx.device
    rows = []
    for method in TRAIN_METHODS:
        for config in (SMOKE_TRAIN[method] if ctx.smoke else TRAIN_CONFIGS):
            rows.append(bench.bench_training(method, config, data, args, device))
            report.speedups(rows, 'baseline')
            ctx.write({'batch_size': args.batch_size, 'workers': args.num_workers, 'rows': rows,
                       'timed': f'{args.warmup_epochs} warm-up + {args.epochs} timed epoch(s) of {args.steps} '
                                f'steps, to {rows[0]["steps_per_epoch"]} steps per epoch + the measured overhead'})


def part_device_augment(ctx):
    """--gpu_aug's augmentation alone per batch (base, BCL k=1, k=2)."""
    args, data = part_data(ctx)
    rows = []
    for pipeline in ('base', 'BCL k=1', 'BCL k=2'):
        rows.append(bench.bench_device_augment(pipeline, data, args, ctx.device, epochs=1 if ctx.smoke else 3,
                                               images=64 if ctx.smoke else None))
        ctx.write({'batch_size': args.batch_size, 'rows': rows})


def part_imagenet(ctx):
    """ImageNet-100-LT at 224 px (issue 24; bench.py --dataset imagenet100_lt): --gpu_aug's device half per batch of
    256 (base, BCL k=2), the loader's images/s per core, then SimCLR ResNet-50 training at batch 256 (the published
    loop, --gpu_aug, every flag with --gpu_aug) and the loader cores one GPU needs; --smoke: tiny JPEGs, batch 4."""
    args = bench.get_parser(IMAGENET).parse_args(['--dataset', IMAGENET, '--methods', 'SimCLR'])
    if ctx.smoke:
        bench.smoke_settings(args)
    else:  # our loaders get every core (issue 24: the data wait with 16); the published loop keeps its 8
        args.steps, args.loader_images, args.num_workers = IMAGENET_STEPS, IMAGENET_LOADER_IMAGES, os.cpu_count()
    args.smoke = ctx.smoke
    data = bench.image_list_data(args)
    figures = {'dataset': data.benchmark.title, 'data': data.description, 'batch_size': args.batch_size,
               'workers': args.num_workers, 'device_augment': [], 'per_core': [], 'rows': [], 'cores': []}
    for pipeline in bench.IMAGE_LIST_PIPELINES:
        figures['device_augment'].append(bench.bench_image_list_augment(pipeline, data, args, ctx.device))
        ctx.write(figures)
    figures['per_core'] = bench.bench_per_core(data, args)
    ctx.write(figures)
    for config in IMAGENET_CONFIGS[:2] if ctx.smoke else IMAGENET_CONFIGS:
        figures['rows'].append(bench.bench_training('SimCLR', config, data, args, ctx.device))
        report.speedups(figures['rows'], 'baseline')
        figures['cores'] = bench.loader_cores(figures['rows'], figures['per_core'])
        figures['timed'] = (f'{args.warmup_epochs} warm-up + {args.epochs} timed epoch(s) of {args.steps} steps, to '
                            f'{figures["rows"][0]["steps_per_epoch"]} steps per epoch + the measured overhead')
        ctx.write(figures)


def part_checkpoint(ctx):
    """The background write's cost per model.pt of each family, the state on the device."""
    rows = []
    for prune in (False, True):
        rows.append(bench.bench_checkpoint(prune, ctx.device, repeats=2 if ctx.smoke else 5))
        ctx.write({'rows': rows})


def tiny_split(data, size, name):
    """The first `size` images of the benchmark's D_i as a split file beside it (absolute path)."""
    path = os.path.join(bench.CACHE, 'split', f'{name}_D_i.npy')
    np.save(path, np.sort(data.d_i)[:size])
    return path


def part_torchrun(ctx):
    """2 epochs of SimCLR by `torchrun --nproc_per_node 1` (NCCL on the GPU, gloo with --smoke)
    and without torchrun: every tensor of the final state must be equal, bit for bit."""
    args, data = part_data(ctx)
    size, batch = (48, 16) if ctx.smoke else (1024, 256)
    with tempfile.TemporaryDirectory(dir=bench.CACHE) as folder:
        argv = ['--epochs', '2', '--batch_size', str(batch), '--num_workers', '2', '--eval_freq', '0',
                '--save_freq', '0', '--data_folder', data.folder, '--trainSplit', tiny_split(data, size, 'torchrun'),
                '--save_dir', folder, '--gpus', 'cpu' if ctx.smoke else '0']
        launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1']
        seconds = {}
        for name, prefix in (('plain', [sys.executable]), ('torchrun', launcher)):
            start = time.perf_counter()
            checked(prefix + ['train.py', name] + argv, ctx.budget)
            seconds[name] = time.perf_counter() - start
        states = [torch.load(os.path.join(folder, name, 'model.pt'), map_location='cpu', weights_only=False)
                  for name in ('plain', 'torchrun')]
        with open(os.path.join(folder, 'torchrun', 'log.txt')) as f:
            wrapped = 'DistributedDataParallel' in f.read()
    tensors = [(states[0]['state_dict'][k], states[1]['state_dict'][k]) for k in states[0]['state_dict']]
    tensors.append((states[0]['momentum_loss'], states[1]['momentum_loss']))
    unequal = sum(not torch.equal(a, b) for a, b in tensors)
    largest = max(float((a.double() - b.double()).abs().max()) for a, b in tensors)
    ctx.write({'backend': 'gloo' if ctx.smoke else 'nccl', 'ddp_wrapped': wrapped, 'tensors': len(tensors),
               'unequal_tensors': unequal, 'largest_difference': largest, 'tolerance': 'bit for bit',
               'plain_s': seconds['plain'], 'torchrun_s': seconds['torchrun']})
    if unequal or not wrapped:
        raise PartFailed(f'{unequal} of {len(tensors)} tensors differ (largest {largest:.3g}); DDP wrapped: {wrapped}')


def checkpoint_for_test(folder, prune):
    from models import build_model
    path = os.path.join(folder, 'model.pt')
    torch.save({'state_dict': build_model(prune=prune).state_dict(), 'epoch': 1}, path)
    return path


def part_test_py(ctx):
    """The real test.py (full-shot, 100- and 50-shot probes) on a BCL-D checkpoint at the real
    CIFAR-100 sizes (--smoke: tiny data, probes of 5 epochs)."""
    args, data = part_data(ctx)
    with tempfile.TemporaryDirectory(dir=bench.CACHE) as folder:
        d_i = data.d_i_path  # the benchmark's D_i in its split family, by an absolute path
        command = [sys.executable, 'test.py', '--checkpoint', checkpoint_for_test(folder, True), '--prune',
                   '--test_fullshot', '--test_100shot', '--test_50shot', '--data_folder', data.folder,
                   '--trainSplit', d_i, '--num_workers', str(args.num_workers), '--output',
                   os.path.join(folder, 'results.json'), '--gpus', 'cpu' if ctx.smoke else '0']
        start = time.perf_counter()
        checked(command + (['--probe_epochs', '5'] if ctx.smoke else []), ctx.budget)
        ctx.write({'seconds': time.perf_counter() - start, 'images': len(data.labels) + len(data.test_labels)})


def part_probe(ctx):
    """train.py's in-training probe (eval_cifar.full_shot_eval, every --eval_freq epochs) on the
    real-size data (--smoke: tiny, 5 probe epochs)."""
    from eval_cifar import PROBE_EPOCHS, full_shot_eval, prepare_full_shot
    from models import build_model
    args, data = part_data(ctx)
    probe_data = prepare_full_shot(data.folder, data.d_i_path)
    model = build_model(prune=True).to(ctx.device)
    start = time.perf_counter()
    full_shot_eval(model, probe_data, ctx.device, probe_epochs=5 if ctx.smoke else PROBE_EPOCHS,
                   num_workers=args.num_workers)
    bench.sync(ctx.device)
    seconds = time.perf_counter() - start
    ctx.write({'seconds': seconds, 'train_list': len(probe_data['train_set']),
               'hours_per_2000_epochs': seconds * (bench.EPOCHS // bench.EVAL_FREQ) / 3600})


def part_sdclr_probe(ctx):
    """test.py --protocol sdclr's linear layer (eval_sdclr.sdclr_probe) against the straightforward published
    loop in one run (benchmarks/sdclr_probe.py: 2 full-shot epochs, CIFAR-sized data; --smoke: tiny)."""
    import sdclr_probe
    smoke = ['--epochs', '1', '--sizes', '128', '64', '64', '--workers', '0']
    result = sdclr_probe.main(['--device', ctx.device.type] + (smoke if ctx.smoke else ['--epochs', '2']))
    ctx.write({k: result[k] for k in ('sizes', 'chunk', 'workers', 'epochs', 'speed_up',
                                      'max_abs_diff_last_fc_weight')}
              | {f'{name}_images_per_s': rate for name, rate in result['images_per_s'].items()})


PARTS = {'cuda_tests': part_cuda_tests, 'quick_start': part_quick_start, 'training': part_training,
         'device_augment': part_device_augment, 'imagenet': part_imagenet, 'checkpoint': part_checkpoint,
         'torchrun': part_torchrun, 'test_py': part_test_py, 'probe': part_probe, 'sdclr_probe': part_sdclr_probe}


class PartContext:
    """What a part process knows: --smoke, its budget, its device; `write` keeps its figures so
    far in DIR/parts/NAME.json (a part cut short keeps what it had measured)."""

    def __init__(self, name, folder, smoke, budget):
        self.name, self.smoke, self.budget = name, smoke, budget
        self.path = os.path.join(folder, 'parts', f'{name}.json')
        self.device = torch.device('cuda' if torch.cuda.is_available() and not smoke else 'cpu')

    def write(self, figures):
        with open(self.path + '.tmp', 'w') as f:
            json.dump(figures, f, indent=1)
        os.replace(self.path + '.tmp', self.path)


def run_part_here(name, folder, smoke, budget):
    """The body of one part's process: exit 0 when it passed, 1 with the reason when it failed."""
    try:
        PARTS[name](PartContext(name, folder, smoke, budget))
    except PartFailed as error:
        print(str(error)[-TAIL:], file=sys.stderr)
        sys.exit(1)
    except subprocess.TimeoutExpired as expired:  # its own command ran out of the part's budget
        print(f'{" ".join(map(str, expired.cmd[:4]))} ... ran past {expired.timeout} s:\n'
              f'{(expired.output or "")[-TAIL:]}', file=sys.stderr)
        sys.exit(CUT_SHORT)


# ----------------------------------------------------------------------------- the driver

def run_part(name, folder, smoke, budget):
    """One part in its own process under `budget` seconds -> its report entry."""
    command = [sys.executable, os.path.abspath(__file__), '--part', name, '--output', folder,
               '--budget', str(budget - min(8, max(2, budget // 5)))]  # its commands end first: figures get written
    path = os.path.join(folder, 'parts', f'{name}.json')
    if os.path.exists(path):  # a previous run's figures into the same DIR are never reported as this run's
        os.remove(path)
    start = time.perf_counter()
    try:
        code, output = run_command(command + (['--smoke'] if smoke else []), budget)
        status = {0: 'passed', CUT_SHORT: 'cut short'}.get(code, 'failed')
    except subprocess.TimeoutExpired as expired:
        status, output = 'cut short', expired.output or ''
    entry = {'name': name, 'status': status, 'seconds': time.perf_counter() - start, 'budget_s': budget}
    entry['figures'] = json.load(open(path)) if os.path.exists(path) else {}
    if status != 'passed':
        entry['output_tail'] = output[-TAIL:]
    return entry


def machine():
    cuda = torch.cuda.is_available()
    return {'hostname': socket.gethostname(), 'cpu': bench.cpu_model(), 'cores': os.cpu_count(),
            'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda or 'none',
            'cudnn': str(torch.backends.cudnn.version()) if cuda else 'none',
            'gpu': torch.cuda.get_device_name(0) if cuda else 'none (CPU)'}


def check_sane(result):
    """--smoke's checks: every part present and passed, every figure of the timed parts positive, the ImageNet
    part's rows all there."""
    assert [p['name'] for p in result['parts']] == list(PARTS), result['parts']
    for p in result['parts']:
        assert p['status'] == 'passed', (p['name'], p['status'], p.get('output_tail'))
    figures = {p['name']: p['figures'] for p in result['parts']}
    bench.check_sane({'training': figures['training']['rows'], 'eval': [], 'loader': [],
                      'checkpoint': figures['checkpoint']['rows'], 'device_augment': figures['device_augment']['rows']})
    imagenet = figures['imagenet']
    bench.check_sane({'training': imagenet['rows'], 'eval': [], 'loader': [], 'checkpoint': [],
                      'device_augment': imagenet['device_augment'], 'per_core': imagenet['per_core'],
                      'cores': imagenet['cores']})
    assert [r['config'] for r in imagenet['rows']] == list(IMAGENET_CONFIGS[:2]), imagenet['rows']
    assert [r['pipeline'] for r in imagenet['device_augment']] == list(bench.IMAGE_LIST_PIPELINES)
    assert len(imagenet['per_core']) == 7 and len(imagenet['cores']) == 2, imagenet


def write_report(result, folder):
    """DIR/report.json and DIR/report.md of the parts run so far; returns the markdown."""
    with open(os.path.join(folder, 'report.json'), 'w') as f:
        json.dump(result, f, indent=1)
    markdown = report.render(result)
    with open(os.path.join(folder, 'report.md'), 'w') as f:
        f.write(markdown)
    return markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description='Every GPU check, one report (DIR/report.json, DIR/report.md).')
    parser.add_argument('--output', required=True, help='folder for report.json and report.md')
    parser.add_argument('--smoke', action='store_true', help='the same parts on the CPU, tiny sizes (CI)')
    parser.add_argument('--part', choices=list(PARTS), help=argparse.SUPPRESS)  # one part's own process
    parser.add_argument('--budget', type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return run_part_here(args.part, args.output, args.smoke, args.budget)
    if not args.smoke and not torch.cuda.is_available():
        fail('no CUDA device: gpu_check.py measures the GPU (use --smoke for the CPU check)')
    try:
        os.makedirs(os.path.join(args.output, 'parts'), exist_ok=True)
        open(os.path.join(args.output, 'report.json'), 'a').close()
    except OSError as error:
        fail(f'cannot write to --output {args.output} ({error.strerror})')
    started, deadline = time.time(), time.perf_counter() + (SMOKE_TOTAL_S if args.smoke else TOTAL_S)
    result = {'command': 'python benchmarks/gpu_check.py' + (' --smoke' if args.smoke else '') + ' --output DIR',
              'file': os.path.join(args.output, 'report.json'), 'smoke': args.smoke, 'machine': machine(),
              'started': datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds'),
              'reference': {'config': 'baseline', 'label': bench.LABELS['baseline'] + (
                  '; on the CPU TF32 does not exist' if args.smoke else ''),
                            'second': 'baseline_fp32', 'second_label': bench.LABELS['baseline_fp32']},
              'note': 'Every ratio is against the honest baseline measured in the same run: ' + bench.LABELS[
                  'baseline'] + '.' + (' SMOKE RUN: CPU, tiny sizes; the figures check the code path, '
                                       'not the speed.' if args.smoke else ''),
              'parts': []}
    for name in PARTS:
        budget = BUDGETS[name][1 if args.smoke else 0]
        left = deadline - time.perf_counter()
        if left < 5:
            result['parts'].append({'name': name, 'status': 'cut short', 'seconds': 0, 'budget_s': budget,
                                    'figures': {}, 'why': 'no time left in the total budget'})
            continue
        entry = run_part(name, args.output, args.smoke, int(min(budget, left)))
        result['parts'].append(entry)
        print(f'{name:15} {entry["status"]:9} {entry["seconds"]:6.1f} s (budget {budget} s)', flush=True)
        result['seconds'] = time.time() - started
        write_report(result, args.output)  # after every part: a killed run still leaves its report
    result['seconds'] = time.time() - started
    markdown = write_report(result, args.output)
    print(markdown)
    print(f'{args.output}/report.json and report.md written in {result["seconds"]:.0f} s')
    if args.smoke:
        check_sane(result)
        print('gpu_check smoke test passed')
    if any(p['status'] != 'passed' for p in result['parts']):
        sys.exit(1)


if __name__ == '__main__':
    main()
