"""BCL's RandAugmentProb (design 1.3-1.4) as batched tensor ops on any device, pixel-exact with
data/randaug.py's PIL ops (issue 12, design 8).

Views are square, of any side S (CIFAR's 32 px, design 9.3's 224 px): every size-dependent value
(rotate's centre S / 2, translate's shift and Cutout's side v * S, the pixel count of Contrast's
mean) comes from the pixels' shape, as data/randaug.py takes it from the image's.

Each sample of a batch has its own op in each of the k slots (or none: not applied), its own
value and Cutout centre. A slot is applied to the whole batch as four families, each the identity
for a sample whose op is not in it, so nothing is indexed by a data-dependent count (no host sync):

- geometric (ShearX/Y, TranslateX/Y, Rotate): the same affine matrix as PIL (rotate's included:
  angle % 360, cos/sin rounded to 15 digits, about the centre), mapped through Pillow's
  ImagingTransformAffine: a matrix with no shear terms goes through its double-precision scaling
  path (ImagingScaleAffine: coordinates accumulated one pixel at a time, each sum rounded, which
  unit_steps reproduces without a loop), any other through its 16.16 fixed-point path (integer
  arithmetic); nearest neighbour, black outside;
- lookup tables (AutoContrast, Invert, Equalize, Solarize, Posterize): ImageOps' per-image,
  per-channel 256-entry tables, Equalize's from a histogram of integer counts;
- enhance (Contrast, Color, Brightness, Sharpness): Image.blend with ImageEnhance's degenerate
  image; Sharpness' is Pillow's 3x3 SMOOTH filter in float32 (kernel 1/13, 5/13, rows summed
  y+1, y, y-1, +0.5, truncated; border pixels unchanged);
- Cutout: the clipped square of data/randaug.cutout.

One value can differ from PIL's: Rotate's cos and sin (glibc's on the host, the device's libm
here) may differ in the last bit before the rounding to 15 digits. Pillow then quantises the
matrix to 1/65536 (its fixed-point path), so a pixel changes only if a matrix entry times 65536
lies within about 1e-10 of a half-integer (2e-8 at 224 px, whose translation terms are 7 times
larger): the fixed-point matrices agreed for all of 200,000 random angles at 32, 96 and 224 px,
and a pixel should differ less than once in 10^9 rotations at 32 px, 10^8 at 224 px. (Likewise
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
MAX_VIEW_SIZE = 20480  # views must be smaller: Pillow's fixed-point affine range (affine_sources)
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


def affine_matrices(op, value, size=VIEW_SIZE):
    """float64 [N, 6]: the (a, b, c, d, e, f) PIL receives from data/randaug's geometric ops
    on square views of side `size` (identity for the others)."""
    one, zero = torch.ones_like(value), torch.zeros_like(value)
    # Image.rotate: angle % 360 (Python's float modulo), -radians, cos/sin rounded to 15 digits,
    # the centre (w / 2, h / 2) moved to the origin and back.
    angle = torch.where(value < 0, value + 360.0, value)
    radians = -(angle * (math.pi / 180.0))
    cos, sin = _round15(torch.cos(radians)), _round15(torch.sin(radians))
    centre = size / 2
    rotate = (cos, sin, (cos * -centre + sin * -centre + 0.0) + centre,
              -sin, cos, (-sin * -centre + cos * -centre + 0.0) + centre)
    shift = value * size
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


def _round_to_grid(x, exponent):
    """x rounded to a multiple of 2^exponent, ties to even (exact: scaling by a power of two and
    torch.round, which rounds half to even)."""
    return torch.round(x * 2.0 ** -exponent) * 2.0 ** exponent


def unit_steps(start, size):
    """float64 [M, size]: ImagingScaleAffine's coordinates from each start (|start| < 2^51),
    `xo += 1.0` one output pixel at a time, the sum rounded at every step: the same doubles,
    in a few tensor ops instead of a loop over the pixels (a kernel launch each on a GPU).

    Write the k-th term c_k = k + s_k. c + 1.0 is exact unless the sum lands in a binade
    [2^p, 2^(p+1)) whose grid 2^(p-52) is coarser than c's: entered from below (p >= 0), or
    [0.5, 1) from (-0.5, 0) (p = -1; from [-1, -0.5] the sum is exact by Sterbenz's lemma, and a
    negative sum is smaller in magnitude than c). k + s rounded to a grid 2^e <= 1/2 is k plus s
    rounded to it (k is a multiple of 2^(e+1), so ties go the same way), hence s_k is the start
    rounded, in increasing order, to the grid of each binade the terms have entered by step k;
    rounding to a binade that was skipped (the start lies above it) does nothing, its grid being
    no coarser than the start's own. Binade p (p >= 0) is entered by step k exactly when
    s + k >= 2^p, s rounded for the binades below (if a rounding reaches 2^p itself, rounding
    again is the identity). Terms from 2^(size.bit_length() + 1) on are not rounded further:
    they are outside the image either way. start + k instead rounds once, not at every binade,
    which differs for some starts (by a whole pixel where a term lies just below an integer)."""
    k = torch.arange(size, dtype=torch.float64, device=start.device)
    s = start[:, None].expand(-1, size)
    s = torch.where((k >= 1) & (s > -0.5) & (s < 0), _round_to_grid(s, -53), s)
    for p in range(size.bit_length() + 1):
        s = torch.where(s >= 2.0 ** p - k, _round_to_grid(s, p - 52), s)
    return s + k  # exact: the chain's term is this sum


def affine_sources(matrix, size=VIEW_SIZE):
    """int64 [N, size, size]: y * size + x of the input pixel of each output pixel, -1 where black.

    ImagingScaleAffine's steps a0, a4 are 1.0 in every matrix of affine_matrices that takes it
    (a1 = a3 = 0: translate, the identity, shear by 0, a rotation whose sine rounds to 0 has
    cosine 1.0), which unit_steps relies on; its starts are c + 0.5 with |c| <= 0.66 size.
    affine_fixed needs ImagingTransformAffine's check_fixed (else Pillow takes its double path):
    every corner maps within 32768 pixels, true for size < 32768 / 1.6 with these ops
    (|shear| <= 0.6; a rotation about the centre stays within 1.21 size)."""
    if size >= MAX_VIEW_SIZE:
        raise ValueError(f'{size} px views: Pillow leaves its fixed-point affine path from {MAX_VIEW_SIZE} px')
    a0, a1, a2, a3, a4, a5 = matrix.unbind(1)
    n = len(matrix)
    # ImagingScaleAffine: xo = c + a * 0.5, then += a one output pixel at a time (likewise y).
    scale = _coord(unit_steps(torch.cat((a2 + a0 * 0.5, a5 + a4 * 0.5)), size))
    scale_x, scale_y = scale[:n, None, :], scale[n:, :, None]
    # affine_fixed: FIX(v) = floor(v * 65536 + 0.5), integer steps (xx += a0 along a row, a2 += a1
    # down the rows), >> 16; int32 in C, never overflowing within check_fixed's range.
    fix = lambda v: torch.floor(v * 65536.0 + 0.5).long()[:, None, None]
    pixel = torch.arange(size, device=matrix.device)
    row, column = pixel[None, :, None], pixel[None, None, :]
    fixed_x = (fix(a2 + a0 * 0.5 + a1 * 0.5) + row * fix(a1) + column * fix(a0)) >> 16
    fixed_y = (fix(a5 + a3 * 0.5 + a4 * 0.5) + row * fix(a4) + column * fix(a3)) >> 16
    scaling = ((a1 == 0) & (a3 == 0))[:, None, None]  # ImagingTransformAffine's dispatch
    x, y = torch.where(scaling, scale_x, fixed_x), torch.where(scaling, scale_y, fixed_y)
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    return torch.where(inside, y * size + x, -1)


def geometric(pixels, op, value):
    size = pixels.shape[-1]
    source = affine_sources(affine_matrices(op, value, size), size).flatten(1)
    flat = pixels.flatten(2).gather(2, source.clamp(min=0)[:, None].expand(-1, pixels.shape[1], -1))
    return torch.where((source >= 0)[:, None], flat, 0.0).view_as(pixels)


def lookup_tables(pixels, op, value):
    """float64 [N, 3, 256]: ImageOps' table of each sample's op, per channel (identity for ops
    without one)."""
    values = pixels.flatten(2)  # [N, 3, size * size]
    level = torch.arange(256, dtype=torch.float64, device=pixels.device).expand(*values.shape[:2], -1)
    lo, hi = values.amin(2, keepdim=True), values.amax(2, keepdim=True)
    # autocontrast: scale = 255 / (hi - lo), offset = -lo * scale, int(ix * scale + offset), clipped
    scale = torch.full_like(hi, 255.0) / torch.where(hi > lo, hi - lo, 1.0)  # tensor / tensor: IEEE
    auto = torch.where(hi > lo, torch.trunc(level * scale + -lo * scale).clamp(0, 255), level)
    # equalize: step = (count - count of the top level) // 255, lut[i] = (step // 2 + #(< i)) // step
    # (identity where step is 0, which includes a single level), clipped as Image.point clips
    below = _values_below(values)
    step = below.gather(2, hi.long()) // 255  # values < the top level, // 255
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


def _values_below(values):
    """int64 [N, 3, 256]: how many of each row's values (integers 0-255) lie below each level:
    Image.histogram's counts (integer adds, the same in any order on any device), summed before
    each level."""
    index = values.long()
    one = torch.ones((), dtype=torch.long, device=values.device).expand_as(index)
    count = torch.zeros(*values.shape[:2], 256, dtype=torch.long, device=values.device)
    count.scatter_add_(2, index, one)
    return count.cumsum(2) - count


def apply_tables(pixels, lut):
    return lut.gather(2, pixels.flatten(2).long()).view_as(pixels)


def smooth(pixels):
    """Pillow's ImagingFilter3x3 with SMOOTH (design 8): float32 (also the result, integer valued),
    border pixels unchanged. Each product and sum is its own float32 op, as C evaluates them
    (no fused multiply-add), into reused buffers."""
    p = pixels.float()
    height, width = p.shape[2:]
    total = torch.full_like(p[..., 1:-1, 1:-1], 0.5)
    row_sum, term = torch.empty_like(total), torch.empty_like(total)
    for dy in (1, 0, -1):  # Pillow adds row y+1, then y, then y-1, each as left + centre + right
        rows = p[..., 1 + dy:height - 1 + dy, :]
        weights = SMOOTH_KERNEL[1 - dy]
        torch.mul(rows[..., 0:width - 2], weights[0], out=row_sum)
        row_sum += torch.mul(rows[..., 1:width - 1], weights[1], out=term)
        row_sum += torch.mul(rows[..., 2:], weights[2], out=term)
        total += row_sum
    out = p.clone()
    out[..., 1:-1, 1:-1] = total.clamp_(0, 255).trunc_()
    return out


def enhance(pixels, op, value):
    """ImageEnhance's Contrast, Color, Brightness, Sharpness at each sample's factor (factor 1.0,
    the identity, for the other samples). The degenerate images are built in float32, where
    Image.blend works (their integer values are exact)."""
    factor = torch.where((op >= CONTRAST) & (op <= SHARPNESS), value, 1.0)
    grey = luminance(pixels)
    degenerate = smooth(pixels)
    for index, image in ((CONTRAST, mean_grey(pixels, grey).float()), (COLOR, grey.float()), (BRIGHTNESS, 0.0)):
        degenerate = torch.where((op == index)[:, None, None, None], image, degenerate)
    return blend(degenerate, pixels, factor)


def cutout(pixels, op, value, centre):
    """data.randaug.cutout: the square of side v * size about the centre, clipped, truncated to
    [x0, x1) x [y0, y1), filled with CUTOUT_FILL."""
    size = pixels.shape[-1]
    side = value * size
    x, y = centre[:, 0] * size, centre[:, 1] * size
    x0, y0 = torch.trunc((x - side / 2).clamp(min=0)), torch.trunc((y - side / 2).clamp(min=0))
    x1, y1 = torch.trunc((x + side / 2).clamp(max=size)), torch.trunc((y + side / 2).clamp(max=size))
    pixel = torch.arange(size, dtype=torch.float64, device=pixels.device)
    column = (pixel >= x0[:, None]) & (pixel < x1[:, None])
    row = (pixel >= y0[:, None]) & (pixel < y1[:, None])
    square = (row[:, :, None] & column[:, None, :]) & (op == CUTOUT)[:, None, None]  # empty for v <= 0
    fill = torch.stack([torch.full((), level, dtype=pixels.dtype, device=pixels.device)
                        for level in CUTOUT_FILL])[:, None, None]  # [3, 1, 1], made on the device
    return torch.where(square[:, None], fill, pixels)


def apply_op(pixels, op, value, centre):
    """Each sample's op (int64 [N], NO_OP for none) at its value (float64 [N], signed already)
    and Cutout centre ([N, 2] fractions of width, height): data.randaug's PIL op, batched."""
    pixels = geometric(pixels, op, value)
    pixels = apply_tables(pixels, lookup_tables(pixels, op, value))
    pixels = enhance(pixels, op, value)
    return cutout(pixels, op, value, centre)


def rand_augment(pixels, params):
    """RandAugmentProb of design 1.4 / 9.3 on the base views (float64 pixel values [2B, 3, S, S]:
    square views of any side S, 32 for CIFAR, 224 for ImageNet; views in (sample, view) order)
    with the drawn data.view_params.ViewParams: slot by slot, each sample's op if applied
    (data.randaug.apply_rand_augment)."""
    n, slots = len(pixels), params.ops.shape[-1]
    ops = torch.where(params.op_applied, params.ops, NO_OP).reshape(n, slots)
    signs, centres = params.op_sign.reshape(n, slots), params.op_centre.reshape(n, slots, 2)
    magnitude = params.magnitude.reshape(n)
    for slot in range(slots):
        value = op_values(magnitude, ops[:, slot], signs[:, slot])
        pixels = apply_op(pixels, ops[:, slot], value, centres[:, slot])
    return pixels
