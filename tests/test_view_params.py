"""Keyed view parameters (issue 11): the counter-based generator against exact integer
arithmetic; each sampler's distribution against the reference algorithm (torchvision's own
get_params, the published RandAugment draws) by two-sample tests; the apply step against
torchvision's transforms given the same parameters; and views that are the same on every
device, in every batch, worker and process."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from data.augmentations import augment_view
from data.cifar100 import TwoViewCIFAR
from data.keyed_random import keyed_uniforms, mix64
from data.memoboosted_cifar100 import MemoBoostedCIFAR
from data.randaug import NUM_OPS, OPS, SIGNED
from data.sampler import EpochBatchSampler
import data.view_params as view_params
from data.view_params import CROP_TRIES, RATIO, SCALE, SHARED_VIEW, crop_boxes, draw_views, exp_small
from utils import keyed_seed

N = 30_000  # draws per distribution test
KS_C_ALPHA = 1.95  # two-sample Kolmogorov-Smirnov critical coefficient at alpha = 0.001
Z_LIMIT = 4.0  # |z| of a proportion test (two-sided alpha ~ 6e-5)
MASK64 = (1 << 64) - 1


def ks_distance(a, b):
    """The two-sample Kolmogorov-Smirnov statistic: max |F_a - F_b| over all values."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()


def assert_same_distribution(ours, reference, what):
    """Two-sample KS at alpha = 0.001 (conservative for discrete values)."""
    n, m = len(ours), len(reference)
    limit = KS_C_ALPHA * math.sqrt((n + m) / (n * m))
    distance = ks_distance(ours, reference)
    assert distance < limit, f'{what}: KS distance {distance:.4f} >= {limit:.4f}'


def assert_same_categories(ours, reference, categories, what):
    """Two-sample chi-square test of category counts at alpha = 0.001 (Wilson-Hilferty quantile)."""
    a = np.bincount(np.asarray(ours), minlength=categories).astype(np.float64)
    b = np.bincount(np.asarray(reference), minlength=categories).astype(np.float64)
    used = (a + b) > 0
    a, b = a[used], b[used]
    n, m = a.sum(), b.sum()
    statistic = (((math.sqrt(m / n) * a - math.sqrt(n / m) * b) ** 2) / (a + b)).sum()
    df = len(a) - 1
    limit = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    assert statistic < limit, f'{what}: chi-square {statistic:.1f} >= {limit:.1f} ({df} degrees of freedom)'


def assert_rate(hits, p, what):
    n = len(hits)
    z = (np.mean(hits) - p) / math.sqrt(p * (1 - p) / n)
    assert abs(z) < Z_LIMIT, f'{what}: rate {np.mean(hits):.4f} against {p} (z = {z:.1f})'


def ours(rand_k=0, weight=None, n=N, seed=0, epoch=1, device='cpu'):
    key = keyed_seed(seed, epoch, 2)
    positions = torch.arange(n, device=device)
    if weight is not None:
        weight = weight.to(device)
    return draw_views(key, positions, (32, 32), rand_k, weight, 30)


# ----------------------------------------------------------------------------- the generator

def mix64_exact(x):
    """SplitMix64's finaliser on Python's unbounded integers, reduced mod 2^64."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_mix64_is_splitmix64_in_exact_integers(device):
    """int64 tensor ops (wrapping multiplies, masked shifts) give SplitMix64's bits on `device`:
    the published test vector (first output of seed 0) and random values of both signs."""
    assert mix64(torch.tensor(0x9E3779B97F4A7C15 - (1 << 64), device=device)).item() & MASK64 == 0xE220A8397B1DCDAF
    values = torch.randint(-2 ** 63, 2 ** 63 - 1, (5000,), generator=torch.Generator().manual_seed(0))
    values = torch.cat([values, torch.tensor([0, 1, -1, 2 ** 63 - 1, -2 ** 63])])
    got = [v & MASK64 for v in mix64(values.to(device)).tolist()]
    assert got == [mix64_exact(v & MASK64) for v in values.tolist()]


def test_keyed_uniforms_depend_on_their_key_alone(device):
    key = keyed_seed(3, 7, 2)
    positions = torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    batch = keyed_uniforms(key, positions.to(device), (0, 1, 2), 40)
    assert batch.shape == (2000, 3, 40) and batch.dtype == torch.float64 and batch.device.type == device.type
    assert batch.min() >= 0 and batch.max() < 1
    single = torch.cat([keyed_uniforms(key, positions[i:i + 1].to(device), (0, 1, 2), 40) for i in (5, 917)])
    assert torch.equal(single, batch[[5, 917]])  # one at a time == in a batch
    assert torch.equal(keyed_uniforms(key, positions[[917]].to(device), (1,), 40)[0, 0], batch[917, 1])
    if device.type != 'cpu':  # the same bits as on the CPU
        assert torch.equal(batch.cpu(), keyed_uniforms(key, positions, (0, 1, 2), 40))
    other = keyed_uniforms(keyed_seed(3, 8, 2), positions.to(device), (0, 1, 2), 40)  # next epoch
    assert (other != batch).float().mean() > 0.999
    values = batch.flatten().cpu().numpy()
    assert len(np.unique(values)) == len(values)
    assert_same_distribution(values[:N], np.random.RandomState(0).random_sample(N), 'keyed uniforms')


def test_keyed_seed_keys_are_32_bit_integers():
    """SeedSequence splits a larger int into 32-bit words, so (5 + 7 * 2^32, 1) would be (5, 7, 1):
    refused. The streams of one (seed, epoch) differ."""
    with pytest.raises(ValueError, match=r'integers in \[0, 2\^32\)'):
        keyed_seed(5 + 7 * 2 ** 32, 1)
    assert len({keyed_seed(10, 3), keyed_seed(10, 3, 1), keyed_seed(10, 3, 2), keyed_seed(10, 4)}) == 4
    assert keyed_seed(2 ** 32 - 1, 3) == keyed_seed(2 ** 32 - 1, 3)


def test_exp_small_is_exp_within_rounding():
    x = torch.linspace(math.log(3 / 4), math.log(4 / 3), 10001, dtype=torch.float64)
    exact = torch.tensor([math.exp(v) for v in x.tolist()], dtype=torch.float64)
    assert ((exp_small(x) - exact).abs() / exact).max() < 4e-16


def test_view_params_same_on_every_device_and_in_every_batch(device):
    """BCL k=2 parameters of 4,096 samples drawn at once on `device` equal those drawn on the CPU
    and those of a shuffled subset drawn as its own batch, field for field, bit for bit."""
    weight = torch.rand(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    key = keyed_seed(5, 11, 2)
    on_device = draw_views(key, torch.arange(4096, device=device), (32, 32), 2, weight.to(device), 30)
    on_cpu = draw_views(key, torch.arange(4096), (32, 32), 2, weight, 30)
    subset = torch.randperm(4096, generator=torch.Generator().manual_seed(3))[:300]
    alone = draw_views(key, subset, (32, 32), 2, weight[subset], 30)
    for name in on_cpu.__dataclass_fields__:
        cpu_field = getattr(on_cpu, name)
        assert torch.equal(getattr(on_device, name).cpu(), cpu_field), name
        assert torch.equal(getattr(alone, name), cpu_field[subset]), name


# ----------------------------------------------------------------------------- distributions

def test_crop_boxes_follow_torchvision_get_params():
    """The boxes against N boxes from torchvision's RandomResizedCrop.get_params (scale (0.1, 1),
    ratio (3/4, 4/3), 32x32): top, left, height, width, area and aspect ratio, two-sample KS."""
    box = ours().crop.reshape(-1, 4)[:N].numpy()
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32)
    reference = np.array([transforms.RandomResizedCrop.get_params(img, list(SCALE), list(RATIO))
                          for _ in range(N)])
    for column, name in enumerate(('top', 'left', 'height', 'width')):
        assert_same_distribution(box[:, column], reference[:, column], f'crop {name}')
    assert_same_distribution(box[:, 2] * box[:, 3], reference[:, 2] * reference[:, 3], 'crop area')
    assert_same_distribution(box[:, 3] / box[:, 2], reference[:, 3] / reference[:, 2], 'crop aspect ratio')
    assert ((box[:, :2] >= 0) & (box[:, :2] + box[:, 2:] <= 32)).all()


def test_crop_falls_back_to_the_whole_image_when_no_try_fits():
    u = torch.zeros(1, 2 * CROP_TRIES + 2, dtype=torch.float64)
    u[:, 0:2 * CROP_TRIES:2] = 1 - 2 ** -53  # the whole area at aspect 3/4: 28 x 37 does not fit
    assert crop_boxes(u, 32, 32).tolist() == [[0, 0, 32, 32]]
    u[:, 2 * CROP_TRIES - 2] = 0.5  # the last try fits: 0.55 * 1024 at 3/4 -> width 20.55, height 27.4
    assert crop_boxes(u, 32, 32)[0, 2:].tolist() == [27, 21]


def test_flip_jitter_and_grayscale_follow_torchvision():
    """Flip p=0.5, ColorJitter applied p=0.8, grayscale p=0.2 (design 1.2); ColorJitter's order
    and factors against N draws of torchvision's ColorJitter.get_params."""
    params = ours()
    assert_rate(params.flip.flatten().numpy(), 0.5, 'flip')
    assert_rate(params.jitter.flatten().numpy(), 0.8, 'ColorJitter applied')
    assert_rate(params.gray.flatten().numpy(), 0.2, 'grayscale')
    torch.manual_seed(0)
    reference = [transforms.ColorJitter.get_params((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
                 for _ in range(N)]
    order_code = lambda order: sum(int(o) * 4 ** i for i, o in enumerate(order))  # noqa: E731
    our_orders = [order_code(o) for o in params.jitter_order.reshape(-1, 4)[:N].tolist()]
    assert_same_categories(our_orders, [order_code(r[0]) for r in reference], 4 ** 4, 'ColorJitter order')
    assert len(set(our_orders)) == 24
    factors = params.jitter_factors.reshape(-1, 4)[:N].numpy()
    for column, name in enumerate(('brightness', 'contrast', 'saturation', 'hue')):
        assert_same_distribution(factors[:, column], [r[1 + column] for r in reference], name)


def published_rand_augment_draws(weights, rand_k, rand_strength, seed=0):
    """The published code's draws (design 1.3-1.4, python random): u per sample (k != 1), then
    RandAugmentProb: random.choices of k ops, each applied iff random() < w; an applied signed
    op draws its sign (random() < 0.5: negative). Cutout's centre is checked on its own (design
    1.3's uniform centre; see data/randaug.cutout for the published one)."""
    rng = random.Random(seed)
    magnitudes, ops, applied, negative = [], [], [], []
    for w in weights:
        u = rng.random() if rand_k != 1 else None
        magnitudes.append(10 + (rand_strength - 10) * w if rand_k == 1 else 5 + (rand_strength - 5) * w * u)
        for index in rng.choices(range(NUM_OPS), k=rand_k):
            ops.append(index)
            applied.append(rng.random() < w)
            if applied[-1] and OPS[index][0] in SIGNED:
                negative.append(rng.random() < 0.5)
    return np.array(magnitudes), np.array(ops), np.array(applied), np.array(negative)


@pytest.mark.parametrize('rand_k', [1, 2])
def test_rand_augment_draws_follow_the_published_draws(rand_k):
    weights = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    params = ours(rand_k, weights)
    magnitudes, ops, applied, negative = published_rand_augment_draws(weights.tolist(), rand_k, 30)
    assert torch.equal(params.magnitude[:, 0], params.magnitude[:, 1])  # design 1.4: shared by both views
    assert_same_distribution(params.magnitude[:, 0].numpy(), magnitudes, f'magnitude (k={rand_k})')
    assert_same_categories(params.ops[:, 0].flatten().numpy(), ops, NUM_OPS, 'op choice')
    our_applied = params.op_applied[:, 0]
    assert_same_categories(our_applied.flatten().long().numpy(), applied.astype(np.int64), 2, 'op applied')
    # applied with probability w: the applied ops' weights have the same distribution
    assert_same_distribution(weights[:, None].expand(-1, rand_k)[our_applied].numpy(),
                             np.repeat(weights.numpy(), rand_k)[applied], 'weights of applied ops')
    assert_rate(params.op_sign.flatten().numpy() < 0, 0.5, 'sign flip')
    uniform = np.random.RandomState(rand_k).random_sample(2 * N)  # design 1.3: a centre uniform over the image
    for axis, name in enumerate('xy'):  # every view and slot draws one (2 N k values; KS limit ~0.01)
        assert_same_distribution(params.op_centre[..., axis].flatten().numpy(), uniform, f'Cutout centre {name}')
    if rand_k == 1:
        assert torch.equal(params.magnitude[:, 0], 10 + 20 * weights)


def parameters_changed(params, reference):
    """The parameters (a field, or one op slot / factor / centre axis of it) that differ."""
    changed = set()
    for name in reference.__dataclass_fields__:
        ours, theirs = getattr(params, name), getattr(reference, name)
        if name in ('jitter_factors', 'ops', 'op_applied', 'op_sign'):
            changed |= {(name, i) for i in range(theirs.shape[2]) if not torch.equal(ours[:, :, i], theirs[:, :, i])}
        elif name == 'op_centre':
            changed |= {(name, i, axis) for i in range(theirs.shape[2]) for axis in (0, 1)
                        if not torch.equal(ours[:, :, i, axis], theirs[:, :, i, axis])}
        elif not torch.equal(ours, theirs):
            changed.add(name)
    return changed


def test_each_parameter_reads_its_own_uniforms_alone(monkeypatch):
    """Shifting one uniform slot (of both views, or the one both views share) changes exactly the
    parameter that slot belongs to: no two parameters share a draw, a correlation that the
    one-parameter distribution tests above cannot see."""
    batch, rand_k = 64, 2
    slots = view_params.RAND_AUGMENT + view_params.OP_SLOTS * rand_k
    generator = torch.Generator().manual_seed(8)
    base = {(0, 1): torch.rand(batch, 2, slots, dtype=torch.float64, generator=generator),
            (SHARED_VIEW,): torch.rand(batch, 1, 1, dtype=torch.float64, generator=generator)}

    def draw(uniforms):
        monkeypatch.setattr(view_params, 'keyed_uniforms', lambda key, positions, views, n: uniforms[tuple(views)])
        return draw_views(0, torch.arange(batch), (32, 32), rand_k, torch.full((batch,), 0.5, dtype=torch.float64))

    def shifted(views, slot):
        uniforms = {views_: u.clone() for views_, u in base.items()}
        uniforms[views][..., slot] = (uniforms[views][..., slot] + 0.5) % 1
        return uniforms
    owners = {slot: {'crop'} for slot in range(view_params.FLIP)}
    owners.update({view_params.FLIP: {'flip'}, view_params.JITTER_APPLY: {'jitter'}, view_params.GRAY: {'gray'}})
    owners.update({view_params.JITTER_ORDER + i: {'jitter_order'} for i in range(4)})
    owners.update({view_params.JITTER_FACTORS + i: {('jitter_factors', i)} for i in range(4)})
    for op in range(rand_k):
        first = view_params.RAND_AUGMENT + view_params.OP_SLOTS * op
        owners.update({first: {('ops', op)}, first + 1: {('op_applied', op)}, first + 2: {('op_sign', op)},
                       first + 3: {('op_centre', op, 0)}, first + 4: {('op_centre', op, 1)}})
    assert sorted(owners) == list(range(slots))
    reference = draw(base)
    rarely_used = range(2, 2 * CROP_TRIES)  # crop tries 2-10 decide only when the tries before them fail
    for slot, owner in owners.items():
        changed = parameters_changed(draw(shifted((0, 1), slot)), reference)
        assert changed <= owner if slot in rarely_used else changed == owner, slot
    assert parameters_changed(draw(shifted((SHARED_VIEW,), 0)), reference) == {'magnitude'}


# ----------------------------------------------------------------------------- applying

def torchvision_base_pipeline(monkeypatch, view):
    """design 1.2 as torchvision transforms (the published pipeline), with its random draws
    patched to return the view's parameters."""
    top, left, height, width = view['crop']
    monkeypatch.setattr(transforms.RandomResizedCrop, 'get_params', staticmethod(lambda *a: (top, left, height, width)))
    order, factors = view['jitter_order'], view['jitter_factors']
    monkeypatch.setattr(transforms.ColorJitter, 'get_params',
                        staticmethod(lambda *a: (torch.tensor(order), *factors)))
    # the torch.rand(1) draws, in order: flip (< 0.5 flips), RandomApply (0.8 < u skips), grayscale (< 0.2)
    draws = iter([0.0 if view['flip'] else 0.9, 0.0 if view['jitter'] else 0.9, 0.0 if view['gray'] else 0.9])
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: torch.tensor([next(draws)]))
    return transforms.Compose([
        transforms.RandomResizedCrop(32, scale=SCALE, interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ])


def test_augment_view_is_torchvision_given_the_same_parameters(monkeypatch):
    """200 views: augment_view equals torchvision's design 1.2 pipeline forced to the same draws,
    pixel for pixel (both use PIL)."""
    images = np.random.RandomState(0).randint(0, 256, size=(200, 32, 32, 3)).astype(np.uint8)
    views = [v for pair in ours(n=100).per_view() for v in pair]
    assert any(v['gray'] for v in views) and not all(v['jitter'] for v in views)
    for pixels, view in zip(images, views):
        img = Image.fromarray(pixels)
        with monkeypatch.context() as patch:
            expected = torchvision_base_pipeline(patch, view)(img)
        assert np.array_equal(np.asarray(augment_view(img, view)), np.asarray(expected))


# ----------------------------------------------------------------------------- processes and workers

def test_views_are_the_same_in_workers_and_in_the_main_process(synthetic_cifar):
    """BCL k=2 views made by 2 persistent workers, over two epochs, equal those the main process
    makes for the same (seed, epoch, position); a new epoch gives new views."""
    dataset = MemoBoostedCIFAR(synthetic_cifar, np.arange(24), rand_k=2, seed=9)
    dataset.update_momentum_weight(np.arange(24.0))
    sampler = EpochBatchSampler(len(dataset), 5, seed=9)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2, persistent_workers=True)
    by_epoch = {}
    for epoch in (3, 4):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        by_epoch[epoch] = {int(p): v for views, positions in loader for v, p in zip(views, positions)}
        assert sorted(by_epoch[epoch]) == list(range(24))
    for epoch in (3, 4):
        dataset.set_epoch(epoch)
        for position in range(24):
            assert torch.equal(by_epoch[epoch][position], dataset[position][0]), (epoch, position)
    assert all(not torch.equal(by_epoch[3][p], by_epoch[4][p]) for p in range(24))


def test_plain_dataset_views_depend_on_seed_epoch_and_position(synthetic_cifar):
    dataset = TwoViewCIFAR(synthetic_cifar, np.arange(6), seed=1)
    dataset.set_epoch(2)
    first = dataset.__getitems__([4, 1, 5])
    assert [p for _, p in first] == [4, 1, 5]
    assert torch.equal(dataset[1][0], first[1][0]) and not torch.equal(first[1][0][0], first[1][0][1])
    assert torch.equal(dataset[-1][0], dataset[5][0]) and dataset[-1][1] == 5  # the same key as position 5
    with pytest.raises(IndexError):
        dataset[6]
    other_seed = TwoViewCIFAR(synthetic_cifar, np.arange(6), seed=2)
    other_seed.set_epoch(2)
    assert not torch.equal(other_seed[1][0][0], dataset[1][0][0])
