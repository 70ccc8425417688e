"""The ImageNet-scale views of design 9.3, keyed like the CIFAR ones (data/view_params.py):
the crop of each image's own size against torchvision's RandomResizedCrop.get_params, the
blur and BCL-strength draws against their published distributions, keying, the pixels
against an independent composition of torchvision's functionals and Pillow's blur, and the
evaluation transform against torchvision's. CIFAR's views stay as they were
(tests/test_view_params.py, tests/test_data.py)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data.augmentations import augment_view, eval_transform, render_views
from data.keyed_random import SLOTS, keyed_uniforms
from data.randaug import apply_rand_augment
from data.view_params import BLUR, BLUR_SIGMA, CIFAR, IMAGENET, RATIO, SHARED_VIEW, ViewParams, draw_views
from utils import keyed_seed

SIZES = [(200, 300), (500, 120), (64, 64), (120, 40), (40, 300)]  # (height, width); the last often falls back
N = 20_000  # draws per distribution test
Z_LIMIT = 4.0  # |z| of a mean or proportion test (two-sided alpha ~ 6e-5)
KS_C_ALPHA = 1.95  # two-sample Kolmogorov-Smirnov at alpha = 0.001
JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
KEY = keyed_seed(3, 1, 2)


def make_image(height, width, seed):
    """Noise on a colour gradient (PIL RGB), so that every op changes pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], -1)
    noise = rng.integers(-40, 41, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def sizes_of(positions):
    """int64 [B, 2]: the (height, width) of SIZES[position % len(SIZES)]."""
    return torch.tensor(SIZES, dtype=torch.int64)[positions % len(SIZES)]


def assert_z(ours, reference, what):
    """Two-sample z test of the means."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    se = math.sqrt(ours.var(ddof=1) / len(ours) + reference.var(ddof=1) / len(reference))
    if se == 0:  # one value each
        assert ours.mean() == reference.mean(), what
        return
    z = (ours.mean() - reference.mean()) / se
    assert abs(z) < Z_LIMIT, f'{what}: mean {ours.mean():.4f} against {reference.mean():.4f} (z = {z:.1f})'


def assert_ks(ours, reference, what):
    a, b = np.sort(np.asarray(ours, np.float64)), np.sort(np.asarray(reference, np.float64))
    grid = np.concatenate([a, b])
    distance = np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()
    limit = KS_C_ALPHA * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    assert distance < limit, f'{what}: KS distance {distance:.4f} >= {limit:.4f}'


def area_and_aspect(boxes, height, width):
    boxes = np.asarray(boxes, np.float64)
    return boxes[:, 2] * boxes[:, 3] / (height * width), boxes[:, 3] / boxes[:, 2]


# ----------------------------------------------------------------------------- the draws

def test_per_sample_sizes_equal_one_size_at_a_time():
    """A batch of mixed image sizes gives each sample the box drawn for its size alone."""
    positions = torch.arange(2000)
    mixed = draw_views(KEY, positions, sizes_of(positions), recipe=IMAGENET)
    for i, (height, width) in enumerate(SIZES):
        subset = positions[i::len(SIZES)]
        alone = draw_views(KEY, subset, (height, width), recipe=IMAGENET)
        assert torch.equal(mixed.crop[subset], alone.crop), (height, width)
    top, left, h, w = mixed.crop.unbind(-1)
    size = sizes_of(positions)[:, None, :]
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= size[..., 0]).all() and (left + w <= size[..., 1]).all()


@pytest.mark.parametrize('height, width', SIZES)
def test_crop_distribution_is_torchvisions(height, width):
    """Area fraction and aspect of the boxes against RandomResizedCrop.get_params(img, (0.08, 1),
    (3/4, 4/3)): KS and means; areas below 0.1 (which CIFAR's (0.1, 1) never gives) at
    torchvision's rate."""
    ours = draw_views(KEY, torch.arange(N), (height, width), recipe=IMAGENET).crop.reshape(-1, 4)[:N]
    torch.manual_seed(0)
    img = Image.new('RGB', (width, height))
    reference = [transforms.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N)]
    our_area, our_aspect = area_and_aspect(ours.tolist(), height, width)
    ref_area, ref_aspect = area_and_aspect(reference, height, width)
    for what, a, b in (('area', our_area, ref_area), ('aspect', our_aspect, ref_aspect),
                       ('area < 0.1', our_area < 0.1, ref_area < 0.1)):
        assert_z(a, b, f'{height}x{width} {what}')
        assert_ks(a, b, f'{height}x{width} {what}')
    if height * width >= 10_000:  # rounding moves small images' areas
        assert 0.075 < our_area.min() < 0.082 and (our_area < 0.1).mean() > 0.01
        boxes = np.asarray(ours.tolist())
        tops, lefts = boxes[:, 0] / np.maximum(height - boxes[:, 2], 1), boxes[:, 1] / np.maximum(width - boxes[:, 3], 1)
        ref = np.asarray(reference)
        assert_z(tops, ref[:, 0] / np.maximum(height - ref[:, 2], 1), 'top')
        assert_z(lefts, ref[:, 1] / np.maximum(width - ref[:, 3], 1), 'left')


def test_the_fallback_is_torchvisions_centre_crop():
    """An image far outside RATIO fails some (40x300) or all (12x400) tries: then the box is the
    image cut to the nearest ratio, centred, wide or tall."""
    positions = torch.arange(N)
    for (height, width), low, high in (((40, 300), 0.2, 0.6), ((12, 400), 1, 1)):
        side = round(height * RATIO[1])
        sizes = torch.tensor([[height, width], [width, height]])[positions % 2]
        boxes = draw_views(KEY, positions, sizes, recipe=IMAGENET).crop
        wide = (boxes[0::2] == torch.tensor([0, (width - side) // 2, height, side])).all(-1).double().mean()
        tall = (boxes[1::2] == torch.tensor([(width - side) // 2, 0, side, height])).all(-1).double().mean()
        assert low <= wide <= high and low <= tall <= high, (height, width, wide, tall)


def test_blur_draws_and_their_slots():
    """Design 9.3: blur with p = 0.5 per view, sigma ~ U(0.1, 2.0), from the last two slots of
    each view; CIFAR never blurs and its other draws are those of IMAGENET (the same slots)."""
    positions = torch.arange(N)
    drawn = draw_views(KEY, positions, (200, 300), recipe=IMAGENET)
    u = keyed_uniforms(KEY, positions, (0, 1), 2, first_slot=BLUR)
    assert torch.equal(u[:50], keyed_uniforms(KEY, positions[:50], (0, 1), SLOTS)[..., BLUR:])
    assert torch.equal(drawn.blur, u[..., 0] < 0.5) and torch.equal(drawn.blur_sigma, 0.1 + 1.9 * u[..., 1])
    assert BLUR_SIGMA == BLUR + 1 == SLOTS - 1
    for v in range(2):
        rate = drawn.blur[:, v].double().mean().item()
        assert abs(rate - 0.5) < Z_LIMIT * math.sqrt(0.25 / N), rate
    assert abs(drawn.blur[:, 0].double().mean() - drawn.blur[:, 1].double().mean()) < Z_LIMIT * math.sqrt(0.5 / N)
    sigma = drawn.blur_sigma
    assert sigma.dtype == torch.float64 and sigma.min() >= 0.1 and sigma.max() < 2.0
    assert abs(sigma.mean().item() - 1.05) < Z_LIMIT * 1.9 / math.sqrt(12 * 2 * N)
    assert sigma.min() < 0.11 and sigma.max() > 1.99
    cifar = draw_views(KEY, positions, (200, 300), recipe=CIFAR)
    assert not cifar.blur.any() and not cifar.blur_sigma.any()
    for name in ('flip', 'jitter', 'jitter_order', 'jitter_factors', 'gray'):
        assert torch.equal(getattr(cifar, name), getattr(drawn, name)), name
    assert not torch.equal(cifar.crop, drawn.crop)  # the scale differs


def test_bcl_magnitude_has_no_floor_and_shares_u():
    """Design 9.3: m_i = 30 * w_i * u, u once per sample (keyed view 2) for both views; CIFAR's
    rule (1.4) keeps its floor of 5."""
    positions = torch.arange(4000)
    weight = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    drawn = draw_views(KEY, positions, sizes_of(positions), 2, weight, 30, IMAGENET)
    u = keyed_uniforms(KEY, positions, (SHARED_VIEW,), 1)[:, 0, 0]
    for v in range(2):
        assert torch.equal(drawn.magnitude[:, v], 30 * weight * u)
    assert drawn.magnitude.min() < 0.5 and drawn.magnitude.max() <= 30
    cifar = draw_views(KEY, positions, (32, 32), 2, weight, 30, CIFAR)
    assert torch.equal(cifar.magnitude[:, 0], 5 + 25 * weight * u) and cifar.magnitude.min() >= 5
    assert torch.equal(cifar.op_applied, drawn.op_applied) and torch.equal(cifar.ops, drawn.ops)


def test_keyed_by_seed_epoch_position():
    """Same (seed, epoch, position): the same parameters in any batch; another position or epoch: others."""
    positions = torch.arange(3000)
    weight = torch.full((3000,), 0.7, dtype=torch.float64)
    first = draw_views(KEY, positions, sizes_of(positions), 2, weight, 30, IMAGENET)
    subset = torch.tensor([2999, 5, 17, 5])
    again = draw_views(KEY, subset, sizes_of(subset), 2, weight[subset], 30, IMAGENET)
    for name in ViewParams.__dataclass_fields__:
        assert torch.equal(getattr(first, name)[subset], getattr(again, name)), name
    shifted = draw_views(KEY, positions + len(SIZES), sizes_of(positions), 2, weight, 30, IMAGENET)
    other_epoch = draw_views(keyed_seed(3, 2, 2), positions, sizes_of(positions), 2, weight, 30, IMAGENET)
    for other in (shifted, other_epoch):
        assert (other.crop != first.crop).any(-1).double().mean() > 0.7  # 40x300's fallbacks are all alike
        assert (other.blur_sigma != first.blur_sigma).all()
        assert (other.magnitude != first.magnitude).all()


# ----------------------------------------------------------------------------- the pixels

def independent_view(img, view):
    """Design 9.3 composed afresh from torchvision's functionals, Pillow's blur and BCL's ops."""
    top, left, height, width = view['crop']
    out = F.resized_crop(img, top, left, height, width, [224, 224], InterpolationMode.BICUBIC, antialias=True)
    if view['flip']:
        out = F.hflip(out)
    if view['jitter']:
        for index in view['jitter_order']:
            out = JITTER[index](out, view['jitter_factors'][index])
    if view['gray']:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if view['blur']:
        out = out.filter(ImageFilter.GaussianBlur(radius=view['blur_sigma']))
    return apply_rand_augment(out, view['magnitude'], view['ops'], view['op_applied'], view['op_sign'],
                              view['op_centre'])


def test_augment_view_is_the_independent_composition():
    """Exact uint8 pixels for views of every size, with the blur on and off, with RandAugment."""
    positions = torch.arange(20)
    weight = torch.full((20,), 0.8, dtype=torch.float64)
    drawn = draw_views(KEY, positions, sizes_of(positions), 2, weight, 30, IMAGENET)
    images = [make_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    pairs = drawn.per_view()
    blurred = set()
    for position in range(12):
        img = images[position % len(SIZES)]
        for view in pairs[position]:
            got = augment_view(img, view, IMAGENET)
            assert got.size == (224, 224)
            assert np.array_equal(np.asarray(got), np.asarray(independent_view(img, view)))
            blurred.add(view['blur'])
        tensor = render_views(img, pairs[position], IMAGENET)
        assert tensor.shape == (2, 3, 224, 224) and tensor.dtype == torch.float32
        assert torch.equal(tensor[1], F.to_tensor(augment_view(img, pairs[position][1], IMAGENET)))
    assert blurred == {True, False}
    view = dict(pairs[0][0], blur=True, blur_sigma=2.0)  # the blur changes the pixels
    assert not np.array_equal(np.asarray(augment_view(images[0], view, IMAGENET)),
                              np.asarray(augment_view(images[0], dict(view, blur=False), IMAGENET)))


@pytest.mark.parametrize('height, width', SIZES + [(256, 256), (224, 900)])
def test_eval_transform(height, width):
    img = make_image(height, width, 7)
    got = eval_transform(IMAGENET)(img)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])(img)
    assert got.shape == (3, 224, 224) and torch.equal(got, reference)
    small = make_image(32, 32, 8)
    assert torch.equal(eval_transform(CIFAR)(small), F.to_tensor(small))
