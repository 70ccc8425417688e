"""BCL's RandAugmentProb (design 1.3-1.4) as batched tensor ops on any device, pixel-exact with
data/randaug.py's PIL ops (issue 12, design 8).

Each sample of a batch has its own op in each of the k slots (or none: not applied), its own
value and Cutout centre. A slot is applied to the whole batch as four families, each the identity
for a sample whose op is not in it, so nothing is indexed by a data-dependent count (no host sync):

- geometric (ShearX/Y, TranslateX/Y, Rotate): the same affine matrix as PIL (rotate's included:
  angle % 360, cos/sin rounded to 15 digits, about the centre), mapped through Pillow's
  ImagingTransformAffine: a matrix with no shear terms goes through its double-precision scaling
  path (ImagingScaleAffine: coordinates accumulated one pixel at a time), any other through its
  16.16 fixed-point path (integer arithmetic); nearest neighbour, black outside;
- lookup tables (AutoContrast, Invert, Equalize, Solarize, Posterize): ImageOps' per-image,
  per-channel 256-entry tables, built from sorted pixel values instead of a histogram;
- enhance (Contrast, Color, Brightness, Sharpness): Image.blend with ImageEnhance's degenerate
  image; Sharpness' is Pillow's 3x3 SMOOTH filter in float32 (kernel 1/13, 5/13, rows summed
  y+1, y, y-1, +0.5, truncated; border pixels unchanged);
- Cutout: the clipped square of data/randaug.cutout.

One value can differ from PIL's: Rotate's cos and sin (glibc's on the host, the device's libm
here) may differ in the last bit before the rounding to 15 digits. Pillow then quantises the
matrix to 1/65536 (its fixed-point path), so a pixel changes only if a matrix entry times 65536
lies within about 1e-10 of a half-integer: the fixed-point matrices agreed for all of 200,000
random angles in the tests, and a pixel should differ less than once in 10^9 rotations. (Likewise
the order in which the SMOOTH filter adds its rows is Pillow's, though no order was seen to change
a pixel in 2 million random neighbourhoods.) Every other step is IEEE-exact (+, -, *, / in float32
or float64 as C evaluates them, floor, trunc, comparisons, integer ops), so CPU and CUDA give the
same bits.
"""
import math

import numpy as np
import torch

from data.batched_augment import VIEW_SIZE, blend, divide, luminance, mean_grey
from data.randaug import CUTOUT_FILL, NUM_OPS, OPS, SIGNED

(SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, ROTATE, AUTO_CONTRAST, INVERT, EQUALIZE, SOLARIZE,
 POSTERIZE, CONTRAST, COLOR, BRIGHTNESS, SHARPNESS, CUTOUT) = range(NUM_OPS)
NO_OP = NUM_OPS  # a slot whose op is not applied
# ImageFilter.SMOOTH: weights 1 (5 in the centre) / 13 as C's float / float, float32 values
SMOOTH_KERNEL = [[float(np.float32(w) / np.float32(13)) for w in row]
                 for row in ((1, 1, 1), (1, 5, 1), (1, 1, 1))]


def op_values(magnitude, op, sign):
    """data.randaug.op_value(m, low, high) of each sample's op (float64 [N]), times its sign for the
    signed ops (design 1.3)."""
    fraction = divide(magnitude, 30.0)
    value = torch.zeros_like(magnitude)
    for index, (function, low, high) in enumerate(OPS):
        scaled = fraction * (high - low) + low
        value = torch.where(op == index, sign * scaled if function in SIGNED else scaled, value)
    return value


def affine_matrices(op, value):
    """float64 [N, 6]: the (a, b, c, d, e, f) PIL receives from data/randaug's geometric ops
    (identity for the others)."""
    one, zero = torch.ones_like(value), torch.zeros_like(value)
    # Image.rotate: angle % 360 (Python's float modulo), -radians, cos/sin rounded to 15 digits,
    # the centre (w / 2, h / 2) moved to the origin and back.
    angle = torch.where(value < 0, value + 360.0, value)
    radians = -(angle * (math.pi / 180.0))
    cos, sin = _round15(torch.cos(radians)), _round15(torch.sin(radians))
    centre = VIEW_SIZE / 2
    rotate = (cos, sin, (cos * -centre + sin * -centre + 0.0) + centre,
              -sin, cos, (-sin * -centre + cos * -centre + 0.0) + centre)
    shift = value * VIEW_SIZE
    by_op = {SHEAR_X: (one, value, zero, zero, one, zero), SHEAR_Y: (one, zero, zero, value, one, zero),
             TRANSLATE_X: (one, zero, shift, zero, one, zero), TRANSLATE_Y: (one, zero, zero, zero, one, shift),
             ROTATE: rotate}
    matrix = torch.stack((one, zero, zero, zero, one, zero), 1)
    for index, entries in by_op.items():
        matrix = torch.where((op == index)[:, None], torch.stack(entries, 1), matrix)
    return matrix


def _round15(x):
    """Python's round(x, 15) for |x| <= 1 (see the module docstring for the last bit)."""
    return divide(torch.round(x * 1e15), 1e15)


def _coord(v):
    """Pillow's COORD: -1 below 0, else truncated."""
    return torch.where(v < 0, -1.0, torch.trunc(v)).long()


def affine_sources(matrix):
    """int64 [N, 32, 32] (y, x) of the input pixel of each output pixel, -1 where black."""
    a0, a1, a2, a3, a4, a5 = matrix.unbind(1)
    pixel = torch.arange(VIEW_SIZE, device=matrix.device)
    # ImagingScaleAffine: xo = c + a * 0.5, then += a one output pixel at a time (likewise y).
    xo, yo = a2 + a0 * 0.5, a5 + a4 * 0.5
    xs, ys = [], []
    for _ in range(VIEW_SIZE):
        xs.append(xo)
        ys.append(yo)
        xo, yo = xo + a0, yo + a4
    scale_x = _coord(torch.stack(xs, 1))[:, None, :].expand(-1, VIEW_SIZE, -1)
    scale_y = _coord(torch.stack(ys, 1))[:, :, None].expand(-1, -1, VIEW_SIZE)
    # affine_fixed: FIX(v) = floor(v * 65536 + 0.5), integer steps, >> 16.
    fix = lambda v: torch.floor(v * 65536.0 + 0.5).long()[:, None, None]
    x0, x1, y0, y1 = fix(a2 + a0 * 0.5 + a1 * 0.5), fix(a0), fix(a5 + a3 * 0.5 + a4 * 0.5), fix(a3)
    row, column = pixel[None, :, None], pixel[None, None, :]
    fixed_x = (x0 + row * fix(a1) + column * x1) >> 16
    fixed_y = (y0 + row * fix(a4) + column * y1) >> 16
    scaling = ((a1 == 0) & (a3 == 0))[:, None, None]  # ImagingTransformAffine's dispatch
    x, y = torch.where(scaling, scale_x, fixed_x), torch.where(scaling, scale_y, fixed_y)
    inside = (x >= 0) & (x < VIEW_SIZE) & (y >= 0) & (y < VIEW_SIZE)
    return torch.where(inside, y * VIEW_SIZE + x, -1)


def geometric(pixels, op, value):
    source = affine_sources(affine_matrices(op, value)).flatten(1)[:, None].expand(-1, pixels.shape[1], -1)
    flat = pixels.flatten(2).gather(2, source.clamp(min=0))
    return torch.where(source >= 0, flat, 0.0).view_as(pixels)


def lookup_tables(pixels, op, value):
    """float64 [N, 3, 256]: ImageOps' table of each sample's op, per channel (identity for ops
    without one)."""
    values = pixels.flatten(2)  # [N, 3, 1024]
    level = torch.arange(256, dtype=torch.float64, device=pixels.device).expand(*values.shape[:2], -1)
    lo, hi = values.amin(2, keepdim=True), values.amax(2, keepdim=True)
    # autocontrast: scale = 255 / (hi - lo), offset = -lo * scale, int(ix * scale + offset), clipped
    scale = torch.full_like(hi, 255.0) / torch.where(hi > lo, hi - lo, 1.0)  # tensor / tensor: IEEE
    auto = torch.where(hi > lo, torch.trunc(level * scale + -lo * scale).clamp(0, 255), level)
    # equalize: step = (count - count of the top level) // 255, lut[i] = (step // 2 + #(< i)) // step
    # (identity where step is 0, which includes a single level), clipped as Image.point clips
    ordered = values.sort(2).values.contiguous()
    below = torch.searchsorted(ordered, level.contiguous())  # int64: the values < each level
    step = torch.searchsorted(ordered, hi.contiguous()) // 255  # values < the top level, // 255
    equal = torch.where(step > 0, ((step // 2 + below) // step.clamp(min=1)).clamp(max=255).double(), level)
    threshold = value[:, None, None]
    bits = torch.trunc(threshold).clamp(min=1).long()  # posterize: max(1, int(v)) bits kept
    kept_mask = ~((1 << (8 - bits)) - 1)
    tables = {AUTO_CONTRAST: auto, INVERT: 255 - level, EQUALIZE: equal,
              SOLARIZE: torch.where(level < threshold, level, 255 - level),
              POSTERIZE: (level.long() & kept_mask).double()}
    lut = level
    for index, table in tables.items():
        lut = torch.where((op == index)[:, None, None], table, lut)
    return lut


def apply_tables(pixels, lut):
    return lut.gather(2, pixels.flatten(2).long()).view_as(pixels)


def smooth(pixels):
    """Pillow's ImagingFilter3x3 with SMOOTH (design 8): float32, border pixels unchanged."""
    p = pixels.float()
    height, width = p.shape[2:]
    total = torch.full_like(p[..., 1:-1, 1:-1], 0.5)
    for dy in (1, 0, -1):  # Pillow adds row y+1, then y, then y-1, each as left + centre + right
        rows = p[..., 1 + dy:height - 1 + dy, :]
        weights = SMOOTH_KERNEL[1 - dy]
        left, centre, right = rows[..., 0:width - 2], rows[..., 1:width - 1], rows[..., 2:]
        row_sum = (left * weights[0] + centre * weights[1]) + right * weights[2]
        total = total + row_sum
    out = pixels.clone()
    out[..., 1:-1, 1:-1] = torch.trunc(total.clamp(0, 255)).double()
    return out


def enhance(pixels, op, value):
    """ImageEnhance's Contrast, Color, Brightness, Sharpness at each sample's factor (factor 1.0,
    the identity, for the other samples)."""
    factor = torch.where((op >= CONTRAST) & (op <= SHARPNESS), value, 1.0)
    degenerate = smooth(pixels)
    for index, image in ((CONTRAST, mean_grey(pixels)), (COLOR, luminance(pixels)), (BRIGHTNESS, 0.0)):
        degenerate = torch.where((op == index)[:, None, None, None], image, degenerate)
    return blend(degenerate, pixels, factor)


def cutout(pixels, op, value, centre):
    """data.randaug.cutout: the square of side v * 32 about the centre, clipped, truncated to
    [x0, x1) x [y0, y1), filled with CUTOUT_FILL."""
    side = value * VIEW_SIZE
    x, y = centre[:, 0] * VIEW_SIZE, centre[:, 1] * VIEW_SIZE
    x0, y0 = torch.trunc((x - side / 2).clamp(min=0)), torch.trunc((y - side / 2).clamp(min=0))
    x1, y1 = torch.trunc((x + side / 2).clamp(max=VIEW_SIZE)), torch.trunc((y + side / 2).clamp(max=VIEW_SIZE))
    pixel = torch.arange(VIEW_SIZE, dtype=torch.float64, device=pixels.device)
    column = (pixel >= x0[:, None]) & (pixel < x1[:, None])
    row = (pixel >= y0[:, None]) & (pixel < y1[:, None])
    square = (row[:, :, None] & column[:, None, :]) & (op == CUTOUT)[:, None, None]  # empty for v <= 0
    fill = torch.stack([torch.full_like(pixels[:, 0], level) for level in CUTOUT_FILL], 1)
    return torch.where(square[:, None], fill, pixels)


def apply_op(pixels, op, value, centre):
    """Each sample's op (int64 [N], NO_OP for none) at its value (float64 [N], signed already)
    and Cutout centre ([N, 2] fractions of width, height): data.randaug's PIL op, batched."""
    pixels = geometric(pixels, op, value)
    pixels = apply_tables(pixels, lookup_tables(pixels, op, value))
    pixels = enhance(pixels, op, value)
    return cutout(pixels, op, value, centre)


def rand_augment(pixels, params):
    """RandAugmentProb of design 1.4 on the base views (float64 pixel values [2B, 3, 32, 32], views
    in (sample, view) order) with the drawn data.view_params.ViewParams: slot by slot, each
    sample's op if applied (data.randaug.apply_rand_augment)."""
    n, slots = len(pixels), params.ops.shape[-1]
    ops = torch.where(params.op_applied, params.ops, NO_OP).reshape(n, slots)
    signs, centres = params.op_sign.reshape(n, slots), params.op_centre.reshape(n, slots, 2)
    magnitude = params.magnitude.reshape(n)
    for slot in range(slots):
        value = op_values(magnitude, ops[:, slot], signs[:, slot])
        pixels = apply_op(pixels, ops[:, slot], value, centres[:, slot])
    return pixels
