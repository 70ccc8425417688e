"""The ImageNet-scale benchmarks end to end (design 9, issue 23): real JPEG folders in ImageNet's layout
with lists in the published format (data/synthetic.write_synthetic_imagenet), trained by train.py /
train_sdclr.py at 224 px with ResNet-50 and the ImageNet stem, evaluated by test.py. Tiny: 4 classes, a
dozen images, one epoch; each dataset runs another of the four methods.
"""
import json
import os
import re
import shutil
import uuid

import numpy as np
import pytest
import torch

import test as test_script
import train
import train_sdclr
from data.benchmarks import count_groups, get_benchmark
from data.image_list_datasets import MemoBoostedImageList, TwoViewImageList
from data.synthetic import write_synthetic_imagenet
from split.resolve import SPLIT_ROOT
from utils import InputError

CASES = {'imagenet100_lt': ('SimCLR', train, []), 'imagenet_lt': ('BCL-I', train, ['--bcl']),
         'imagenet_lt_exp': ('SDCLR', train_sdclr, []), 'places_lt': ('BCL-D', train_sdclr, ['--bcl'])}
PRUNE = {'imagenet100_lt': 0.3, 'imagenet_lt': 0.1, 'imagenet_lt_exp': 0.3, 'places_lt': 0.1}  # design 9.2


@pytest.fixture
def synthetic_family(request, tmp_path):
    """(dataset, the writer's result) of a family written into the real split/ folder, removed afterwards."""
    dataset = request.param
    family = f'_pytest_{dataset}_{uuid.uuid4().hex[:6]}'
    written = write_synthetic_imagenet(str(tmp_path / 'data'), SPLIT_ROOT, family, dataset=dataset, num_classes=4,
                                       head=5, tail=2, probe_per_class=2, test_per_class=2, seed=1)
    yield dataset, written
    shutil.rmtree(os.path.join(SPLIT_ROOT, family), ignore_errors=True)


def test_count_groups_on_hand_made_counts():
    """Design 9.4: Many > 100, Medium 20..100, Few < 20 images in the pre-training list."""
    many, medium, few = count_groups([101, 100, 20, 19, 0, 1280, 5])
    assert (many.tolist(), medium.tolist(), few.tolist()) == ([0, 5], [1, 2], [3, 4, 6])


@pytest.mark.parametrize('synthetic_family', sorted(CASES), indirect=True)
def test_image_list_benchmark_trains_and_evaluates(synthetic_family, tmp_path):
    dataset, written = synthetic_family
    method, script, extra = CASES[dataset]
    benchmark = get_benchmark(dataset)
    lists, root = written['lists'], written['data_root']
    train_list = lists['TRAIN']
    script.main(['run', '--dataset', dataset, '--data_folder', root, '--trainSplit', train_list, '--epochs', '1',
                 '--batch_size', '6', '--gpus', 'cpu', '--num_workers', '0', '--eval_freq', '1', '--save_freq', '0',
                 '--save_dir', str(tmp_path)] + extra)
    saved = torch.load(tmp_path / 'run' / 'model.pt', weights_only=True)
    args = saved['args']
    assert (saved['method'], args['dataset'], args['model'], args['num_class']) == (method, dataset, 'resnet50',
                                                                                   benchmark.num_classes)
    assert (args['lr'], args['weight_decay'], args['temperature'], args['rand_k']) == (0.5, 1e-4, 0.2, 2)
    assert args['prune_percent'] == (PRUNE[dataset] if method in ('SDCLR', 'BCL-D') else 0.0)
    conv1 = [v for k, v in saved['state_dict'].items() if k.endswith('conv1.weight') and 'layer' not in k]
    assert [tuple(w.shape) for w in conv1] == [(64, 3, 7, 7)]  # the ImageNet stem
    with open(train_list if os.path.isabs(train_list) else os.path.join(SPLIT_ROOT, train_list)) as f:
        images = sum(1 for line in f if line.strip())
    assert len(saved['momentum_loss']) == images
    if '--bcl' in extra:
        assert saved['momentum_weight'].shape == (images,) and saved['momentum_weight'].std() > 0
    with open(tmp_path / 'run' / 'metrics.jsonl') as f:
        record = [json.loads(line) for line in f][-1]
    # the in-training probe ran on the benchmark's probe list and the test list (4 classes, 2 test images each)
    assert record['epoch'] == 1 and 0 <= record['probe']['top1'] <= 100
    assert record['probe']['top1'] * 8 / 100 == pytest.approx(round(record['probe']['top1'] * 8 / 100))

    group = 'fewshot' if 'fewshot' in benchmark.probe_sets else '100shot'
    results = test_script.main(['--checkpoint', str(tmp_path / 'run' / 'model.pt'), '--data_folder', root,
                                f'--test_{group}', '--num_workers', '0', '--gpus', 'cpu', '--probe_epochs', '5',
                                '--output', str(tmp_path / 'results.json')]
                               + (['--prune'] if method in ('SDCLR', 'BCL-D') else []))
    assert (results['dataset'], results['network'], results['split']) == (dataset, 'resnet50', train_list)
    result = results[group]
    assert len(result['top1']) == 1 and 0 <= result['top1'][0] <= 100 and result['mean'] == result['top1'][0]
    # 4 classes of 5..2 pre-training images: all Few; Many and Medium hold no class
    assert 0 <= result['groups']['few'] <= 100 and np.isnan(result['groups']['many'])


@pytest.mark.parametrize('synthetic_family', ['places_lt'], indirect=True)
def test_image_list_views_are_keyed_and_decoded_at_their_own_size(synthetic_family):
    """Item i's views are a function of (seed, epoch, i); BCL's weights change them; each is 224 px."""
    dataset, written = synthetic_family
    benchmark = get_benchmark(dataset)
    image_list = benchmark.image_list(written['lists']['TRAIN'], written['data_root'])
    plain = TwoViewImageList(written['data_root'], image_list, benchmark.num_classes, seed=3)
    boosted = MemoBoostedImageList(written['data_root'], image_list, benchmark.num_classes, 2, 30, seed=3)
    boosted.momentum_weight.fill_(1.0)
    first, again = plain.__getitems__([0, 2]), plain.__getitems__([2])
    assert first[0][0].shape == (2, 3, 224, 224) and torch.equal(first[1][0], again[0][0])
    plain.set_epoch(1)
    assert not torch.equal(plain.__getitems__([2])[0][0], first[1][0])
    boosted.set_epoch(0)
    assert not torch.equal(boosted.__getitems__([2])[0][0], first[1][0])  # RandAugment with p = w = 1


@pytest.mark.parametrize('synthetic_family', sorted(CASES), indirect=True)
def test_gpu_aug_trains_the_loader_paths_run(synthetic_family, tmp_path, monkeypatch):
    """--gpu_aug (the views made on the device from loader workers' decoded JPEGs, issue 24) against the PIL
    loader path: each dataset's method (batch 6, 2 steps an epoch; one epoch, two for BCL, whose second draws
    RandAugment at the weights of the first) ends with bit-identical weights, BatchNorm statistics, momentum
    losses and BCL weights. The views are 64 px here
    (tests/small_image_views.py: ResNet-50 at 224 costs seconds a step); tests/test_image_list_device_views.py
    checks the 224-px views pixel for pixel."""
    from small_image_views import small_recipe
    monkeypatch.setattr(TwoViewImageList, 'recipe', small_recipe())
    dataset, written = synthetic_family
    method, script, extra = CASES[dataset]
    states = []
    for name, flags in (('pil', ['--num_workers', '0']), ('gpu_aug', ['--gpu_aug', '--num_workers', '2'])):
        script.main([name, '--dataset', dataset, '--data_folder', written['data_root'], '--trainSplit',
                     written['lists']['TRAIN'], '--epochs', '2' if '--bcl' in extra else '1', '--batch_size', '6',
                     '--gpus', 'cpu', '--eval_freq', '0', '--save_freq', '0', '--save_dir', str(tmp_path)]
                    + extra + flags)
        states.append(torch.load(tmp_path / name / 'model.pt', weights_only=True))
    pil, gpu_aug = states
    assert (pil['method'], gpu_aug['args']['gpu_aug']) == (method, True)
    for key, value in pil['state_dict'].items():
        assert torch.equal(value, gpu_aug['state_dict'][key]), key
    assert torch.equal(pil['momentum_loss'], gpu_aug['momentum_loss'])
    if '--bcl' in extra:
        assert pil['momentum_weight'].std() > 0 and torch.equal(pil['momentum_weight'], gpu_aug['momentum_weight'])


def test_full_shot_is_refused_where_a_benchmark_has_no_full_shot_list():
    import argparse
    from utils import InputError
    flags = dict(test_fullshot=True, test_100shot=False, test_50shot=False, test_fewshot=False, protocol='bcl')
    with pytest.raises(InputError, match='Places-LT has no full-shot list: its probe sets are --test_100shot'):
        test_script.wanted_groups(argparse.Namespace(**flags), get_benchmark('places_lt'))
    assert test_script.wanted_groups(argparse.Namespace(**flags), get_benchmark('imagenet100_lt')) == ['fullshot']
    assert test_script.wanted_groups(argparse.Namespace(**flags), get_benchmark('cifar10')) == ['fullshot']


@pytest.mark.parametrize('synthetic_family', ['imagenet100_lt'], indirect=True)
def test_sdclr_protocol_on_image_lists(synthetic_family, tmp_path, monkeypatch):
    """test.py --protocol sdclr on ImageNet-100-LT (design 9.4): a full-shot and a few-shot linear layer on a
    ResNet-50 checkpoint, selected on the val list (written by the synthetic writer), 2 epochs each here (the
    schedules are tests/test_eval_sdclr.py's; the real ones are 30 and 100 epochs)."""
    import dataclasses
    import eval_sdclr
    from models import build_model
    dataset, written = synthetic_family
    benchmark = get_benchmark(dataset)
    short = dict(epochs=2, milestones=(1,), test_freq=1)
    monkeypatch.setattr(eval_sdclr, 'IMAGENET_PROTOCOL', dataclasses.replace(
        eval_sdclr.IMAGENET_PROTOCOL, batch=4, full_shot=short, few_shot=short))
    torch.manual_seed(0)
    model = build_model(True, 'resnet50', benchmark.num_classes, **benchmark.model_options(True))
    torch.save({'state_dict': model.state_dict(), 'epoch': 1,
                'args': {'dataset': dataset, 'trainSplit': written['lists']['TRAIN'], 'model': 'resnet50'}},
               tmp_path / 'model.pt')
    results = test_script.main(['--checkpoint', str(tmp_path / 'model.pt'), '--prune', '--data_folder',
                                written['data_root'], '--protocol', 'sdclr', '--test_fullshot', '--test_fewshot',
                                '--num_workers', '0', '--gpus', 'cpu', '--output', str(tmp_path / 'sdclr.json')])
    assert (results['dataset'], results['protocol'], results['probe_epochs']) == (dataset, 'sdclr', None)
    full, few = results['fullshot'], results['fewshot']
    # 4 classes (of 100) with 2 test images each: accuracies are multiples of 12.5 %
    assert 0 <= full['top1'] <= 100 and full['top1'] % 12.5 == 0 and len(full['per_class']) == benchmark.num_classes
    assert full['best_epoch'] == [1] or full['best_epoch'] == [2]
    assert len(full['val_top5']) == 1 and 0 <= full['val_top5'][0] <= 100
    assert len(few['top1']) == 1 and few['mean'] == few['top1'][0] and 'groups' in few
    assert json.load(open(tmp_path / 'sdclr.json'))['fullshot']['top1'] == full['top1']


def test_sdclr_protocol_is_refused_where_sdclr_did_not_report_it():
    import argparse
    from utils import InputError
    flags = dict(test_fullshot=False, test_100shot=True, test_50shot=False, test_fewshot=False, protocol='sdclr')
    with pytest.raises(InputError, match='ImageNet-LT has no --protocol sdclr: use one of bcl'):
        test_script.wanted_groups(argparse.Namespace(**flags), get_benchmark('imagenet_lt'))


@pytest.mark.parametrize('synthetic_family', ['imagenet_lt'], indirect=True)
def test_a_family_missing_its_probe_list_is_one_line_before_training(synthetic_family, tmp_path, capsys):
    """train.py and test.py's loading (evaluation_sets) name the generated family's missing list, its full path and
    data.synthetic's command, before any work (no run folder written)."""
    dataset, written = synthetic_family
    benchmark = get_benchmark(dataset)
    missing = os.path.join(SPLIT_ROOT, written['lists']['100shot'])
    os.remove(missing)
    family = written['lists']['TRAIN'].split('/')[0]
    with pytest.raises(SystemExit):
        train.main(['run', '--dataset', dataset, '--data_folder', written['data_root'], '--trainSplit',
                    written['lists']['TRAIN'], '--epochs', '1', '--gpus', 'cpu', '--num_workers', '0',
                    '--save_dir', str(tmp_path / 'runs')])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'split.generate' not in err
    assert f'lacks its 100-shot probe list {missing}:' in err
    assert f'`python -m data.synthetic DATA --dataset imagenet_lt --family {family}`' in err
    assert not os.path.exists(tmp_path / 'runs' / 'run' / 'model.pt')
    with pytest.raises(InputError, match=f'lacks its 100-shot probe list {re.escape(missing)}:'):
        benchmark.evaluation_sets(written['data_root'], written['lists']['TRAIN'], ['100shot'], 'bcl')


@pytest.mark.parametrize('synthetic_family', ['imagenet_lt'], indirect=True)
def test_a_published_list_copied_under_a_folder_needs_the_family_lists_or_another_name(synthetic_family, tmp_path,
                                                                                     capsys):
    """`--trainSplit mine/ImageNet_LT/ImageNet_LT_train.txt` (the published name under a folder of one's own) is a
    family: without its probe and test lists, one line names both and the two ways out; the same list under
    another name is a list of one's own (its probes are the published lists)."""
    dataset, written = synthetic_family
    benchmark = get_benchmark(dataset)
    mine = f'_pytest_mine_{uuid.uuid4().hex[:6]}'
    copy = f'{mine}/{benchmark.default_split}'
    os.makedirs(os.path.dirname(os.path.join(SPLIT_ROOT, copy)))
    try:
        shutil.copy(os.path.join(SPLIT_ROOT, written['lists']['TRAIN']), os.path.join(SPLIT_ROOT, copy))
        with pytest.raises(SystemExit):
            train.main(['run', '--dataset', dataset, '--data_folder', written['data_root'], '--trainSplit', copy,
                        '--epochs', '1', '--eval_freq', '0', '--gpus', 'cpu', '--num_workers', '0',
                        '--save_dir', str(tmp_path / 'runs')])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        for name in (benchmark.probe_lists['100shot'], benchmark.test_list):
            assert os.path.join(SPLIT_ROOT, mine, name) in err
        assert f'under another name (e.g. --trainSplit {mine}/train.txt) to probe on the published lists' in err
        renamed = f'{mine}/train.txt'
        shutil.move(os.path.join(SPLIT_ROOT, copy), os.path.join(SPLIT_ROOT, renamed))
        assert benchmark.family_prefix(renamed) == ''
        assert len(benchmark.training_set(written['data_root'], renamed, False, 2, 30, 0)) == 12
    finally:
        shutil.rmtree(os.path.join(SPLIT_ROOT, mine), ignore_errors=True)
