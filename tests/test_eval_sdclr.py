"""eval_sdclr.py: SDCLR's linear evaluation against the straightforward published loop
(benchmarks/sdclr_probe.reference_probe), its views against torchvision's PIL ops, its lr
schedule against MultiStepLR, its model selection, and no host read in its training loop."""
import copy
import dataclasses
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import functional as TF

import eval_sdclr
from eval_sdclr import CIFAR_VIEWS, FEW_SHOT, FULL_SHOT, LR, keep_best, lr_at, sdclr_probe, train_fc
from models import build_model
from preemption import Stopped

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from sdclr_probe import random_set, reference_probe  # noqa: E402

CPU = torch.device('cpu')


class TinyNet(nn.Module):
    """A small backbone with what matters here: BatchNorm (random running statistics, so that a
    module left in train mode changes the features) and spatial features (a wrong crop or flip
    changes them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten())
        self.body[1].running_mean.uniform_(-0.5, 0.5)
        self.body[1].running_var.uniform_(0.5, 2)

    def features(self, x):
        return self.body(x)


def data(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [random_set(n, 10, generator) for n in sizes]


def test_fast_probe_equals_reference_loop():
    """300 images: chunks of 256 (two fc batches) and 44 against per-batch forwards of 128, 128,
    44, over 4 epochs with the lr dropping twice. Measured on the 2-core CPU: the fc weights
    (|w| up to ~20) are bit-identical (max abs difference 0.0). Shifting the lr schedule by one
    epoch, dropping momentum, or flipping the other way moves them by > 1; the tolerance (1e-4)
    only leaves room for another CPU's summation order."""
    model = TinyNet()
    sets = data((300, 100, 100))
    settings = dict(epochs=4, milestones=(2, 3), test_freq=1, seed=3)
    fast = sdclr_probe(model, *sets, 10, CPU, chunk=256, **settings)
    reference = reference_probe(model, *sets, 10, CPU, **settings)
    for fc in ('fc', 'last_fc'):
        for name in ('weight', 'bias'):
            torch.testing.assert_close(fast[fc][name], reference[fc][name], rtol=0, atol=1e-4)
    assert fast['best_epoch'] == reference['best_epoch']
    assert fast['top1'] == pytest.approx(reference['top1'])
    assert fast['top5'] == pytest.approx(reference['top5'])
    np.testing.assert_allclose(fast['per_class'], reference['per_class'], rtol=1e-6)
    assert fast['val_top1'] == pytest.approx(reference['val_top1'])


def test_resnet18_dense_branch_equals_reference_and_is_left_unchanged():
    """The real network (SDCLR ResNet-18, dense branch) on 64 images for 2 epochs: the same fc as
    the reference loop (measured: max abs difference 0.0), and the model comes back in its mode
    with its weights and BatchNorm statistics untouched."""
    model = build_model(True, 'resnet18', 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sets = data((64, 32, 32))
    settings = dict(epochs=2, milestones=(1,), test_freq=1, seed=0)
    fast = sdclr_probe(model, *sets, 10, CPU, **settings)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reference = reference_probe(model, *sets, 10, CPU, **settings)
    torch.testing.assert_close(fast['last_fc']['weight'], reference['last_fc']['weight'], rtol=0, atol=1e-4)
    assert (fast['best_epoch'], fast['top1']) == (reference['best_epoch'], pytest.approx(reference['top1']))
    assert set(fast) >= {'top1', 'top5', 'per_class', 'best_epoch', 'val_top1'} and fast['per_class'].shape == (10,)


def test_views_equal_torchvision_pil_ops():
    """Every corner offset (0 and 8), a middle one, flips on and off, and a non-square image
    (a swapped height and width would show): pixel for pixel torchvision's pad + crop + hflip +
    to_tensor; the evaluation views are to_tensor."""
    generator = torch.Generator().manual_seed(0)
    params = torch.tensor([(top, left, flip) for top in (0, 3, 8) for left in (0, 5, 8) for flip in (0, 1)])
    for height, width in ((32, 32), (20, 28)):
        images = torch.randint(0, 256, (len(params), height, width, 3), dtype=torch.uint8, generator=generator)
        views = CIFAR_VIEWS.train_views(images, params)
        for image, view, (top, left, flip) in zip(images.numpy(), views, params.tolist()):
            pil = TF.crop(TF.pad(TF.to_pil_image(image), 4), top, left, height, width)
            assert torch.equal(view, TF.to_tensor(TF.hflip(pil) if flip else pil)), (top, left, flip)
        assert torch.equal(CIFAR_VIEWS.eval_views(images), torch.stack([TF.to_tensor(i) for i in images.numpy()]))
    draws = CIFAR_VIEWS.draw(2000, generator)
    assert set(draws[:, :2].flatten().tolist()) == set(range(9)) and set(draws[:, 2].tolist()) == {0, 1}


def test_shared_draws():
    """What the reference loop takes from eval_sdclr, so the equality test cannot check it: a
    fresh permutation each epoch, the fc's Normal(0, 0.01) weights and zero bias."""
    generator = torch.Generator().manual_seed(0)
    orders = [eval_sdclr.epoch_draws(1000, CIFAR_VIEWS, generator)[0] for _ in range(2)]
    assert all(torch.equal(o.sort().values, torch.arange(1000)) for o in orders)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], torch.arange(1000))
    weight, bias = eval_sdclr.initial_fc(512, 100, generator)
    assert weight.shape == (100, 512) and torch.equal(bias, torch.zeros(100))
    assert abs(weight.mean().item()) < 1e-3 and weight.std().item() == pytest.approx(0.01, rel=0.02)


@pytest.mark.parametrize('protocol', [FULL_SHOT, FEW_SHOT])
def test_lr_schedule_is_multisteplr_stepped_at_epoch_start(protocol):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(protocol['milestones']), gamma=0.1)
    published = []
    for _ in range(protocol['epochs']):
        optimizer.step()  # (only to keep torch from warning about the order)
        scheduler.step()  # the published loop: at the start of the epoch
        published.append(optimizer.param_groups[0]['lr'])
    assert [lr_at(e, protocol['milestones']) for e in range(1, protocol['epochs'] + 1)] == published
    first, second = protocol['milestones']
    assert published[first - 2] == 30 and published[first - 1] == pytest.approx(3)
    assert published[second - 1] == pytest.approx(0.3) and published[-1] == pytest.approx(0.3)


def test_keep_best_takes_strictly_higher_only():
    """Validation hits 3, 5, 5, 4: the fc of epoch 2 is kept (a tie or a drop keeps the earlier)."""
    weights = [torch.full((2, 3), float(e)) for e in range(5)]
    best = (torch.tensor(-1), torch.tensor(0), weights[0], weights[0][0])
    for epoch, hits in zip((1, 2, 3, 4), (3, 5, 5, 4)):
        best = keep_best(best, torch.tensor(hits), epoch, weights[epoch], weights[epoch][0])
    assert (best[0].item(), best[1].item()) == (5, 2)
    assert torch.equal(best[2], weights[2]) and torch.equal(best[3], weights[2][0])


def test_selected_fc_is_the_best_epochs():
    """End to end: the validation top-1 drops after its best epoch, and the returned fc is the fc
    a run stopped at that epoch ends with (the same draws), not the last one."""
    model, sets = TinyNet(), data((200, 100, 100), seed=1)
    settings = dict(milestones=(5,), test_freq=1, seed=0)
    result = sdclr_probe(model, *sets, 10, CPU, epochs=6, **settings)
    history = list(result['val_history'].values())
    best = int(np.argmax(history)) + 1  # the first maximum
    assert best < 6 and min(history[best:]) < history[best - 1], history  # the case this test is for
    assert (result['best_epoch'], result['val_top1']) == (best, max(history))
    stopped = sdclr_probe(model, *sets, 10, CPU, epochs=best, **settings)
    assert torch.equal(result['fc']['weight'], stopped['last_fc']['weight'])
    assert not torch.equal(result['fc']['weight'], result['last_fc']['weight'])


def _features_of(model, sets):
    val_features = eval_sdclr._features(model, CIFAR_VIEWS.eval_views(sets[1][0]), 'none', torch.contiguous_format)
    return val_features, sets[1][1]


def test_training_reads_no_device_value(monkeypatch):
    """train_fc on the CPU with every way of reading a tensor on the host made to raise: its steps,
    draws and model selection never read one (on CUDA that would be a sync per step)."""
    model, sets = TinyNet().eval(), data((300, 50, 1))
    val_features, val_labels = _features_of(model, sets)

    def read(*args, **kwargs):
        raise AssertionError('host read of a tensor')
    with monkeypatch.context() as patch:
        for name in ('item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', '__index__'):
            patch.setattr(torch.Tensor, name, read)
        with pytest.raises(AssertionError):
            torch.zeros(()).item()
        fc = train_fc(model, sets[0], val_features, val_labels, 10, epochs=3, milestones=(2,), test_freq=1,
                      chunk=128)
    assert fc['val_correct'].shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_training_does_not_sync_on_cuda():
    """CUDA's own check (sync debug mode 'error'): no synchronising call in train_fc."""
    device = torch.device('cuda')
    model = TinyNet().to(device).eval()
    sets = [(images.to(device), labels.to(device)) for images, labels in data((300, 50, 1))]
    val_features, val_labels = _features_of(model, sets)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        fc = train_fc(model, sets[0], val_features, val_labels, 10, epochs=3, milestones=(2,), test_freq=1,
                      chunk=128)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert fc['val_correct'].shape == (3,)


def test_stop_request_ends_the_probe():
    class Requested:
        requested = 'SIGTERM'
    with pytest.raises(Stopped):
        sdclr_probe(TinyNet(), *data((10, 10, 10)), 10, CPU, epochs=2, milestones=(1,), test_freq=1,
                    stop=Requested())


def reference_image_probe(model, data_root, lists, num_class, epochs, milestones, test_freq, batch, seed):
    """SDCLR's train_imagenet.py loop written out (design 9.4): each JPEG opened with PIL and made a view by
    torchvision's Compose per item, nn.Linear, SGD, MultiStepLR stepped after each epoch, the fc selected
    on the validation top-5 (strictly higher; from -1 as eval_sdclr, see sdclr_probe). Only the draws are
    shared with eval_sdclr: the epoch order and one torch seed per image and epoch."""
    from PIL import Image
    from torchvision import transforms

    def read(name):
        with open(os.path.join(lists['root'], name)) as f:
            return [(os.path.join(data_root, rel), int(label)) for rel, label in (line.split() for line in f)]

    def open_rgb(path):
        with Image.open(path) as image:
            return image.convert('RGB')
    train, val, test = read(lists['train']), read(lists['val']), read(lists['test'])
    train_view = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor()])
    test_view = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])

    def logits_of(fc, items):
        with torch.no_grad():
            return (fc(model.features(torch.stack([test_view(open_rgb(p)) for p, _ in items]))),
                    torch.tensor([label for _, label in items]))
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    dim = model.features(torch.zeros(1, 3, 224, 224)).shape[1]
    fc = nn.Linear(dim, num_class)
    weight, bias = eval_sdclr.initial_fc(dim, num_class, generator)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    optimizer = torch.optim.SGD(fc.parameters(), lr=LR, momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    best_acc, best_state, best_epoch, history = -1, None, 0, {}
    for epoch in range(1, epochs + 1):
        order, seeds = eval_sdclr.epoch_draws(len(train), eval_sdclr.IMAGENET_PROTOCOL.views, generator)
        for start in range(0, len(train), batch):
            views, labels = [], []
            for i in order[start:start + batch].tolist():
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seeds[i, 0]))
                    views.append(train_view(open_rgb(train[i][0])))
                labels.append(train[i][1])
            with torch.no_grad():
                features = model.features(torch.stack(views))
            loss = F.cross_entropy(fc(features), torch.tensor(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if epoch % test_freq == 0:
            logits, labels = logits_of(fc, val)
            acc = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item() * 100
            history[epoch] = acc
            if acc > best_acc:
                best_acc, best_state, best_epoch = acc, copy.deepcopy(fc.state_dict()), epoch
    last_fc = {k: v.detach().clone() for k, v in fc.state_dict().items()}
    fc.load_state_dict(best_state)
    logits, labels = logits_of(fc, test)
    return {'top1': (logits.argmax(1) == labels).float().mean().item() * 100, 'best_epoch': best_epoch,
            'val_top5': best_acc, 'val_history': history, 'fc': best_state, 'last_fc': last_fc}


def test_imagenet_probe_equals_reference_loop(tmp_path):
    """SDCLR's ImageNet protocol (eval_sdclr.IMAGENET_PROTOCOL) on real JPEGs of varied sizes: 16 probe-train
    images in chunks of 8 (loader workers make the views) against per-batch forwards of 4 (the batch cut to 4
    here so that an epoch has four fc steps), 4 epochs with the lr dropping twice, 8 classes (so that the
    top-5 selection can choose: it keeps epoch 2 of 4). Measured on the 2-core CPU: the fc weights (|w| up to
    ~30) are bit-identical (max abs difference 0.0); stepping the lr at each epoch's start (CIFAR's schedule)
    or selecting on top-1 moves them by > 10. The tolerance (1e-4) only leaves room for another CPU's
    summation order."""
    from data.image_list import read_image_list
    from data.image_list_datasets import EvalImageList, probe_train_transform
    from data.synthetic import write_synthetic_imagenet
    written = write_synthetic_imagenet(str(tmp_path / 'data'), str(tmp_path / 'split'), 'fam', 'imagenet100_lt',
                                       num_classes=8, head=3, tail=1, probe_per_class=2, test_per_class=1, seed=2)
    names = written['lists']
    lists = {'root': str(tmp_path / 'split'), 'train': names['fullshot'], 'val': names['VAL'], 'test': names['TEST']}

    def listed(name, transform=None):
        return EvalImageList(written['data_root'], read_image_list(os.path.join(lists['root'], name), 8), transform)
    protocol = dataclasses.replace(eval_sdclr.IMAGENET_PROTOCOL, batch=4, views=eval_sdclr.ResizedCropFlip(4))
    settings = dict(epochs=4, milestones=(2, 3), test_freq=1, seed=5)
    model = TinyNet()
    fast = sdclr_probe(model, listed(lists['train'], probe_train_transform()), listed(lists['val']),
                       listed(lists['test']), 8, CPU, protocol=protocol, chunk=8, num_workers=2, **settings)
    reference = reference_image_probe(model, written['data_root'], lists, 8, batch=4, **settings)
    for fc in ('fc', 'last_fc'):
        for name in ('weight', 'bias'):
            torch.testing.assert_close(fast[fc][name], reference[fc][name], rtol=0, atol=1e-4)
    assert (fast['best_epoch'], fast['val_top5']) == (reference['best_epoch'], pytest.approx(reference['val_top5']))
    assert fast['top1'] == pytest.approx(reference['top1'])
    assert fast['val_history'] == pytest.approx(reference['val_history']) and 'val_top1' not in fast
    # an image's views differ from epoch to epoch, and are the same for the same draw
    views = listed(lists['train'], probe_train_transform())
    items = eval_sdclr.SeededItems(views)
    assert torch.equal(items[0, 11][0], items[0, 11][0]) and not torch.equal(items[0, 11][0], items[0, 12][0])


def test_imagenet_protocol_is_the_published_one():
    """The facts of SDCLR's ImageNet evaluation (cmds/shell_scrips/imagenet-100-res50-LT.sh and
    imagenet-res50-LT.sh running train_imagenet.py): batch 512, top-5 selection, MultiStepLR after each epoch,
    full-shot 30 epochs (x0.1 at 10, 20; validation every 2), few-shot 100 (x0.1 at 40, 60; every 10)."""
    protocol = eval_sdclr.IMAGENET_PROTOCOL
    assert (protocol.batch, protocol.select, protocol.step_first) == (512, 'top5', False)
    assert protocol.full_shot == {'epochs': 30, 'milestones': (10, 20), 'test_freq': 2}
    assert protocol.few_shot == {'epochs': 100, 'milestones': (40, 60), 'test_freq': 10}
    assert isinstance(protocol.views, eval_sdclr.ResizedCropFlip) and LR == 30.0
    cifar = eval_sdclr.CIFAR_PROTOCOL
    assert (cifar.batch, cifar.select, cifar.step_first, cifar.full_shot, cifar.few_shot) == (
        128, 'top1', True, {'epochs': 30, 'milestones': (10, 20), 'test_freq': 1},
        {'epochs': 100, 'milestones': (40, 60), 'test_freq': 5})


def test_imagenet_lr_schedule_is_multisteplr_stepped_after_each_epoch():
    """train_imagenet.py steps its MultiStepLR after each epoch: epochs 1..10 at 30, 11..20 at 3, then 0.3."""
    for schedule in (eval_sdclr.IMAGENET_PROTOCOL.full_shot, eval_sdclr.IMAGENET_PROTOCOL.few_shot):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(schedule['milestones']),
                                                         gamma=0.1)
        published = []
        for _ in range(schedule['epochs']):
            published.append(optimizer.param_groups[0]['lr'])
            optimizer.step()
            scheduler.step()
        assert [lr_at(e, schedule['milestones'], step_first=False)
                for e in range(1, schedule['epochs'] + 1)] == published
        first = schedule['milestones'][0]
        assert published[first - 1] == 30 and published[first] == pytest.approx(3)
