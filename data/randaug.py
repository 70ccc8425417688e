"""RandAugment with the 15 operations of design 1.3, written with PIL.

Each op is `op(img, v) -> PIL image`; a magnitude m in [0, 30] maps to
`v = m / 30 * (max - min) + min`. Randomness (sign flips, Cutout position, op choice)
uses python `random` only: torch seeds it per DataLoader worker.
"""
import random

from PIL import Image, ImageEnhance, ImageOps

CUTOUT_FILL = (125, 123, 114)


def random_sign(v):
    """-v or v with probability 0.5 each."""
    return -v if random.random() < 0.5 else v


def affine(img, matrix):
    """PIL affine transform (output pixel (x, y) <- input (a x + b y + c, d x + e y + f)),
    nearest neighbour, black fill."""
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=0)


def shear_x(img, v):
    return affine(img, (1, random_sign(v), 0, 0, 1, 0))


def shear_y(img, v):
    return affine(img, (1, 0, 0, random_sign(v), 1, 0))


def translate_x(img, v):
    return affine(img, (1, 0, random_sign(v) * img.size[0], 0, 1, 0))


def translate_y(img, v):
    return affine(img, (1, 0, 0, 0, 1, random_sign(v) * img.size[1]))


def rotate(img, v):
    return img.rotate(random_sign(v))


def auto_contrast(img, _):
    return ImageOps.autocontrast(img)


def invert(img, _):
    return ImageOps.invert(img)


def equalize(img, _):
    return ImageOps.equalize(img)


def solarize(img, v):
    return ImageOps.solarize(img, v)


def posterize(img, v):
    return ImageOps.posterize(img, max(1, int(v)))


def contrast(img, v):
    return ImageEnhance.Contrast(img).enhance(v)


def color(img, v):
    return ImageEnhance.Color(img).enhance(v)


def brightness(img, v):
    return ImageEnhance.Brightness(img).enhance(v)


def sharpness(img, v):
    return ImageEnhance.Sharpness(img).enhance(v)


def cutout(img, v):
    """Fill a square of side v * width at a random centre, clipped to the image.

    The published code keeps the full side at the top/left border (it shifts the square
    instead of clipping it) and its inclusive PIL rectangle is one pixel larger than the
    side; design 1.3 says a square of side v * width, clipped, which is what we draw.
    """
    if v <= 0:
        return img
    width, height = img.size
    side = v * width
    cx, cy = random.uniform(0, width), random.uniform(0, height)
    box = (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
           int(min(width, cx + side / 2)), int(min(height, cy + side / 2)))
    img = img.copy()
    img.paste(CUTOUT_FILL, box)
    return img


def augment_list():
    """[(op, min, max)] in the order of design 1.3."""
    return [
        (shear_x, 0.0, 0.6), (shear_y, 0.0, 0.6),
        (translate_x, 0.0, 0.66), (translate_y, 0.0, 0.66),
        (rotate, 0.0, 60.0),
        (auto_contrast, 0.0, 1.0), (invert, 0.0, 1.0), (equalize, 0.0, 1.0),
        (solarize, 0.0, 110.0), (posterize, 4.0, 8.0),
        (contrast, 0.1, 1.9), (color, 0.1, 1.9), (brightness, 0.1, 1.9), (sharpness, 0.1, 1.9),
        (cutout, 0.0, 0.4),
    ]


def op_value(m, low, high):
    """Design 1.3: magnitude m in [0, 30] -> the op's value."""
    return m / 30 * (high - low) + low


class RandAugment:
    """Draw n ops with replacement and apply each at magnitude m."""

    def __init__(self, n, m):
        self.n, self.m = n, float(m)
        self.ops = augment_list()

    def __call__(self, img):
        for op, low, high in random.choices(self.ops, k=self.n):
            if self.keep():
                img = op(img, op_value(self.m, low, high))
        return img

    def keep(self):
        return True


class RandAugmentProb(RandAugment):
    """Draw n ops with replacement; apply each with probability p at magnitude m."""

    def __init__(self, n, m, p):
        super().__init__(n, m)
        self.p = float(p)

    def keep(self):
        return random.random() < self.p
