"""Training scripts end to end on the synthetic folder (CPU, tiny splits, --num_workers 0)."""
import contextlib
import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
import train_sdclr
from data.memoboosted_cifar100 import momentum_weight
from losses.nt_xent import nt_xent
from models import SDCLR, PruneMask, build_model
from conftest import gpus_flag
from split.resolve import load_split

SUBSETS = 'cifar100_imbSub_with_subsets'
# The published commands of design 7 (README), before the data arguments.
PUBLISHED = {
    'SimCLR': (train.main, 'SimCLR --lr 0.5 --epochs 2000 --temperature 0.2 --weight_decay 5e-4'),
    'SDCLR': (train_sdclr.main, 'SDCLR --lr 0.5 --epochs 2000 --temperature 0.2 --weight_decay 1e-4'),
    'BCL-I': (train.main, 'BCL_I --bcl --rand_k 1 --lr 0.5 --epochs 2000 --temperature 0.2'),
    'BCL-D': (train_sdclr.main,
              'BCL_D --bcl --rand_k 2 --lr 0.5 --epochs 2000 --temperature 0.2 --weight_decay 1e-4'),
}
CHECKPOINT_KEYS = {'epoch', 'state_dict', 'optim', 'scheduler', 'momentum_loss', 'inputs',
                   'momentum_weight', 'rng', 'args', 'method'}


def tiny_split(synthetic_splits, size):
    """A `size`-image pre-training split inside the synthetic family (keeps CPU tests short)."""
    split_root, family = synthetic_splits
    name = f'{family}/{SUBSETS}/tiny{size}_D_i.npy'
    d_i = load_split(f'{family}/{SUBSETS}/cifar100_split1_D_i.npy', 2000, split_root)
    np.save(os.path.join(split_root, name), d_i[:: len(d_i) // size][:size])
    return name


@pytest.fixture(scope='module')
def small_args(synthetic_cifar, synthetic_splits, tmp_path_factory):
    def args(save_dir, size=32, epochs=2):
        return ['--epochs', str(epochs), '--batch_size', '16', '--num_workers', '0',
                '--data_folder', synthetic_cifar, '--trainSplit', tiny_split(synthetic_splits, size),
                '--save_dir', str(save_dir), '--eval_freq', '1000', '--save_freq', '1']
    return args


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.mark.parametrize('method', list(PUBLISHED))
def test_published_command_end_to_end(method, small_args, tmp_path, device):
    """On CUDA with --eval_freq 1: the in-training probe runs after each epoch (on CPU one probe
    run is in test_device.py: a ResNet-18 feature pass over 2,600 images costs ~10 s here)."""
    main, command = PUBLISHED[method]
    main(command.split() + small_args(tmp_path) + ['--gpus', gpus_flag(device)]
         + (['--eval_freq', '1'] if device.type == 'cuda' else []))
    folder = tmp_path / command.split()[0]
    checkpoint = load(folder / 'model.pt')
    assert CHECKPOINT_KEYS <= set(checkpoint)
    assert checkpoint['epoch'] == 2 and checkpoint['method'] == method
    assert (folder / 'model_1.pt').exists() and (folder / 'model_2.pt').exists()
    assert not list(folder.glob('*.tmp'))
    build_model(prune=method in ('SDCLR', 'BCL-D')).load_state_dict(checkpoint['state_dict'])

    loss = checkpoint['momentum_loss']
    assert loss.shape == (32,) and loss.dtype == torch.float32
    assert torch.isfinite(loss).all() and (loss > 0).all()
    first = load(folder / 'model_1.pt')
    if method.startswith('BCL'):
        # design 1.4: after epoch 1 the dataset holds the weights of epoch 1's momentum losses
        weight = first['momentum_weight']
        assert ((weight >= 0) & (weight <= 1)).all()
        assert np.allclose(weight.numpy(), momentum_weight(first['momentum_loss']))
        assert math.isclose(weight.min(), 0) or math.isclose(weight.max(), 1)
    else:
        assert first['momentum_weight'] is None

    log = (folder / 'log.txt').read_text()
    epoch_lines = [line for line in log.splitlines() if line.startswith('epoch ')]
    assert [line.split()[1] for line in epoch_lines] == ['1/2', '2/2']
    assert not any('full-shot' in line for line in epoch_lines)  # the probe has its own line, after the epoch's
    probe_lines = [line for line in log.splitlines() if line.startswith('probe after epoch ')]
    assert [line.split()[3] for line in probe_lines] == (['1/2:', '2/2:'] if device.type == 'cuda' else [])
    assert '32 images' in log and f"'weight_decay': {checkpoint['args']['weight_decay']}" in log
    if method in ('SDCLR', 'BCL-D'):  # design 3: mask recomputed each epoch at 90% sparsity
        assert all('sparsity 0.9000' in line for line in epoch_lines)


def test_learning_rate_follows_design_schedule(small_args, tmp_path, monkeypatch):
    """12 epochs of one step each: warm-up over 10 steps, then cosine to 1e-6 at the last."""
    used = []
    original_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]['lr'])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, 'step', recording_step)
    train.main(['lr', '--lr', '0.5'] + small_args(tmp_path, size=16, epochs=12))
    lr, lr_min = 0.5, 1e-6
    expected = [lr * s / 10 for s in range(1, 11)]  # step t uses the schedule at t + 1
    expected += [lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.5, 1.0)]
    assert np.allclose(used, expected, rtol=1e-12, atol=1e-15)
    assert math.isclose(used[-1], 1e-6)


def test_momentum_update_equals_per_sample_loop():
    """design 2 against the published per-sample loop (reads the previous epoch's value)."""
    beta, n = 0.97, 10
    momentum = train.MomentumLoss(n, beta, 'cpu')
    previous = {}
    rng = np.random.RandomState(0)
    for epoch in (1, 2, 3):
        current = {}
        for index in np.array_split(rng.permutation(n), 3):
            loss = torch.tensor([1.5, 1.5, 0.25, 1.5][:len(index)], dtype=torch.float32)  # repeated values
            momentum.update(torch.from_numpy(index), loss, epoch)
            for i, value in zip(index, loss.tolist()):
                current[i] = value if epoch == 1 else (1 - beta) * value + beta * previous[i]
        previous = current
        assert torch.allclose(momentum.value, torch.tensor([current[i] for i in range(n)]), atol=1e-7)


def test_sdclr_step_gradient_is_sum_of_both_losses():
    torch.manual_seed(0)
    model = SDCLR()
    PruneMask(model).magnitude_prune(0.9)
    images = torch.rand(8, 3, 16, 16)  # 4 samples, views on adjacent rows
    view1, view2, t = images[0::2], images[1::2], 0.2
    reference = [copy.deepcopy(model) for _ in range(2)]

    loss = train_sdclr.sdclr_step(model, images, t, contextlib.nullcontext)

    first, second = reference  # each loss differentiated on its own copy
    first.backbone.set_prune_flag(True)
    with torch.no_grad():
        pruned2 = first(view2)
    first.backbone.set_prune_flag(False)
    per_sample = nt_xent(first(view1), t, features2=pruned2, average=False)
    per_sample.mean().backward()
    second.backbone.set_prune_flag(False)
    with torch.no_grad():
        dense1 = second(view1)
    second.backbone.set_prune_flag(True)
    nt_xent(dense1, t, features2=second(view2)).backward()

    assert torch.allclose(loss, per_sample.detach(), atol=1e-6)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for (name, p1), (_, p2) in zip(first.named_parameters(), second.named_parameters()):
        expected = sum(g for g in (p1.grad, p2.grad) if g is not None)
        assert torch.allclose(grads[name], expected, atol=1e-6), name


def test_resume_continues_exactly(small_args, tmp_path, device):
    """4 epochs in one go == 2 epochs, then --resume from model_2.pt for the last 2 (BCL-D:
    pruning, momentum state, BCL weights, RandAugment draws and shuffling all continue). Bit-equal
    on CPU, and on CUDA with the default deterministic cuDNN (design 5)."""
    _, command = PUBLISHED['BCL-D']
    args = command.split() + small_args(tmp_path, epochs=4) + ['--save_freq', '2', '--gpus', gpus_flag(device)]
    train_sdclr.main(args)
    straight = load(tmp_path / 'BCL_D' / 'model_4.pt')
    resumed_dir = tmp_path / 'resumed'
    train_sdclr.main(args + ['--save_dir', str(resumed_dir), '--resume',
                             '--checkpoint', str(tmp_path / 'BCL_D' / 'model_2.pt')])
    resumed = load(resumed_dir / 'BCL_D' / 'model.pt')
    assert resumed['epoch'] == 4
    for key, value in straight['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), key
    assert torch.equal(straight['momentum_loss'], resumed['momentum_loss'])
    assert torch.equal(straight['momentum_weight'], resumed['momentum_weight'])
    for a, b in zip(straight['optim']['state'].values(), resumed['optim']['state'].values()):
        assert torch.equal(a['momentum_buffer'], b['momentum_buffer'])
    assert 'resumed from' in (resumed_dir / 'BCL_D' / 'log.txt').read_text()


def assert_same_training_state(a, b):
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    for name in ('momentum_loss', 'momentum_weight'):
        assert torch.equal(a[name], b[name]), name
    for x, y in zip(a['optim']['state'].values(), b['optim']['state'].values()):
        assert torch.equal(x['momentum_buffer'], y['momentum_buffer'])


def test_training_does_not_depend_on_loader_workers(small_args, tmp_path):
    """Issue 11: BCL-D for 4 epochs with --num_workers 0, with 2 persistent workers, and 2 epochs
    then --resume for 2 with persistent workers: bit-identical weights, SGD buffers, momentum
    losses and BCL weights (every view is keyed by (seed, epoch, position, view))."""
    _, command = PUBLISHED['BCL-D']
    base = command.split() + small_args(tmp_path, epochs=4) + ['--save_freq', '2']
    workers = ['--num_workers', '2', '--persistent_workers']
    runs = {}
    for name, extra in (('main', []), ('workers', workers)):
        train_sdclr.main(base + ['--save_dir', str(tmp_path / name)] + extra)
        runs[name] = load(tmp_path / name / 'BCL_D' / 'model.pt')
    # epochs 3-4 again, from the state the worker run saved after epoch 2, in fresh workers
    train_sdclr.main(base + ['--save_dir', str(tmp_path / 'resumed'), '--resume', '--checkpoint',
                             str(tmp_path / 'workers' / 'BCL_D' / 'model_2.pt')] + workers)
    runs['resumed'] = load(tmp_path / 'resumed' / 'BCL_D' / 'model.pt')
    assert 'resumed from' in (tmp_path / 'resumed' / 'BCL_D' / 'log.txt').read_text()
    assert [run['epoch'] for run in runs.values()] == [4, 4, 4]
    assert runs['main']['momentum_weight'].std() > 0.1  # BCL weights were in play
    assert_same_training_state(runs['main'], runs['workers'])
    assert_same_training_state(runs['main'], runs['resumed'])


@pytest.mark.parametrize('method', ['SimCLR', 'BCL-D'])  # SDCLR, BCL-I: the same ops (to keep CI short)
def test_gpu_aug_trains_the_same_run(method, small_args, tmp_path, device, monkeypatch):
    """--gpu_aug (views made on the training device by data/device_views.py) against the PIL
    loader path, 3 epochs of the published command with the same seed: the views are the same
    pixels (BCL's RandAugment at the weights of epochs 1 and 2 included), so the end states are
    bit-identical (on CUDA too, with the default deterministic cuDNN)."""
    import data.device_views
    made_on = []
    batched = data.device_views.make_views
    monkeypatch.setattr(data.device_views, 'make_views', lambda images, *rest: made_on.append(images.device)
                        or batched(images, *rest))
    main, command = PUBLISHED[method]
    base = command.split() + small_args(tmp_path, epochs=3) + ['--gpus', gpus_flag(device), '--save_freq', '0']
    runs = {}
    for name, extra in (('pil', []), ('gpu_aug', ['--gpu_aug'])):
        main(base + ['--save_dir', str(tmp_path / name)] + extra)
        runs[name] = load(tmp_path / name / command.split()[0] / 'model.pt')
    assert len(made_on) == 6 and all(d.type == device.type for d in made_on)  # 3 epochs x 2 batches, on device
    assert runs['gpu_aug']['args']['gpu_aug'] and runs['pil']['epoch'] == runs['gpu_aug']['epoch'] == 3
    for key, value in runs['pil']['state_dict'].items():
        assert torch.equal(value, runs['gpu_aug']['state_dict'][key]), key
    assert torch.equal(runs['pil']['momentum_loss'], runs['gpu_aug']['momentum_loss'])
    if 'BCL' in method:
        weight = runs['gpu_aug']['momentum_weight']
        assert torch.equal(runs['pil']['momentum_weight'], weight) and weight.std() > 0.1


@pytest.mark.parametrize('value, expected', [([], False), (['--resume'], True),
                                             (['--resume', 'True'], True), (['--resume', 'False'], False)])
def test_resume_flag_parsing(value, expected):
    assert train.get_parser(sdclr=False).parse_args(['x'] + value).resume is expected


def error_of(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1
    return lines[0]


def test_missing_data_folder(small_args, tmp_path, capsys):
    argv = ['x'] + small_args(tmp_path)
    argv[argv.index('--data_folder') + 1] = str(tmp_path / 'nowhere')
    message = error_of(train.main, argv, capsys)
    assert 'CIFAR-100 not found' in message and 'nowhere' in message


def test_missing_and_invalid_split(small_args, synthetic_splits, tmp_path, capsys):
    split_root, family = synthetic_splits
    argv = ['x'] + small_args(tmp_path)
    at = argv.index('--trainSplit') + 1
    argv[at] = f'{family}/{SUBSETS}/absent_D_i.npy'
    assert 'split.generate' in error_of(train.main, argv, capsys)
    argv[at] = f'{family}/{SUBSETS}/out_of_range_D_i.npy'
    np.save(os.path.join(split_root, argv[at]), np.array([0, 5, 2000]))
    assert 'dataset has 2000 images' in error_of(train.main, argv, capsys)


def test_resume_errors(small_args, tmp_path, capsys):
    argv = ['x'] + small_args(tmp_path, epochs=2)
    assert '--resume: no checkpoint' in error_of(train.main, argv + ['--resume'], capsys)
    train.main(argv)
    message = error_of(train.main, argv + ['--resume', '--epochs', '3'], capsys)
    assert '--epochs 2' in message
    message = error_of(train_sdclr.main, argv + ['--resume'], capsys)  # SimCLR run, SDCLR script
    assert 'SimCLR checkpoint: resume it with train.py' in message


def test_unwritable_save_dir(small_args, tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    assert 'cannot write to' in error_of(train.main, ['x'] + small_args(blocker), capsys)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(small_args, tmp_path, capsys):
    calls = []

    def step_going_nan(model, images, temperature, autocast):
        loss = train.simclr_step(model, images, temperature, autocast)
        calls.append(1)
        return loss * float('nan') if len(calls) == 6 else loss  # epoch 3, step 2

    argv = ['x'] + small_args(tmp_path, epochs=4)
    with pytest.raises(SystemExit):
        train.main(argv, step_fn=step_going_nan)
    message = capsys.readouterr().err
    assert 'loss is nan at epoch 3, step 2' in message
    assert load(tmp_path / 'x' / 'model.pt')['epoch'] == 2
    assert not (tmp_path / 'x' / 'model_3.pt').exists()


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, 'train.py', 'x', '--data_folder', str(tmp_path / 'none'),
                             '--save_dir', str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith('error: CIFAR-100 not found')
    assert 'Traceback' not in result.stderr
