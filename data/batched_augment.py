"""The base augmentation (design 1.2, 9.3) as batched tensor ops on any device, pixel-exact with the
PIL path (issues 12, 24; design 8).

Given the parameters of data/view_params.py, `resized_crops` then `colour_pixels` give, for a whole
batch at once, the same uint8 pixels as data/augmentations.augment_view (torchvision's functional ops
on PIL), because every op repeats Pillow's arithmetic:

- crop + bicubic resize to the view's size (32 or 224): Pillow's two-pass resampling (a = -0.5, a
  downscale's filter widened by the scale, coefficients normalised in double, stored in 22-bit fixed
  point, each pass rounded and clipped to uint8; horizontal pass first, except where Pillow 13 goes
  vertically first), as one integer resampling matrix per view and axis; the products and sums are
  integers below 2^53, so a float64 matmul computes them exactly on every device;
- flip; grayscale and the L channel: (19595 R + 38470 G + 7471 B + 0x8000) >> 16;
- brightness, contrast, saturation: Image.blend in float32, truncated (contrast blends with
  the grey int(mean(L) + 0.5), saturation with L);
- hue: Pillow's 8-bit RGB -> HSV -> RGB with its float / double mix, the hue byte shifted as
  torchvision does (wrapping uint8 add of int(hue * 255)).

`gaussian_blur` gives design 9.3's img.filter(ImageFilter.GaussianBlur(radius=sigma)) the same
way: Pillow's box radius from sigma in C's floats, then its six fixed-point box passes.

Only IEEE-exact ops (+, -, *, / and sqrt of float32 or float64 as C evaluates them, floor, trunc,
comparisons, integer ops) are used, so CPU and CUDA give the same bits: a division by a number
that is not a power of two goes through `divide`, because PyTorch's CUDA kernel multiplies by the
reciprocal of a Python-number divisor (and `number / tensor` is a reciprocal times the number
everywhere).
No step sends host data to the device or reads a device value (no host sync per batch):
constants are Python numbers or made on the device. tests/test_batched_augment.py checks
every op against PIL.
"""
import math

import numpy as np
import torch
from PIL import Image

from data.view_params import ViewParams

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
VIEW_SIZE = 32
TAPS = 5  # Pillow's ksize for an upscale: ceil(support 2) * 2 + 1
BICUBIC_SUPPORT = 2.0


def divide(x, divisor):
    """x / divisor, correctly rounded on every device (see the module docstring)."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)  # made on the device: no copy


def _bicubic(x):
    """Pillow's bicubic_filter (a = -0.5) in double, evaluated in C's order."""
    x = x.abs()
    inner = ((1.5 * x - 2.5) * x) * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * -0.5
    return torch.where(x < 1, inner, torch.where(x < 2, outer, torch.zeros_like(x)))


def resample_taps(largest, out_size=VIEW_SIZE):
    """Pillow's ksize (precompute_coeffs) for a box side of `largest` pixels resized to `out_size`: enough
    taps for every box up to that side. An upscale has 5; a downscale widens the filter by largest / out_size
    (a 4,000-px side to 224: 73). A host int, so the device never reports it."""
    filterscale = max(largest / out_size, 1.0)
    return int(math.ceil(BICUBIC_SUPPORT * filterscale)) * 2 + 1


def resample_matrix(start, size, full, out_size=VIEW_SIZE, taps=TAPS):
    """float64 [B, out_size, full]: row o holds Pillow's fixed-point bicubic coefficients of output
    pixel o over input pixels start .. start + size - 1 (precompute_coeffs and normalize_coeffs_8bpc
    for `size` pixels to `out_size`: a downscale's filter is widened by size / out_size), zero elsewhere.
    `taps` is at least resample_taps of the largest size."""
    size = size.double()[:, None]
    scale = divide(size, float(out_size))  # (in1 - in0) / outSize
    filterscale = scale.clamp(min=1.0)
    support = BICUBIC_SUPPORT * filterscale
    inverse = torch.ones_like(filterscale) / filterscale  # 1.0 / filterscale, tensor / tensor: IEEE
    center = (torch.arange(out_size, dtype=torch.float64, device=size.device) + 0.5)[None] * scale
    xmin = torch.trunc((center - support) + 0.5).clamp(min=0)  # C's (int) truncates toward zero
    xmax = torch.minimum(torch.trunc((center + support) + 0.5), size) - xmin
    tap = torch.arange(taps, dtype=torch.float64, device=size.device)
    x = xmin[..., None] + tap  # [B, out_size, taps] input pixel of each tap
    filtered = _bicubic(((x - center[..., None]) + 0.5) * inverse[..., None])
    weight = torch.where(tap < xmax[..., None], filtered, 0.0)
    total = torch.zeros_like(center)
    for k in range(taps):  # C sums the taps in order; the invalid ones add 0.0 exactly
        total = total + weight[..., k]
    weight = torch.where(total[..., None] != 0, weight / total[..., None], weight)
    scaled = weight * 2.0 ** PRECISION_BITS
    fixed = torch.where(weight < 0, torch.trunc(-0.5 + scaled), torch.trunc(0.5 + scaled))
    column = (start.double()[:, None, None] + x).clamp(max=full - 1).long()  # invalid taps hold 0
    return torch.zeros(len(start), out_size, full, dtype=torch.float64,
                       device=size.device).scatter_add_(2, column, fixed)


def _pillow_resizes_vertically_first():
    """Whether the installed Pillow runs the vertical pass first when a box's height shrinks much more than
    its width (Pillow 13's ImagingResampleInner; earlier versions always resample horizontally first, and the
    two orders round differently). Asked of Pillow itself, once: a 8 x 40 image resized to 6 x 10 in one call
    against the horizontal pass and then the vertical one as two calls."""
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 8, 3), dtype=np.uint8))
    one_call = image.resize((6, 10), Image.BICUBIC)
    horizontal_first = image.resize((6, 40), Image.BICUBIC).resize((6, 10), Image.BICUBIC)
    return one_call.tobytes() != horizontal_first.tobytes()


PILLOW_VERTICAL_FIRST = _pillow_resizes_vertically_first()


def vertical_first(box_height, box_width, out_height, out_width):
    """Whether Pillow resizes a box (ints, or NumPy arrays of them) vertically first: with Pillow 13, when the
    height shrinks, by more than twice as many pixels as the width (found by measuring Pillow 13, then checked
    on ~1,300 box and output sizes; 60 in tests/test_batched_augment.py); never before. An upscale (CIFAR) is
    never."""
    return PILLOW_VERTICAL_FIRST & (box_height > out_height) & (box_height - out_height > 2 * (box_width - out_width))


def _clip8(total):
    """Pillow's clip8 after a pass: (sum + 2^21) >> 22, clipped to [0, 255]."""
    return torch.floor((total + 2.0 ** (PRECISION_BITS - 1)) / 2.0 ** PRECISION_BITS).clamp(0, 255)


def resized_crops(images, boxes, out_size=VIEW_SIZE, taps=TAPS, vertical_first=False):
    """uint8 [B, C, H, W] and int64 boxes [B, V, 4] (top, left, height, width; V views of each image) ->
    float64 pixel values [B * V, C, out_size, out_size], the views of each image in turn: each box resized as
    PIL's crop + resize(BICUBIC). The horizontal pass reads each image once for all its views (one matmul
    against the views' matrices side by side), then each view's vertical pass; the products and sums are
    integers below 2^53, so the float64 matmuls are exact on every device. `vertical_first`: Pillow's other
    order (see vertical_first()), for every box: the transposed images resampled, the result transposed back.
    Memory: data/device_views.chunk_bytes (fitted to measured peaks)."""
    if vertical_first:
        top, left, box_height, box_width = boxes.unbind(-1)
        transposed = resized_crops(images.transpose(2, 3), torch.stack([left, top, box_width, box_height], -1),
                                   out_size, taps)
        return transposed.transpose(2, 3).contiguous()
    batch, channels, height, width = images.shape
    views = boxes.shape[1]
    top, left, box_height, box_width = boxes.reshape(-1, 4).unbind(1)
    horizontal = resample_matrix(left, box_width, width, out_size, taps).view(batch, views * out_size, width)
    vertical = resample_matrix(top, box_height, height, out_size, taps)  # [B * V, S, H]
    rows = _clip8(images.double().reshape(batch, channels * height, width) @ horizontal.transpose(1, 2))
    rows = rows.view(batch, channels, height, views, out_size).permute(0, 3, 2, 1, 4)
    pixels = _clip8(vertical @ rows.reshape(batch * views, height, channels * out_size))  # [B * V, S, C * S]
    return pixels.view(-1, out_size, channels, out_size).permute(0, 2, 1, 3).contiguous()


def luminance(pixels):
    """Pillow's L of RGB pixel values [B, 3, H, W] (float, integer valued) -> [B, 1, H, W]."""
    r, g, b = pixels.long().unbind(1)
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).unsqueeze(1).to(pixels.dtype)


def blend(degenerate, pixels, factor):
    """Image.blend(degenerate, image, factor): in1 + alpha * (in2 - in1) in float32 (alpha is a C
    float), truncated and clipped to [0, 255]; one factor per image. The same float32 ops, in
    place on a copy of the pixels (views of 224 px are large)."""
    alpha = factor.float()[:, None, None, None]
    degenerate = degenerate.float()
    out = pixels.to(torch.float32, copy=True)
    out -= degenerate
    out *= alpha
    out += degenerate
    return out.trunc_().clamp_(0, 255).double()


def brightness(pixels, factor):
    return blend(torch.zeros_like(pixels), pixels, factor)


def mean_grey(pixels, grey=None):
    """ImageEnhance.Contrast's degenerate level per image, [B, 1, 1, 1]: int(mean + 0.5), where
    Pillow 13's ImageStat mean is the integer sum of L over the integer pixel count (Python's
    int / int, correctly rounded). Both are integers below 2^53, exact in float64, so an IEEE
    division gives the same double at any size (through `divide`: 50176 pixels at 224 px is no
    power of two). `grey`: luminance(pixels) if already computed."""
    grey = (luminance(pixels) if grey is None else grey).double()
    mean = divide(grey.sum((1, 2, 3), keepdim=True), grey[0].numel())
    return torch.floor(mean + 0.5).to(pixels.dtype)


def contrast(pixels, factor):
    return blend(mean_grey(pixels).expand_as(pixels), pixels, factor)


def saturation(pixels, factor):
    return blend(luminance(pixels).expand_as(pixels), pixels, factor)


def _round_half_away(x):
    """C's round() for x >= 0."""
    floor = torch.floor(x)
    return torch.where(x - floor >= 0.5, floor + 1, floor)


def hue(pixels, factor):
    """torchvision's adjust_hue on PIL: Pillow's rgb2hsv, the hue byte plus int(hue * 255)
    modulo 256, Pillow's hsv2rgb; C's float (f32) and double (f64) steps kept as they are."""
    f32, f64 = torch.float32, torch.float64
    r, g, b = pixels.unbind(1)
    maxc, minc = torch.maximum(r, torch.maximum(g, b)), torch.minimum(r, torch.minimum(g, b))
    # rgb2hsv_row
    grey = maxc == minc
    cr = (maxc - minc).to(f32)
    cr_safe = torch.where(grey, torch.ones_like(cr), cr)
    s = cr / torch.where(maxc == 0, torch.ones_like(cr), maxc.to(f32))
    rc, gc, bc = ((maxc - r).to(f32) / cr_safe, (maxc - g).to(f32) / cr_safe, (maxc - b).to(f32) / cr_safe)
    h = torch.where(r == maxc, (bc - gc).to(f64),
                    torch.where(g == maxc, (2.0 + rc.to(f64)) - bc.to(f64),
                                (4.0 + gc.to(f64)) - rc.to(f64))).to(f32)
    shifted = divide(h.to(f64), 6.0) + 1.0
    h = torch.where(shifted >= 1.0, shifted - 1.0, shifted).to(f32)  # fmod(x, 1) for x in (0, 2)
    hue_byte = torch.where(grey, 0.0, torch.trunc(h.to(f64) * 255.0).clamp(0, 255))
    sat_byte = torch.where(grey, 0.0, torch.trunc(s.to(f64) * 255.0).clamp(0, 255))
    value = maxc
    shift = torch.trunc(factor.double() * 255.0)[:, None, None]  # np.int32(hue * 255)
    hue_byte = torch.remainder(hue_byte + shift, 256.0)  # uint8 wrap-around
    # hsv2rgb
    hh = divide(hue_byte.to(f32).to(f64) * 6.0, 255.0)
    i = torch.floor(hh)
    frac = (hh - i).to(f32)
    fs = divide(sat_byte.to(f64), 255.0).to(f32)
    v = value.to(f32).to(f64)
    p = _round_half_away(v * (1.0 - fs.to(f64))).clamp(0, 255)
    q = _round_half_away(v * (1.0 - (fs * frac).to(f64))).clamp(0, 255)
    t = _round_half_away(v * (1.0 - fs.to(f64) * (1.0 - frac.to(f64)))).clamp(0, 255)
    sector = torch.remainder(i, 6.0)
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = [torch.zeros_like(value) for _ in range(3)]
    for k, channels in enumerate(choices):
        for c in range(3):
            out[c] = torch.where(sector == k, channels[c], out[c])
    colour = torch.stack(out, 1)
    return torch.where((sat_byte == 0).unsqueeze(1), value.unsqueeze(1).expand_as(pixels), colour)


JITTER_OPS = (brightness, contrast, saturation, hue)  # ColorJitter's fn_idx order


def colour_pixels(pixels, params: ViewParams):
    """The base augmentation after the crop (flip, ColorJitter in each view's order, grayscale) of the
    resized views [2B, 3, S, S] (float64 pixel values, (sample, view) order)."""
    flip = params.flip.reshape(-1)[:, None, None, None]
    pixels = torch.where(flip, pixels.flip(3), pixels)
    jitter = params.jitter.reshape(-1)[:, None, None, None]
    order, factors = params.jitter_order.reshape(-1, 4), params.jitter_factors.reshape(-1, 4)
    for position in range(4):  # each image's own order: every op, kept where it is this image's turn
        for op_index, op in enumerate(JITTER_OPS):
            turn = jitter & (order[:, position] == op_index)[:, None, None, None]
            pixels = torch.where(turn, op(pixels, factors[:, op_index]), pixels)
    gray = params.gray.reshape(-1)[:, None, None, None]
    return torch.where(gray, luminance(pixels).expand_as(pixels), pixels)


def to_views(pixels):
    """[2B, 3, S, S] pixel values -> float32 [B, 2, 3, S, S] in [0, 1], as ToTensor."""
    return divide(pixels.float(), 255.0).reshape(-1, 2, *pixels.shape[1:])


# ----------------------------------------------------------------------------- Pillow's GaussianBlur
BLUR_PASSES = 3  # ImageFilter.GaussianBlur -> _imaging.c's _gaussian_blur: passes defaults to 3
BLUR_SHIFT = 24  # ImagingHorizontalBoxBlur's fixed point: weights sum to 1 << 24


def float_box_radius(sigma):
    """Pillow's _gaussian_blur_radius (BoxBlur.c) of GaussianBlur(radius=sigma), float64 [N] ->
    float32 [N]: the extended box radius l + a of Gwosdek et al. for 3 passes. The Python float
    is parsed as a C float (_imaging.c: "(ff)"); C's float variables are float32 tensors, its
    double step (sqrt(12.0 * sigma2 + 1.0), floor((L - 1.0) / 2.0)) float64 ones, each result
    stored back in a float. In double throughout, 45% of the sigmas in [0.1, 2] would get another
    ww (and some, e.g. sigma 1, other pixels)."""
    f32, f64 = torch.float32, torch.float64
    radius = sigma.to(f32)
    sigma2 = divide(radius * radius, float(BLUR_PASSES))  # float / int: a float division
    big_l = torch.sqrt(12.0 * sigma2.to(f64) + 1.0).to(f32)  # IEEE sqrt: correctly rounded everywhere
    l = torch.floor((big_l.to(f64) - 1.0) / 2.0).to(f32)
    a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2)
    a = a / (6 * (sigma2 - (l + 1) * (l + 1)))
    return l + a


def blur_box_radius(sigma):
    """ImagingHorizontalBoxBlur's integer parameters of GaussianBlur(radius=sigma), int64 [N]
    each: radius = (int)floatRadius; ww = (UINT32)(1 << 24) / (floatRadius * 2 + 1), a float
    division truncated; fw = ((1 << 24) - (radius * 2 + 1) * ww) / 2, the weight of the two
    pixels just outside the box (its fractional part). floatRadius >= 0, so ww <= 1 << 24 and
    (2 radius + 1) ww <= 1 << 24: the UINT32 arithmetic never wraps."""
    float_radius = float_box_radius(sigma)
    radius = float_radius.long()  # C's (int) truncates
    scale = torch.full((), float(1 << BLUR_SHIFT), dtype=torch.float32, device=sigma.device)
    ww = (scale / (float_radius * 2 + 1)).long()  # a number / tensor would be a reciprocal
    fw = ((1 << BLUR_SHIFT) - (2 * radius + 1) * ww) >> 1
    return radius, ww, fw


def box_reach(max_sigma):
    """The largest box radius of any sigma <= max_sigma, from the host number alone (a CPU
    tensor: no device value is read): the radius of max_sigma, or one more where its float
    radius lies within 1e-3 below an integer (l + a grows with sigma; C's float rounding moves
    it by far less than 1e-3 for any radius below thousands)."""
    float_radius = float_box_radius(torch.tensor([float(max_sigma)], dtype=torch.float64)).item()
    return int(float_radius + 1e-3)


def clamped(line, dim, reach):
    """line with `reach` copies of its first and last pixel added on each side along dim (C's
    edge handling reads lineIn[0] and lineIn[lastx] for positions outside the line), contiguous."""
    shape = list(line.shape)
    shape[dim] = reach
    first, last = line.narrow(dim, 0, 1), line.narrow(dim, line.shape[dim] - 1, 1)
    return torch.cat([first.expand(shape), line, last.expand(shape)], dim).contiguous()


def _reclamp(padded, dim, reach):
    """clamped's edges again, in place, after the line in the middle of padded has changed."""
    size = padded.shape[dim] - 2 * reach
    padded.narrow(dim, 0, reach).copy_(padded.narrow(dim, reach, 1))  # copy_ broadcasts
    padded.narrow(dim, reach + size, reach).copy_(padded.narrow(dim, reach + size - 1, 1))


def box_weights(radius, ww, fw, reach):
    """box_pass's weights for distances 0 .. reach, each [N, 1], from blur_box_radius's [N]
    tensors: ww up to radius, fw at radius + 1, 0 beyond (reach > any radius: the taps past a
    box add 0)."""
    radius, ww, fw = radius[:, None], ww[:, None], fw[:, None]
    zero = torch.zeros_like(ww)
    return [ww] + [torch.where(k <= radius, ww, torch.where(k == radius + 1, fw, zero))
                   for k in range(1, reach + 1)]


def box_pass(source, target, weights, dim):
    """One ImagingHorizontalBoxBlur pass along dim of int64 pixels [N, C, H, W] held as `clamped`
    gives them (reach = len(weights) - 1), from source into target (same shape, contiguous; a
    buffer reused pass after pass, as fresh CPU memory costs more than the arithmetic): pixel x
    is (ww * (sum of the 2 radius + 1 pixels around x) + fw * (pixel x - radius - 1 + pixel
    x + radius + 1) + (1 << 23)) >> 24, pixel indices clamped to the line. This closed form is
    the C's running accumulator (acc starts as the clamped window of pixel -1 and each MOVE_ACC
    slides it by one, in whichever of the edgeA/edgeB branches, radius larger than the line
    included; a test checks it against a transcription of ImagingLineBoxBlur32). The sum is at
    most 255 << 24: no UINT32 wrap-around, and the (UINT8) cast clips nothing.
    Each image is one flat line (contiguous runs, whatever the width): a shift by k pixels along
    dim is a shift by k strides; the padding of rows gets sums across rows, replaced by the edges."""
    reach, step = len(weights) - 1, source.stride(dim)
    flat_in, flat_out = source.flatten(1), target.flatten(1)  # views: both contiguous
    span = flat_in.shape[1] - 2 * reach * step
    out = flat_out.narrow(1, reach * step, span)
    half = torch.full((), 1 << (BLUR_SHIFT - 1), dtype=out.dtype, device=out.device)  # SAVE's rounding
    torch.addcmul(half, flat_in.narrow(1, reach * step, span), weights[0], out=out)
    for k in range(1, reach + 1):
        out.addcmul_(flat_in.narrow(1, (reach - k) * step, span), weights[k])
        out.addcmul_(flat_in.narrow(1, (reach + k) * step, span), weights[k])
    out.bitwise_right_shift_(BLUR_SHIFT)
    _reclamp(target, dim, reach)
    return target


def gaussian_blur(pixels, sigma, max_sigma):
    """Pillow's img.filter(ImageFilter.GaussianBlur(radius=sigma)) of float64 pixel values
    [N, 3, H, W], one sigma per image (float64 [N], 0 <= sigma <= max_sigma; max_sigma, a host
    number, sizes the taps): ImagingBoxBlur's three horizontal passes, each rounded to uint8,
    then (ImagingTranspose, three passes, transpose back) three vertical ones. RGB is stored as
    4-byte pixels (ImagingLineBoxBlur32): the same arithmetic on each channel. Sigma 0 (Pillow:
    a copy) gives ww = 1 << 24, fw = 0: the identity."""
    reach = box_reach(max_sigma) + 1  # fw: one pixel past the box
    weights = box_weights(*blur_box_radius(sigma), reach)
    out = pixels.long()
    for dim in (3, 2):  # rows first, then the transposed image's rows: the columns
        source = clamped(out, dim, reach)
        target = torch.empty_like(source)
        for _ in range(BLUR_PASSES):  # ping-pong between two padded buffers
            source, target = box_pass(source, target, weights, dim), source
        out = source.narrow(dim, reach, out.shape[dim])
    return out.to(pixels.dtype)
