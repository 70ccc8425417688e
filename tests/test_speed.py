"""The fast path of issue 6 keeps the method: bf16 autocast, channels_last and torch.compile
give the loss of the float32 eager step; the loss and the momentum state stay float32;
persistent loader workers still see each epoch's BCL weights; test.py --amp bf16 keeps its
features and probe logits float32.

CPU, small inputs: bf16 convolutions run ~20x slower than float32 on a CPU without native bf16,
and inductor needs ~50 s on 2 cores (cold cache) to compile SimCLR's ResNet-18.
"""
import contextlib
import copy
import importlib.util
import json
import os
import shutil
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn

import eval_cifar
import train
import train_sdclr
import data.benchmarks
from data.memoboosted_cifar100 import MemoBoostedCIFAR, momentum_weight
from data.synthetic import write_synthetic_cifar
from models import SDCLR, PruneMask, SimCLR, build_model
from split.generate import main as generate_splits
from split.resolve import SPLIT_ROOT, load_split
from utils import compile_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings('ignore:CUDA is not available')
FLOAT32 = contextlib.nullcontext


def bf16_on(device):
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def model_and_step(sdclr):
    """A seeded SimCLR, or an SDCLR pruned at 90% (design 3), and its training step."""
    torch.manual_seed(0)
    if sdclr:
        model = SDCLR()
        PruneMask(model).magnitude_prune(0.9)
        return model, train_sdclr.sdclr_step
    return SimCLR(), train.simclr_step


def two_view_batch(samples, size=16):
    """[2 * samples, 3, size, size] in [0, 1], the two views of sample i on rows 2i, 2i + 1."""
    return torch.rand(2 * samples, 3, size, size, generator=torch.Generator().manual_seed(1))


def record_first_conv_input(model, record):
    return model.backbone.conv1.register_forward_hook(lambda module, inputs, output: record.append(
        (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype)))


@pytest.mark.parametrize('sdclr', [False, True], ids=['simclr_step', 'sdclr_step'])
def test_bf16_step_loss_within_2_percent_and_state_float32(sdclr, device):
    """8 samples: with 2-4 the projection head's BatchNorm over so few rows turns bf16 rounding
    into sign flips (SDCLR at 4 samples: 3.4% off); at 8 the step is within 0.5% here (CPU)."""
    model, step = model_and_step(sdclr)
    model = model.to(device)
    images = two_view_batch(samples=8).to(device)
    bf16 = bf16_on(device)
    reference = step(copy.deepcopy(model), images, 0.2, FLOAT32)
    record = []
    record_first_conv_input(model, record)
    loss = step(model, images, 0.2, bf16)
    assert record and all(dtype == torch.bfloat16 for _, dtype in record)  # the network ran in bf16
    assert loss.dtype == reference.dtype == torch.float32  # design 4: the loss in float32
    assert abs(loss.mean() - reference.mean()) <= 0.02 * reference.mean()
    assert not torch.equal(loss, reference)  # bf16 did change the computation
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)

    momentum = train.MomentumLoss(10, 0.97, device)
    index = torch.tensor([9, 1, 7, 3, 5, 0, 8, 2], device=device)
    with bf16():  # the state stays float32 even if updated inside autocast with a bf16 loss
        momentum.update(index, loss, epoch=1)
        momentum.update(index, loss.bfloat16(), epoch=2)
    assert momentum.value.dtype == torch.float32
    expected = 0.03 * loss.bfloat16().float() + 0.97 * loss
    assert torch.allclose(momentum.value[index], expected, atol=1e-6)


@pytest.mark.parametrize('sdclr', [False, True], ids=['simclr_step', 'sdclr_step'])
@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_channels_last_gives_the_same_loss(sdclr, dtype, tolerance, device):
    """In float32 the two layouts use different convolution kernels: ResNet-18 losses differ by
    0.7-1.9e-5 here (rounding, amplified by BatchNorm over a small batch), so 1e-4; in float64 a
    layout bug (wrong view order, a mixed-up slice) would still show, rounding would not."""
    model, step = model_and_step(sdclr)
    model = model.to(device, dtype)
    images = two_view_batch(samples=4).to(device, dtype)
    reference = step(copy.deepcopy(model), images, 0.2, FLOAT32)
    model = model.to(memory_format=torch.channels_last)
    record = []
    record_first_conv_input(model, record)
    loss = step(model, images.contiguous(memory_format=torch.channels_last), 0.2, FLOAT32)
    assert record and all(channels_last for channels_last, _ in record)
    assert loss.dtype == dtype
    assert torch.allclose(loss, reference, atol=tolerance, rtol=0)


def inductor_error():
    """None if torch.compile with inductor works on this machine, else why not."""
    try:
        compiled = torch.compile(lambda x: torch.sin(x) * 2, backend='inductor', fullgraph=True)
        compiled(torch.ones(4))
        return None
    except Exception as error:  # no C++ compiler, unsupported platform...
        return f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'


@pytest.fixture(scope='module')
def compile_works():
    error = inductor_error()
    if error:
        pytest.skip(f'torch.compile (inductor) cannot compile on this machine: {error}')


def compiled_step_loss(model, module, step, images):
    """compile_model(module) in place, then one step; compile failures raise here instead of
    falling back to eager (compile_model turns suppress_errors on), so a silent fallback can't pass."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    keys = set(model.state_dict())
    compile_model(module)
    graphs = counters['stats']['unique_graphs']
    with torch._dynamo.config.patch(suppress_errors=False):
        loss = step(model, images, 0.2, FLOAT32)
    assert counters['stats']['unique_graphs'] > graphs  # something was really compiled
    assert set(model.state_dict()) == keys  # checkpoints keep their key names
    return loss


def test_compile_whole_simclr_model_gives_the_eager_loss(compile_works, device):
    """utils.compile_model on all of SimCLR (ResNet-18 + head): ~50 s of compilation on 2 cores."""
    model, step = model_and_step(sdclr=False)
    model = model.to(device)
    images = two_view_batch(samples=2).to(device)
    reference = step(copy.deepcopy(model), images, 0.2, FLOAT32)
    loss = compiled_step_loss(model, model, step, images)
    assert torch.allclose(loss, reference, atol=1e-4, rtol=0)


def test_compiled_sdclr_head_follows_the_prune_flag(compile_works, device):
    """SDCLR's head (at backbone.fc) holds paired BNs switched by the prune flag: the compiled
    graphs must follow the flag through sdclr_step's three passes (pruned without gradient, dense,
    pruned). Only the head is compiled (all of SDCLR would be three ResNet-18 graphs)."""
    model, step = model_and_step(sdclr=True)
    model = model.to(device)
    images = two_view_batch(samples=2).to(device)
    reference = step(copy.deepcopy(model), images, 0.2, FLOAT32)
    loss = compiled_step_loss(model, model.backbone.fc, step, images)
    assert torch.allclose(loss, reference, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- test.py --amp bf16

_spec = importlib.util.spec_from_file_location('bcl_test_script_speed', os.path.join(ROOT, 'test.py'))
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
TINY = f'_pytest_speed_{uuid.uuid4().hex[:8]}'


class SmallNet(nn.Module):
    """Stands in for the ResNet in test.py (any module with `features` works there): extracting
    ~400 images with bf16 convolutions through ResNet-18 takes minutes on this CPU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def features(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)  # [B, 256]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """400 train / 100 test images and a split family (train list 3 per class)."""
    data = write_synthetic_cifar(str(tmp_path_factory.mktemp('speed_cifar')), 'cifar100', 4, 1, seed=1)
    generate_splits(['--data_folder', data, '--name', TINY, '--val_per_class', '1', '--train_per_class', '3',
                     '--imbalance_ratio', '3', '--shot_sizes', '2', '1'])
    yield data
    shutil.rmtree(os.path.join(SPLIT_ROOT, TINY), ignore_errors=True)


def test_test_script_bf16_keeps_features_and_probe_logits_float32(tiny, tmp_path, monkeypatch):
    torch.manual_seed(0)
    checkpoint = tmp_path / 'small.pt'
    torch.save(SmallNet().state_dict(), checkpoint)
    monkeypatch.setattr(test_script, 'build_model', lambda prune, network, num_class, **model: SmallNet())
    extracted, logit_dtypes = [], []
    extract, probe_logits = test_script.extract_features, eval_cifar._probe_logits

    def recording_extract(model, dataset, device, **kwargs):
        features, labels = extract(model, dataset, device, **kwargs)
        extracted.append((kwargs, features))
        return features, labels

    def recording_logits(*args):
        logits = probe_logits(*args)
        logit_dtypes.append(logits.dtype)
        return logits
    monkeypatch.setattr(test_script, 'extract_features', recording_extract)
    monkeypatch.setattr(eval_cifar, '_probe_logits', recording_logits)

    def run(flags, output):
        return test_script.main(['--checkpoint', str(checkpoint), '--data_folder', tiny, '--num_workers', '0',
                                 '--probe_epochs', '5', '--test_fullshot', '--test_100shot', '--test_50shot',
                                 '--trainSplit', f'{TINY}/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy',
                                 '--output', str(output)] + flags)
    run([], tmp_path / 'float32.json')
    float32_features = [features for _, features in extracted]
    extracted.clear()
    results = run(['--amp', 'bf16', '--channels_last'], tmp_path / 'bf16.json')

    assert len(extracted) == 2  # still one pass over the train pool and one over the test set
    for (kwargs, features), reference in zip(extracted, float32_features):
        assert {k: v for k, v in kwargs.items() if k != 'desc'} == {'num_workers': 0, 'amp': 'bf16',
                                                                    'channels_last': True}
        assert features.dtype == torch.float32
        assert torch.equal(features.bfloat16().float(), features)  # computed in bf16...
        assert not torch.equal(reference.bfloat16().float(), reference)  # ...the float32 run was not
        assert torch.allclose(features, reference, rtol=0.02, atol=0.02)
    assert logit_dtypes and all(dtype == torch.float32 for dtype in logit_dtypes)
    saved = json.loads((tmp_path / 'bf16.json').read_text())
    assert saved == results and saved['amp'] == 'bf16'
    assert 0 <= saved['fullshot']['top1'] <= 100 and len(saved['100shot']['top1']) == 5


# ----------------------------------------------------------------------------- persistent workers

class RecordingMemoBoosted(MemoBoostedCIFAR):
    """Records, in shared memory, the BCL weight a loader worker read for sample i at its first
    and second read (epoch 1 and epoch 2), and which process read it."""
    created = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.indices)
        self.reads = torch.zeros(n, dtype=torch.long).share_memory_()
        self.seen_weight = torch.full((2, n), float('nan'), dtype=torch.float64).share_memory_()
        self.seen_pid = torch.zeros(2, n, dtype=torch.long).share_memory_()
        RecordingMemoBoosted.created.append(self)

    def view_params(self, positions, momentum_weight=None, sizes=None):
        for i in positions.tolist():
            read = int(self.reads[i])
            if read < 2:
                self.seen_weight[read, i] = float(self.momentum_weight[i])
                self.seen_pid[read, i] = os.getpid()
            self.reads[i] += 1
        return super().view_params(positions, momentum_weight, sizes)


def test_persistent_workers_see_each_epochs_bcl_weights(synthetic_cifar, synthetic_splits, tmp_path, monkeypatch):
    """train.py --bcl with every fast flag but compile, 2 epochs: the weights the (same, persistent)
    workers use in epoch 2 are epoch 1's update, not the stale zeros they started with."""
    split_root, family = synthetic_splits
    d_i = load_split(f'{family}/cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy', 2000, split_root)
    folder = f'_pytest_speed4_{uuid.uuid4().hex[:8]}'  # its own folder: the family's file list is tested
    name = f'{folder}/speed4_D_i.npy'
    os.makedirs(os.path.join(split_root, folder))
    np.save(os.path.join(split_root, name), d_i[::len(d_i) // 4][:4])
    monkeypatch.setattr(data.benchmarks, 'MemoBoostedCIFAR', RecordingMemoBoosted)
    RecordingMemoBoosted.created.clear()
    try:
        train.main(['BCL_fast', '--bcl', '--epochs', '2', '--batch_size', '2', '--num_workers', '2',
                    '--data_folder', synthetic_cifar, '--trainSplit', name, '--save_dir', str(tmp_path),
                    '--eval_freq', '1000', '--save_freq', '1', '--amp', 'bf16', '--channels_last',
                    '--persistent_workers'])
    finally:
        shutil.rmtree(os.path.join(split_root, folder), ignore_errors=True)
    (dataset,) = RecordingMemoBoosted.created
    first = torch.load(tmp_path / 'BCL_fast' / 'model_1.pt', map_location='cpu', weights_only=False)
    last = torch.load(tmp_path / 'BCL_fast' / 'model_2.pt', map_location='cpu', weights_only=False)

    assert dataset.reads.tolist() == [2, 2, 2, 2]  # each sample once per epoch
    assert torch.equal(dataset.seen_weight[0], torch.zeros(4, dtype=torch.float64))  # epoch 1: all zero
    epoch1_update = torch.from_numpy(momentum_weight(first['momentum_loss']))
    assert torch.equal(first['momentum_weight'], epoch1_update)
    assert torch.equal(dataset.seen_weight[1], epoch1_update)  # epoch 2 used epoch 1's update
    assert epoch1_update.min() == 0 or epoch1_update.max() == 1  # design 1.4: w = z / max|z| / 2 + 1/2
    assert len(set(epoch1_update.tolist())) == 4
    pids = dataset.seen_pid
    assert os.getpid() not in pids.tolist()[0] + pids.tolist()[1]  # read in the workers
    assert set(pids[0].tolist()) == set(pids[1].tolist())  # by the same (persistent) workers
    assert last['args']['amp'] == 'bf16' and last['args']['channels_last'] and last['args']['persistent_workers']
    assert last['momentum_loss'].dtype == torch.float32 and torch.isfinite(last['momentum_loss']).all()
    build_model(prune=False).load_state_dict(last['state_dict'])
