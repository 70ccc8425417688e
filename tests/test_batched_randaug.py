"""data/batched_randaug.py on views of other sizes than CIFAR's 32 px (design 9.3's 224 px, and
96 px): every op against data/randaug.py's PIL ops, pixel for pixel, on photo-like images and
edge cases; RandAugmentProb as a whole; ImagingScaleAffine's per-step sums; Contrast's mean;
no inexact CUDA division, host sync or host copy at 224 px. tests/test_batched_augment.py holds
the 32 px tests."""
import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageStat

from data import batched_randaug as R
from data import randaug
from data.batched_augment import mean_grey
from data.view_params import IMAGENET, draw_views
from test_batched_augment import HostTransfers, InexactDivisions, as_batch, as_pixels, pil_rotate_matrix
from utils import keyed_seed

SIZES = (224, 96)
IMAGES_PER_OP = 24


def photo_like(n, size, seed):
    """uint8 [n, size, size, 3]: noisy gradients (noise sd 0-20, slopes up to +-255 across the
    image) cut by two hard edges (half-planes of another noisy colour), some clipped to 0 and 255."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    start, slope = rng.uniform(-40, 300, (n, 1, 1, 3)), rng.uniform(-255, 255, (n, 2, 1, 1, 3))
    image = start + slope[:, 0] * xx[None, ..., None] + slope[:, 1] * yy[None, ..., None]
    for _ in range(2):
        angle, offset = rng.uniform(0, 2 * math.pi, (n, 1, 1)), rng.uniform(-0.3, 0.3, (n, 1, 1))
        side = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) > offset
        image = np.where(side[..., None], rng.uniform(0, 256, (n, 1, 1, 3)), image)
    image = image + rng.normal(0, 1, image.shape) * rng.uniform(0, 20, (n, 1, 1, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def op_images(size):
    """The views every op test at `size` uses (read only): photo-like ones, then the edge images."""
    return np.concatenate([photo_like(IMAGES_PER_OP - 5, size, seed=size), special_images(size)])


def special_images(size):
    """AutoContrast's and Equalize's edge cases: one colour; two levels; a top level holding all
    but 254 pixels (Equalize's step 0: identity); 509 pixels below it (step 1: the table passes
    255 and is clipped); a grey of mean exactly 100.5 (Contrast's int(mean + 0.5) rounds up)."""
    images = np.zeros((5, size, size, 3), dtype=np.uint8)
    images[0] = (7, 200, 255)
    images[1, :, :size // 3] = (3, 0, 128)
    images[1, :, size // 3:] = (250, 255, 129)
    for image, below in ((images[2], 254), (images[3], 509)):
        flat = image.reshape(-1, 3)
        flat[:] = 255
        flat[:below] = np.arange(below)[:, None] * (1, 3, 7) % 101
    images[4, :size // 2], images[4, size // 2:] = 100, 101
    return images


def translate_edges(size):
    """Translations whose coordinates lie just below an integer, where Pillow's per-pixel sums
    (xo += 1.0, rounded at each step) and one rounding of start + k give different pixels (found
    by search; data.batched_randaug.unit_steps must follow Pillow)."""
    return {224: [-0.14062500000000008, -0.015625000000000017, 0.011160714285714206, 0.14062499999999992],
            96: [-0.16145833333333343, -0.04687500000000008, 0.015624999999999917, 0.15104166666666657]}[size]


def edge_values(name, size):
    """Values beyond magnitudes 0 and 30 (the ends of every range): zero of both signs, Pillow's
    rounding and fast-path boundaries, Cutout's v <= 0 and sides below one pixel."""
    return {
        'shear_x': [-0.0, 1e-12, -0.3], 'shear_y': [-0.0, 1e-12, -0.3],
        'translate_x': [-0.0, 0.5, -1 / size, (2.5 - 1e-6) / size, 1 / size] + translate_edges(size),
        'translate_y': [-0.0, 0.5, -1 / size, (2.5 - 1e-6) / size, 1 / size] + translate_edges(size),
        'rotate': [-0.0, 45.0, 30.0, -1e-9, 1e-300, -1e-14],  # -1e-14 % 360 is 360.0
        'solarize': [55.0, 128.0, 255.0, 256.0], 'posterize': [0.5, 1.0, 7.9],
        'contrast': [0.0, 1.0], 'color': [0.0, 1.0], 'brightness': [0.0, 1.0], 'sharpness': [0.0, 1.0],
        'cutout': [-0.1, 1 / size, 0.5 / size, 0.1],
    }.get(name, [])


def op_family(index):
    """The family of data.batched_randaug that holds op `index` (apply_op runs all four, each the
    identity for the others' ops: the RandAugmentProb test below checks them together)."""
    if index <= R.ROTATE:
        return lambda pixels, op, value, centre: R.geometric(pixels, op, value)
    if index <= R.POSTERIZE:
        return lambda pixels, op, value, centre: R.apply_tables(pixels, R.lookup_tables(pixels, op, value))
    if index <= R.SHARPNESS:
        return lambda pixels, op, value, centre: R.enhance(pixels, op, value)
    return R.cutout


def op_values(index, n, size, generator):
    """float64 [n]: data.batched_randaug.op_values of random magnitudes and signs (magnitudes 0
    and 30 with both signs first), checked against data.randaug.op_value, then edge values."""
    op, low, high = randaug.OPS[index]
    magnitude = torch.rand(n, dtype=torch.float64, generator=generator) * 30
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    magnitude[:4], sign[:4] = torch.tensor([0.0, 30.0, 0.0, 30.0]), torch.tensor([1.0, 1.0, -1.0, -1.0])
    values = R.op_values(magnitude, torch.full((n,), index), sign)
    signed = op in randaug.SIGNED
    assert values.tolist() == [randaug.op_value(m, low, high) * (s if signed else 1)
                               for m, s in zip(magnitude.tolist(), sign.tolist())]
    edges = edge_values(op.__name__, size)
    values[4:4 + len(edges)] = torch.tensor(edges, dtype=torch.float64)
    return values


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('index', range(randaug.NUM_OPS), ids=[op.__name__ for op, _, _ in randaug.OPS])
def test_ops_at_other_sizes_are_pils(device, index, size):
    """Each of the 15 ops on 24 views of 224 (and 96) px, photo-like then the edge images, at
    magnitudes 0 and 30 of both signs, edge values and random magnitudes; Cutout with centres at
    0, just below 1 and random: data/randaug's PIL op, pixel for pixel."""
    op = randaug.OPS[index][0]
    images = op_images(size)
    generator = torch.Generator().manual_seed(index)
    values = op_values(index, IMAGES_PER_OP, size, generator)
    centres = torch.rand(IMAGES_PER_OP, 2, dtype=torch.float64, generator=generator)
    centres[:4] = torch.tensor([[0.0, 0.0], [1 - 2 ** -53, 0.5], [0.5, 1 / size], [1 - 2 ** -53, 1 - 2 ** -53]])
    ops = torch.full((IMAGES_PER_OP,), index, device=device)
    out = as_pixels(op_family(index)(as_batch(images, device).double(), ops, values.to(device), centres.to(device)))
    for image, value, centre, got in zip(images, values.tolist(), centres.tolist(), out):
        img = Image.fromarray(image)
        expected = op(img, value, centre) if op is randaug.cutout else op(img, value)
        assert np.array_equal(got, np.asarray(expected)), (op.__name__, size, value, centre)


def test_rand_augment_at_224_is_pils(device):
    """BCL's RandAugmentProb(2, 30 w u, p = w) of design 9.3 on 12 samples x 2 views of 224 px,
    some samples with w = 1 (both ops applied), some with random w (ops applied or not):
    rand_augment == data.randaug.apply_rand_augment view for view."""
    n = 12
    weight = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weight[:4] = 1.0
    key = keyed_seed(7, 2, 3)
    drawn = draw_views(key, torch.arange(n), (300, 400), 2, weight, recipe=IMAGENET)
    params = draw_views(key, torch.arange(n, device=device), (300, 400), 2, weight.to(device), recipe=IMAGENET)
    assert drawn.op_applied.any() and (~drawn.op_applied).any() and drawn.op_applied[:4].all()
    images = photo_like(2 * n, 224, seed=5)
    out = as_pixels(R.rand_augment(as_batch(images, device).double(), params))
    views = [view for pair in drawn.per_view() for view in pair]
    for image, view, got in zip(images, views, out):
        expected = randaug.apply_rand_augment(Image.fromarray(image), view['magnitude'], view['ops'],
                                              view['op_applied'], view['op_sign'], view['op_centre'])
        assert np.array_equal(got, np.asarray(expected)), view


def adversarial_starts(size, n=150, seed=0):
    """float64 starts of ImagingScaleAffine's sums: translations' v * size + 0.5, integers and
    half-integers moved by a few units of 2^-60 .. 2^-31, values just below an integer by an odd
    multiple of half a grid step (ties), tiny values about 0, -0.5 and -1."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-size - 2, size + 2, (n,), generator=g).double()
    starts = [torch.empty(n, dtype=torch.float64).uniform_(-0.66, 0.66, generator=g) * size + 0.5]
    for e in range(-60, -30, 3):
        for half in (0.0, 0.5):
            starts.append(base + half + torch.randint(-3, 4, (n,), generator=g).double() * 2.0 ** e)
        odd = 2 * torch.randint(1, 64, (n,), generator=g).double() - 1
        starts.append(base + 1 - odd * 2.0 ** (e - 1))
    tiny = torch.empty(n, dtype=torch.float64).uniform_(-1, 1, generator=g) * 2.0 ** -torch.randint(
        1, 80, (n,), generator=g).double()
    starts += [tiny, tiny - 0.5, tiny + 0.5, tiny - 1.0, torch.tensor([0.0, -0.0, 0.5, -0.5, -2.0 ** -54])]
    return torch.cat(starts)


@pytest.mark.parametrize('size', (32, 97, 224, 256))
def test_unit_steps_are_pillows_per_step_sums(size):
    """unit_steps == ImagingScaleAffine's `xo += 1.0` pixel after pixel (here a loop of float64
    adds) for ~5,000 starts chosen where rounding matters; start + k (rounded once) is not."""
    starts = adversarial_starts(size)
    steps, term = [], starts
    for _ in range(size):
        steps.append(term)
        term = term + 1.0
    loop = torch.stack(steps, 1)
    assert torch.equal(R.unit_steps(starts, size), loop)
    once = starts[:, None] + torch.arange(size, dtype=torch.float64)
    assert not torch.equal(R._coord(once), R._coord(loop))


def test_scaling_path_steps_by_one():
    """unit_steps' premise: every matrix of affine_matrices that takes ImagingScaleAffine's path
    (b = d = 0) has a = e = 1.0, for each op at values across its range, its ends, zeros of both
    signs and rotations about 0 and 360 degrees; its starts are far below 2^51. Pillow's
    fixed-point range bounds the view size."""
    values = torch.cat([torch.linspace(-60, 60, 20001, dtype=torch.float64), torch.tensor(
        [0.0, -0.0, 1e-300, -1e-300, 1e-14, -1e-14, 2e-14, -6e-14, 1e-9, -1e-9], dtype=torch.float64)])
    for index in range(R.ROTATE + 1):
        high = randaug.OPS[index][2]
        scaled = values * (high / 60)
        matrix = R.affine_matrices(torch.full((len(scaled),), index), scaled, 224)
        scaling = (matrix[:, 1] == 0) & (matrix[:, 3] == 0)
        assert scaling.any()
        assert (matrix[scaling][:, [0, 4]] == 1.0).all(), index
        assert (matrix[scaling][:, [2, 5]].abs() <= 0.66 * 224).all()
    with pytest.raises(ValueError, match='fixed-point'):
        R.affine_sources(matrix[:1], R.MAX_VIEW_SIZE)


def test_rotate_matrix_at_224_is_pils_to_the_fixed_point():
    """Rotate's matrix at 224 px for 50,000 random angles: within 2e-15 of Pillow's (3e-13 for
    the translation terms, 7 times 32 px's centre) and equal once quantised to 16.16 fixed point,
    as affine_fixed does (its start terms included)."""
    angles = torch.empty(50_000, dtype=torch.float64).uniform_(-60, 60, generator=torch.Generator().manual_seed(1))
    ours = R.affine_matrices(torch.full((len(angles),), R.ROTATE), angles, 224)
    pils = torch.tensor([pil_rotate_matrix(a, 224) for a in angles.tolist()], dtype=torch.float64)
    tolerance = torch.tensor([2e-15, 2e-15, 3e-13, 2e-15, 2e-15, 3e-13], dtype=torch.float64)
    assert ((ours - pils).abs() <= tolerance).all()
    fixed = lambda m: torch.floor(m * 65536.0 + 0.5)
    assert torch.equal(fixed(ours), fixed(pils))
    for c, a, b in ((2, 0, 1), (5, 3, 4)):
        assert torch.equal(fixed(ours[:, c] + ours[:, a] * 0.5 + ours[:, b] * 0.5),
                           fixed(pils[:, c] + pils[:, a] * 0.5 + pils[:, b] * 0.5))


@pytest.mark.parametrize('size', SIZES)
def test_mean_grey_is_contrasts_mean(device, size):
    """mean_grey == ImageEnhance.Contrast's int(ImageStat.Stat(L).mean[0] + 0.5) (Pillow 13: the
    integer sum over the integer count) on photo-like and edge images, and on greys whose mean is
    a half-integer that a multiplication by the reciprocal of 224^2 would round down (as CUDA's
    `tensor / number` does; only a half-integer mean can change its rounding, by an ulp)."""
    count = size * size
    sums = (2 * torch.arange(255, dtype=torch.float64) + 1) * (count // 2)  # means 0.5 .. 254.5
    reciprocal = torch.floor(sums * (1.0 / count) + 0.5) != torch.floor(sums / count + 0.5)
    assert reciprocal.any() == (size == 224)  # 154 means at 224 px; none at 96
    greys = []
    for total in sums[reciprocal][[0, 1, -2, -1]].long().tolist() if size == 224 else []:
        grey = np.full(count, total // count, dtype=np.uint8)
        grey[:total % count] += 1
        greys.append(np.repeat(grey.reshape(1, size, size, 1), 3, 3))
    images = np.concatenate([op_images(size)] + greys)
    got = mean_grey(as_batch(images, device).double()).flatten().tolist()
    expected = [int(ImageStat.Stat(Image.fromarray(image).convert('L')).mean[0] + 0.5) for image in images]
    assert got == expected


def test_rand_augment_at_224_divides_exactly_and_reads_nothing():
    """At 224 px, RandAugmentProb (k = 2, every op applied) on the meta device, where reading a
    value (item, bool, tolist, nonzero) fails: no division that CUDA would round differently
    (data.batched_augment.divide instead; Contrast's 224^2 pixels) and no host data sent."""
    n, meta = 64, torch.device('meta')
    params = draw_views(keyed_seed(0, 1, 2), torch.arange(n, device=meta), (256, 256), 2,
                        torch.ones(n, dtype=torch.float64, device=meta), recipe=IMAGENET)
    pixels = torch.empty(2 * n, 3, 224, 224, dtype=torch.float64, device=meta)
    with InexactDivisions() as divisions, HostTransfers() as transfers:
        out = R.rand_augment(pixels, params)
    assert out.shape == pixels.shape and out.device == meta
    assert divisions.found == [] and transfers.found == []
