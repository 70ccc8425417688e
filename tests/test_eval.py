"""eval_cifar.py: linear probe (design 6), batched-vs-separate probe identity, group metrics,
feature extraction and the full-shot evaluation training calls."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from data.cifar100 import EvalCIFAR
from eval_cifar import (extract_features, full_shot_eval, group_accuracy, linear_probe, prepare_full_shot,
                        probe_accuracy, train_probes)
from models import SDCLR, PruneMask
from split.resolve import load_split, protocol_files


def gaussian_classes(num_class=100, dim=64, train_per_class=20, test_per_class=10, seed=0):
    """Linearly separable features: one well separated Gaussian cluster per class."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_class, dim, generator=g)

    def draw(per_class):
        y = torch.arange(num_class).repeat(per_class)
        return means[y] + 0.3 * torch.randn(len(y), dim, generator=g), y
    return (*draw(train_per_class), *draw(test_per_class))


def initial_probe(x, num_class, seed):
    """design 6's probe before training: nn.Linear with eval_cifar's documented initial draws,
    Adam, and the generator that then draws each epoch's permutation."""
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(x.shape[1], num_class)
    bound = 1 / np.sqrt(x.shape[1])
    with torch.no_grad():
        clf.weight.uniform_(-bound, bound, generator=g)
        clf.bias.uniform_(-bound, bound, generator=g)
    return clf, torch.optim.Adam(clf.parameters(), lr=1e-2, weight_decay=5e-6), g


def reference_probe(x, y, num_class, epochs, seed):
    """A textbook probe of design 6 (nn.Linear, Adam, ExponentialLR, CrossEntropyLoss), drawing
    the initial weights and the per-epoch permutations in eval_cifar's documented order."""
    clf, optimizer, g = initial_probe(x, num_class, seed)
    for epoch in range(epochs):
        for group in optimizer.param_groups:  # 1e-2 decayed to 1e-6 after `epochs` epochs
            group['lr'] = 1e-2 * (1e-4) ** (epoch / epochs)
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 1000):
            batch = perm[start:start + 1000]
            optimizer.zero_grad()
            nn.CrossEntropyLoss()(clf(x[batch]), y[batch]).backward()
            optimizer.step()
    return clf


def test_probe_separates_linearly_separable_features():
    x, y, x_test, y_test = gaussian_classes()
    result = linear_probe(x, y, x_test, y_test, num_class=100, epochs=50, seed=0)
    assert result['top1'] >= 95
    assert result['top1'] <= result['top5'] <= 100
    assert result['per_class'].shape == (100,)
    # balanced test set: the mean per-class accuracy is the top-1 accuracy
    assert np.mean(result['per_class']) == pytest.approx(result['top1'], abs=1e-4)


def test_probe_matches_textbook_probe_and_accuracy_definition():
    """Same init and batch order as a plain nn.Linear + Adam probe -> same weights; last partial
    batch kept (2,500 samples = 1000 + 1000 + 500)."""
    x, y, x_test, y_test = gaussian_classes(num_class=10, dim=16, train_per_class=250, test_per_class=30)
    weight, bias = train_probes(x, y, [torch.arange(len(x))], 10, epochs=7, seed=5)
    clf = reference_probe(x, y, 10, epochs=7, seed=5)
    torch.testing.assert_close(weight[0], clf.weight.detach().t(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias[0], clf.bias.detach(), atol=1e-5, rtol=1e-5)

    acc = probe_accuracy(weight, bias, x_test, y_test, 10)[0]
    logits = clf(x_test).detach()
    assert acc['top1'] == pytest.approx(100 * (logits.argmax(1) == y_test).float().mean().item(), abs=1e-4)
    top5 = (logits.topk(5, 1).indices == y_test[:, None]).any(1).float()
    assert acc['top5'] == pytest.approx(100 * top5.mean().item(), abs=1e-4)
    hits = (logits.argmax(1) == y_test).numpy()
    expected = [100 * hits[y_test.numpy() == c].mean() for c in range(10)]
    np.testing.assert_allclose(acc['per_class'], expected, atol=1e-4)


def autograd_probe(x, y, num_class, epochs, seed):
    """design 6's probe as torch's own parts: nn.Linear, autograd, torch.optim.Adam and
    ExponentialLR, with eval_cifar's documented draws (init, then one permutation per epoch)."""
    clf, optimizer, g = initial_probe(x, num_class, seed)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(1e-6 / 1e-2) ** (1 / epochs))
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 1000):
            batch = perm[start:start + 1000]
            optimizer.zero_grad()
            F.cross_entropy(clf(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()
    return clf


def test_probe_equals_torch_adam_over_the_whole_protocol():
    """All 500 epochs (2,500 samples: batches 1000, 1000, 500), random labels so nothing
    converges to a fixed point: the written-out gradient and Adam arithmetic stay within float32
    rounding of autograd + torch.optim.Adam + ExponentialLR (measured: 3.7e-8 of weights ~0.2)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2500, 64, generator=g), torch.randint(0, 10, (2500,), generator=g)
    weight, bias = train_probes(x, y, [torch.arange(2500)], 10, epochs=500, seed=1)
    clf = autograd_probe(x, y, 10, epochs=500, seed=1)
    assert (weight[0] - clf.weight.detach().t()).abs().max() < 1e-6
    assert (bias[0] - clf.bias.detach()).abs().max() < 1e-6


def test_probe_cuda_graph_replay_equals_eager(device, monkeypatch):
    """On CUDA the epochs after the first replay a CUDA graph of the first: bit-equal to running
    every epoch eagerly, and within float32 rounding of the CPU (on the CPU both are eager)."""
    import eval_cifar
    x, y, _, _ = gaussian_classes(num_class=10, dim=32, train_per_class=250, test_per_class=1)
    subsets = [torch.randperm(2500, generator=torch.Generator().manual_seed(s))[:1700] for s in (1, 2)]
    graphed = train_probes(x.to(device), y.to(device), subsets, 10, epochs=6, seed=3)
    monkeypatch.setattr(eval_cifar, 'CUDA_GRAPHS', False)
    eager = train_probes(x.to(device), y.to(device), subsets, 10, epochs=6, seed=3)
    on_cpu = train_probes(x, y, subsets, 10, epochs=6, seed=3)
    for a, b, c in zip(graphed, eager, on_cpu):
        assert a.device.type == device.type and torch.equal(a, b)
        torch.testing.assert_close(a.cpu(), c, atol=1e-5, rtol=1e-5)


def test_batched_probes_equal_separate_probes():
    x, y, x_test, y_test = gaussian_classes(num_class=20, dim=32, train_per_class=60, test_per_class=20)
    # noisy labels so that the probes stay imperfect and differ from each other
    y = torch.where(torch.rand(len(y), generator=torch.Generator().manual_seed(1)) < 0.3,
                    torch.randint(0, 20, (len(y),), generator=torch.Generator().manual_seed(2)), y)
    g = torch.Generator().manual_seed(3)
    subsets = [torch.randperm(len(x), generator=g)[:700] for _ in range(4)]  # 700: one partial batch
    weight, bias = train_probes(x, y, subsets, 20, epochs=15, seed=7)
    batched = probe_accuracy(weight, bias, x_test, y_test, 20)
    assert not torch.equal(weight[0], weight[1])
    for p, subset in enumerate(subsets):
        w, b = train_probes(x, y, [subset], 20, epochs=15, seed=7)
        alone = probe_accuracy(w, b, x_test, y_test, 20)[0]
        assert alone['top1'] == batched[p]['top1'] and alone['top5'] == batched[p]['top5']
        np.testing.assert_array_equal(alone['per_class'], batched[p]['per_class'])
        torch.testing.assert_close(w[0], weight[p], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(b[0], bias[p], atol=1e-6, rtol=1e-6)
    # and a separate probe really is the probe on that subset's own features
    w, b = train_probes(x[subsets[2]], y[subsets[2]], [torch.arange(700)], 20, epochs=15, seed=7)
    torch.testing.assert_close(w[0], weight[2], atol=1e-6, rtol=1e-6)


def test_train_probes_rejects_unequal_subsets():
    x, y, _, _ = gaussian_classes(num_class=5, dim=4, train_per_class=4, test_per_class=1)
    with pytest.raises(ValueError, match='one size'):
        train_probes(x, y, [torch.arange(10), torch.arange(12)], 5, epochs=1)


def test_group_accuracy_hand_built():
    # distinct counts in a shuffled class order: Many = the 34 largest counts, etc.
    order = np.random.default_rng(0).permutation(100)  # order[r] = class with the r-th largest count
    counts, acc = np.empty(100, int), np.empty(100)
    counts[order] = np.arange(500, 400, -1)
    acc[order[:34]], acc[order[34:67]], acc[order[67:]] = 90.0, 60.0, 30.0
    groups = group_accuracy(acc, counts)
    assert groups == pytest.approx({'many': 90.0, 'medium': 60.0, 'few': 30.0, 'std': np.sqrt(600)})
    assert groups['std'] != pytest.approx(np.std([90, 60, 30], ddof=1))  # population, not sample std

    # all counts tied: stable order, Many = classes 0..33, Medium = 34..66, Few = 67..99
    acc = np.arange(100, dtype=float)
    groups = group_accuracy(acc, np.full(100, 7))
    assert groups == pytest.approx({'many': 16.5, 'medium': 50.0, 'few': 83.0,
                                    'std': np.std([16.5, 50.0, 83.0])})


def test_group_accuracy_ties_across_boundaries_and_other_class_counts():
    rng = np.random.default_rng(1)
    for num_class, sizes in ((100, (34, 33, 33)), (10, (4, 3, 3)), (101, (35, 33, 33))):
        counts = rng.integers(1, 6, size=num_class)  # many ties
        acc = rng.uniform(0, 100, size=num_class)
        ranked = sorted(range(num_class), key=lambda c: (-counts[c], c))  # ties: lower class first
        many, medium = ranked[:sizes[0]], ranked[sizes[0]:sizes[0] + sizes[1]]
        few = ranked[sizes[0] + sizes[1]:]
        assert len(few) == sizes[2]
        expected = [acc[many].mean(), acc[medium].mean(), acc[few].mean()]
        groups = group_accuracy(acc, counts)
        assert [groups['many'], groups['medium'], groups['few']] == pytest.approx(expected)
        assert groups['std'] == pytest.approx(np.std(expected))
    with pytest.raises(ValueError):
        group_accuracy(np.zeros(100), np.ones(99))


class PooledPixels(nn.Module):
    """A cheap stand-in network: features(x) = 4x4 average-pooled pixels (48-d)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def features(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1) * self.scale


def test_extract_features_order_labels_and_mode(synthetic_cifar):
    dataset = EvalCIFAR(synthetic_cifar, train=False)
    model = PooledPixels().train()
    features, labels = extract_features(model, dataset, torch.device('cpu'), batch_size=64)
    assert model.training  # mode restored
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    torch.testing.assert_close(features, F.adaptive_avg_pool2d(images, 4).flatten(1))
    assert features.dtype == torch.float32 and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), dataset.labels)


def test_extract_features_uses_dense_branch_of_sdclr(synthetic_cifar):
    model = SDCLR(network='resnet18')
    PruneMask(model).magnitude_prune(0.9)
    model.backbone.set_prune_flag(True)
    dataset = Subset(EvalCIFAR(synthetic_cifar, train=True), np.arange(6))
    features, _ = extract_features(model, dataset, torch.device('cpu'), batch_size=4)
    images = torch.stack([dataset[i][0] for i in range(6)])
    model.eval()
    with torch.no_grad():
        model.backbone.set_prune_flag(False)
        dense = model.backbone.forward_features(images)
        model.backbone.set_prune_flag(True)
        pruned = model.backbone.forward_features(images)
    assert features.shape == (6, 512)
    torch.testing.assert_close(features, dense)
    assert not torch.allclose(features, pruned)


def test_full_shot_eval_matches_manual_pipeline(synthetic_cifar, synthetic_splits):
    split_root, family = synthetic_splits
    train_split = f'{family}/cifar100_imbSub_with_subsets/cifar100_split2_D_i.npy'
    model = PooledPixels()
    result = full_shot_eval(model, prepare_full_shot(synthetic_cifar, train_split), torch.device('cpu'),
                            probe_epochs=30, seed=3)
    assert model.training

    # independent pipeline: pooled pixels of the train list and the test set
    train_set = EvalCIFAR(synthetic_cifar, train=True)
    train_idx = load_split(protocol_files(train_split)['train'], 2000, split_root)
    assert len(train_idx) == 1600
    x = F.adaptive_avg_pool2d(torch.tensor(train_set.images[train_idx]).permute(0, 3, 1, 2) / 255, 4)
    test_set = EvalCIFAR(synthetic_cifar, train=False)
    x_test = F.adaptive_avg_pool2d(torch.tensor(test_set.images).permute(0, 3, 1, 2) / 255, 4)
    expected = linear_probe(x.flatten(1), torch.tensor(train_set.labels[train_idx]), x_test.flatten(1),
                            torch.tensor(test_set.labels), 100, epochs=30, seed=3)
    assert result['top1'] == expected['top1']
    assert result['top1'] > 3  # 30 short epochs on pooled pixels, but above chance (1%)
    counts = np.bincount(train_set.labels[load_split(train_split, 2000, split_root)], minlength=100)
    groups = group_accuracy(result['per_class'], counts)
    assert {k: result[k] for k in groups} == pytest.approx(groups)
    assert 0 <= result['top1'] <= result['top5'] <= 100
