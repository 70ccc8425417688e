"""RandAugment (design 1.3): every op against an independent computation, the
magnitude-to-value table, and the op-application rules of RandAugment / RandAugmentProb."""
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from data import randaug
from data.randaug import RandAugment, RandAugmentProb, augment_list


@pytest.fixture
def img():
    """A 32x40 (width x height) RGB image, not square so width/height mix-ups show."""
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 256, size=(40, 32, 3)).astype(np.uint8))


def pixels(image):
    return np.asarray(image).astype(np.int64)


def affine_nearest(image, a, b, c, d, e, f):
    """Numpy reference of PIL's affine transform: output pixel (x, y) takes the input pixel
    containing (a x' + b y' + c, d x' + e y' + f) at pixel centres x' = x + .5; black outside."""
    src = pixels(image)
    height, width = src.shape[:2]
    y, x = np.mgrid[0:height, 0:width] + 0.5
    sx = np.floor(a * x + b * y + c).astype(int)
    sy = np.floor(d * x + e * y + f).astype(int)
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    out = np.zeros_like(src)
    out[inside] = src[sy[inside], sx[inside]]
    return out


def with_sign(monkeypatch, flip):
    """Make randaug's sign draw deterministic: random.random() < 0.5 flips the sign."""
    monkeypatch.setattr(random, 'random', lambda: 0.1 if flip else 0.9)
    return -1 if flip else 1


NAMES = ['shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate', 'auto_contrast',
         'invert', 'equalize', 'solarize', 'posterize', 'contrast', 'color', 'brightness',
         'sharpness', 'cutout']

# Design 1.3: the value each op gets at magnitude 0, 15 and 30.
VALUES = {
    'shear_x': (0, 0.3, 0.6), 'shear_y': (0, 0.3, 0.6),
    'translate_x': (0, 0.33, 0.66), 'translate_y': (0, 0.33, 0.66),
    'rotate': (0, 30, 60), 'solarize': (0, 55, 110), 'posterize': (4, 6, 8),
    'contrast': (0.1, 1.0, 1.9), 'color': (0.1, 1.0, 1.9), 'brightness': (0.1, 1.0, 1.9),
    'sharpness': (0.1, 1.0, 1.9), 'cutout': (0, 0.2, 0.4),
}


def test_augment_list_order():
    assert [op.__name__ for op, _, _ in augment_list()] == NAMES


@pytest.mark.parametrize('m_index, m', [(0, 0), (1, 15), (2, 30)])
def test_magnitude_to_value(m_index, m, img):
    for op, low, high in augment_list():
        seen = []
        augment = RandAugment(1, m)
        augment.ops = [(lambda image, v: seen.append(v) or image, low, high)]
        assert augment(img) is img
        if op.__name__ in VALUES:
            assert seen == [pytest.approx(VALUES[op.__name__][m_index])], op.__name__
        else:
            assert len(seen) == 1  # AutoContrast / Invert / Equalize ignore v


@pytest.mark.parametrize('flip', [False, True])
def test_shear_and_translate(monkeypatch, img, flip):
    sign = with_sign(monkeypatch, flip)
    width, height = img.size
    v = 0.3
    assert np.array_equal(pixels(randaug.shear_x(img, v)), affine_nearest(img, 1, sign * v, 0, 0, 1, 0))
    assert np.array_equal(pixels(randaug.shear_y(img, v)), affine_nearest(img, 1, 0, 0, sign * v, 1, 0))
    v = 0.25  # whole pixels: 8 of the width, 10 of the height
    assert np.array_equal(pixels(randaug.translate_x(img, v)),
                          affine_nearest(img, 1, 0, sign * v * width, 0, 1, 0))
    assert np.array_equal(pixels(randaug.translate_y(img, v)),
                          affine_nearest(img, 1, 0, 0, 0, 1, sign * v * height))
    shifted = pixels(randaug.translate_x(img, v))
    if flip:  # output x takes input x - 8: the image moves right, black enters on the left
        assert np.array_equal(shifted[:, 8:], pixels(img)[:, :-8]) and not shifted[:, :8].any()
    else:
        assert np.array_equal(shifted[:, :-8], pixels(img)[:, 8:]) and not shifted[:, -8:].any()


@pytest.mark.parametrize('flip', [False, True])
def test_rotate(monkeypatch, img, flip):
    sign = with_sign(monkeypatch, flip)
    assert np.array_equal(pixels(randaug.rotate(img, 30)), pixels(img.rotate(sign * 30)))
    assert not np.array_equal(pixels(img.rotate(30)), pixels(img.rotate(-30)))


def test_value_free_ops(img):
    src = pixels(img)
    assert np.array_equal(pixels(randaug.invert(img, 0.5)), 255 - src)
    assert np.array_equal(pixels(randaug.equalize(img, 0.5)), pixels(ImageOps.equalize(img)))
    low = Image.fromarray((pixels(img) // 4 + 50).astype(np.uint8))  # range 50..113 per channel
    lo, hi = pixels(low).min(axis=(0, 1)), pixels(low).max(axis=(0, 1))
    scale = 255.0 / (hi - lo)  # PIL's lookup table: int(x * scale - lo * scale)
    stretched = (pixels(low) * scale - lo * scale).astype(int)
    assert (stretched.min(axis=(0, 1)) == 0).all() and (stretched.max(axis=(0, 1)) >= 254).all()
    assert np.array_equal(pixels(randaug.auto_contrast(low, 0.5)), stretched)


def test_solarize_and_posterize(img):
    src = pixels(img)
    for v in (0, 55, 110):
        assert np.array_equal(pixels(randaug.solarize(img, v)), np.where(src >= v, 255 - src, src))
    for v, bits in ((4, 4), (6.9, 6), (8, 8), (0.5, 1)):
        mask = 256 - 2 ** (8 - bits)
        assert np.array_equal(pixels(randaug.posterize(img, v)), src & mask)


def test_enhance_ops(img):
    for name, enhancer in (('contrast', ImageEnhance.Contrast), ('color', ImageEnhance.Color),
                           ('brightness', ImageEnhance.Brightness),
                           ('sharpness', ImageEnhance.Sharpness)):
        op = getattr(randaug, name)
        assert np.array_equal(pixels(op(img, 1.0)), pixels(img)), name
        for v in (0.1, 1.9):
            assert np.array_equal(pixels(op(img, v)), pixels(enhancer(img).enhance(v))), name
    # brightness 0.1 is 10% of every pixel value (rounded)
    assert np.abs(pixels(randaug.brightness(img, 0.1)) - pixels(img) * 0.1).max() <= 1


@pytest.mark.parametrize('seed', range(6))
def test_cutout(img, seed):
    width, height = img.size
    v = 0.4
    random.seed(seed)
    out = pixels(randaug.cutout(img, v))
    random.seed(seed)
    cx, cy = random.uniform(0, width), random.uniform(0, height)
    side = v * width
    x0, x1 = int(max(0, cx - side / 2)), int(min(width, cx + side / 2))
    y0, y1 = int(max(0, cy - side / 2)), int(min(height, cy + side / 2))
    expected = pixels(img)
    expected[y0:y1, x0:x1] = (125, 123, 114)
    assert np.array_equal(out, expected)
    assert x1 - x0 <= 13 and y1 - y0 <= 13


def test_cutout_side_and_noop(monkeypatch, img):
    monkeypatch.setattr(random, 'uniform', lambda a, b: (a + b) / 2)  # centre (16, 20)
    out = pixels(randaug.cutout(img, 0.25))  # side 8: x 12..19, y 16..23
    filled = (out == (125, 123, 114)).all(axis=2)
    assert filled[16:24, 12:20].all() and filled.sum() == 64
    assert randaug.cutout(img, 0.0) is img


def counting_ops(counter):
    def wrap(op):
        def counted(image, v):
            counter.append(op.__name__)
            return op(image, v)
        return counted
    return [(wrap(op), low, high) for op, low, high in augment_list()]


@pytest.mark.parametrize('n', [1, 2, 3])
def test_rand_augment_applies_n_ops(img, n):
    for seed in range(5):
        random.seed(seed)
        for augment in (RandAugment(n, 10), RandAugmentProb(n, 10, p=1.0)):
            applied = []
            augment.ops = counting_ops(applied)
            augment(img)
            assert len(applied) == n


def test_rand_augment_prob_zero_is_identity(img):
    for seed in range(20):
        random.seed(seed)
        applied = []
        augment = RandAugmentProb(3, 30, p=0.0)
        augment.ops = counting_ops(applied)
        assert np.array_equal(pixels(augment(img)), pixels(img)) and applied == []


def test_rand_augment_prob_rule(monkeypatch, img):
    """Each drawn op is applied exactly when random.random() < p."""
    draws = iter([0.3, 0.5, 0.49])
    monkeypatch.setattr(random, 'choices', lambda population, k: [population[6]] * k)  # invert
    monkeypatch.setattr(random, 'random', lambda: next(draws))
    out = RandAugmentProb(3, 10, p=0.5)(img)  # applied, skipped (0.5 is not < 0.5), applied
    assert np.array_equal(pixels(out), pixels(img))
    draws = iter([0.3, 0.7, 0.8])
    assert np.array_equal(pixels(RandAugmentProb(3, 10, p=0.5)(img)), 255 - pixels(img))
