"""RandAugment (design 1.3): every op against an independent computation, the
magnitude-to-value table, and how apply_rand_augment applies drawn ops (their draws are
tested in test_view_params.py)."""
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from data import randaug
from data.randaug import OPS, apply_rand_augment, op_value


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


def test_ops_order():
    assert [op.__name__ for op, _, _ in OPS] == NAMES


@pytest.mark.parametrize('m_index, m', [(0, 0), (1, 15), (2, 30)])
def test_magnitude_to_value(m_index, m):
    for op, low, high in OPS:
        if op.__name__ in VALUES:
            assert op_value(m, low, high) == pytest.approx(VALUES[op.__name__][m_index]), op.__name__


@pytest.mark.parametrize('sign', [-1.0, 1.0])
def test_apply_gives_each_op_its_value_sign_and_centre(img, sign):
    """apply_rand_augment(img, m, [op], [True], [sign], [centre]) is the op at v = op_value(m):
    signed ops (design 1.3: shear, translate, rotate) at sign * v, Cutout at the centre."""
    m, centre = 17.0, (0.3, 0.8)
    for index, (op, low, high) in enumerate(OPS):
        v = op_value(m, low, high)
        if op.__name__ in ('shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate'):
            expected = op(img, sign * v)
        elif op.__name__ == 'cutout':
            expected = op(img, v, centre)
        else:
            expected = op(img, v)
        out = apply_rand_augment(img, m, [index], [True], [sign], [centre])
        assert np.array_equal(pixels(out), pixels(expected)), op.__name__
        assert apply_rand_augment(img, m, [index], [False], [sign], [centre]) is img


def test_apply_follows_the_applied_draws(img):
    """Invert drawn three times: applied, skipped, applied is the identity; three applied invert."""
    invert = NAMES.index('invert')
    out = apply_rand_augment(img, 10, [invert] * 3, [True, False, True], [1.0] * 3, [(0.5, 0.5)] * 3)
    assert np.array_equal(pixels(out), pixels(img))
    out = apply_rand_augment(img, 10, [invert] * 3, [True] * 3, [1.0] * 3, [(0.5, 0.5)] * 3)
    assert np.array_equal(pixels(out), 255 - pixels(img))
    assert apply_rand_augment(img, 30, [], [], [], []) is img  # --rand_k 0


@pytest.mark.parametrize('flip', [False, True])
def test_shear_and_translate(img, flip):
    sign = -1 if flip else 1
    width, height = img.size
    v = 0.3
    assert np.array_equal(pixels(randaug.shear_x(img, sign * v)), affine_nearest(img, 1, sign * v, 0, 0, 1, 0))
    assert np.array_equal(pixels(randaug.shear_y(img, sign * v)), affine_nearest(img, 1, 0, 0, sign * v, 1, 0))
    v = 0.25  # whole pixels: 8 of the width, 10 of the height
    assert np.array_equal(pixels(randaug.translate_x(img, sign * v)),
                          affine_nearest(img, 1, 0, sign * v * width, 0, 1, 0))
    assert np.array_equal(pixels(randaug.translate_y(img, sign * v)),
                          affine_nearest(img, 1, 0, 0, 0, 1, sign * v * height))
    shifted = pixels(randaug.translate_x(img, sign * v))
    if flip:  # output x takes input x - 8: the image moves right, black enters on the left
        assert np.array_equal(shifted[:, 8:], pixels(img)[:, :-8]) and not shifted[:, :8].any()
    else:
        assert np.array_equal(shifted[:, :-8], pixels(img)[:, 8:]) and not shifted[:, -8:].any()


@pytest.mark.parametrize('flip', [False, True])
def test_rotate(img, flip):
    sign = -1 if flip else 1
    assert np.array_equal(pixels(randaug.rotate(img, sign * 30)), pixels(img.rotate(sign * 30)))
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
    rng = random.Random(seed)
    out = pixels(randaug.cutout(img, v, (rng.random(), rng.random())))
    rng = random.Random(seed)  # the same uniforms as a centre uniform over the image (design 1.3)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    side = v * width
    x0, x1 = int(max(0, cx - side / 2)), int(min(width, cx + side / 2))
    y0, y1 = int(max(0, cy - side / 2)), int(min(height, cy + side / 2))
    expected = pixels(img)
    expected[y0:y1, x0:x1] = (125, 123, 114)
    assert np.array_equal(out, expected)
    assert x1 - x0 <= 13 and y1 - y0 <= 13


def test_cutout_side_and_noop(img):
    out = pixels(randaug.cutout(img, 0.25, (0.5, 0.5)))  # centre (16, 20), side 8: x 12..19, y 16..23
    filled = (out == (125, 123, 114)).all(axis=2)
    assert filled[16:24, 12:20].all() and filled.sum() == 64
    assert randaug.cutout(img, 0.0, (0.5, 0.5)) is img
