"""RandAugment with the 15 operations of design 1.3, written with PIL.

Each op is deterministic, `op(img, v) -> PIL image` (Cutout also takes its centre); a
magnitude m in [0, 30] maps to `v = m / 30 * (max - min) + min`. The random draws (op choice,
whether each op is applied, sign flips, Cutout centre) come from data/view_params.py, keyed by
(seed, epoch, position, view); apply_rand_augment applies them.
"""
from PIL import Image, ImageEnhance, ImageOps

CUTOUT_FILL = (125, 123, 114)

def affine(img, matrix):
    """PIL affine transform (output pixel (x, y) <- input (a x + b y + c, d x + e y + f)),
    nearest neighbour, black fill."""
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=0)


def shear_x(img, v):
    return affine(img, (1, v, 0, 0, 1, 0))


def shear_y(img, v):
    return affine(img, (1, 0, 0, v, 1, 0))


def translate_x(img, v):
    return affine(img, (1, 0, v * img.size[0], 0, 1, 0))


def translate_y(img, v):
    return affine(img, (1, 0, 0, 0, 1, v * img.size[1]))


def rotate(img, v):
    return img.rotate(v)


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


def cutout(img, v, centre):
    """Fill a square of side v * width centred at (centre[0] * width, centre[1] * height)
    (centre: two uniforms in [0, 1), a centre uniform over the image), clipped to the image.

    Design 1.3: a square of side v * width, random centre, clipped. The published code differs
    in three details: it keeps the full side at the top/left border (it shifts the square
    instead of clipping it), its inclusive PIL rectangle is one pixel larger than the side, and
    its centre is np.random.uniform(w), which NumPy reads as uniform(low=w, high=1.0): a centre
    in (1, w], never in the first pixel (a swapped-argument slip; the intent is uniform(0, w)).
    """
    if v <= 0:
        return img
    width, height = img.size
    side = v * width
    cx, cy = centre[0] * width, centre[1] * height
    box = (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
           int(min(width, cx + side / 2)), int(min(height, cy + side / 2)))
    img = img.copy()
    img.paste(CUTOUT_FILL, box)
    return img


OPS = [  # (op, min, max) in the order of design 1.3
    (shear_x, 0.0, 0.6), (shear_y, 0.0, 0.6),
    (translate_x, 0.0, 0.66), (translate_y, 0.0, 0.66),
    (rotate, 0.0, 60.0),
    (auto_contrast, 0.0, 1.0), (invert, 0.0, 1.0), (equalize, 0.0, 1.0),
    (solarize, 0.0, 110.0), (posterize, 4.0, 8.0),
    (contrast, 0.1, 1.9), (color, 0.1, 1.9), (brightness, 0.1, 1.9), (sharpness, 0.1, 1.9),
    (cutout, 0.0, 0.4),
]
NUM_OPS = len(OPS)
SIGNED = (shear_x, shear_y, translate_x, translate_y, rotate)  # design 1.3: sign flipped with p=0.5


def op_value(m, low, high):
    """Design 1.3: magnitude m in [0, 30] -> the op's value."""
    return m / 30 * (high - low) + low


def apply_rand_augment(img, magnitude, ops, applied, signs, centres):
    """Design 1.3's RandAugmentProb(k, m, p) with its draws given: the k op indices (drawn with
    replacement), whether each is applied (its uniform < p), each op's sign and Cutout centre
    (data/view_params.py); a signed op gets sign * v."""
    for index, keep, sign, centre in zip(ops, applied, signs, centres):
        if keep:
            op, low, high = OPS[index]
            v = op_value(magnitude, low, high)
            img = op(img, sign * v) if op in SIGNED else cutout(img, v, centre) if op is cutout else op(img, v)
    return img
