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

Only IEEE-exact ops (+, -, *, / of float32 or float64 as C evaluates them, floor, trunc,
comparisons) are used, so CPU and CUDA give the same bits: a division by a number that is not a
power of two goes through `divide`, because PyTorch's CUDA kernel multiplies by the reciprocal of
a Python-number divisor (and `number / tensor` is a reciprocal times the number everywhere).
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
    (ImageNet crops of a 4,000-px photo to 224: 75). A host int, so the device never reports it."""
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
    weight = torch.where(tap < xmax[..., None], _bicubic(((x - center[..., None]) + 0.5) * inverse[..., None]), 0.0)
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
    height shrinks, by more than twice as many pixels as the width (measured against Pillow on 150 random
    box and output sizes, tests/test_batched_augment.py); never before. An upscale (CIFAR) is never."""
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
    Memory: 8 bytes x C x H x W per image, plus V x C x H x out_size x 8 for the rows between the passes."""
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
    float), truncated and clipped to [0, 255]; one factor per image."""
    alpha = factor.float()[:, None, None, None]
    degenerate = degenerate.float()
    return torch.trunc(degenerate + alpha * (pixels.float() - degenerate)).clamp(0, 255).double()


def brightness(pixels, factor):
    return blend(torch.zeros_like(pixels), pixels, factor)


def mean_grey(pixels):
    """ImageEnhance.Contrast's degenerate level: int(mean(L) + 0.5) per image, [B, 1, 1, 1]."""
    grey = luminance(pixels)
    return torch.floor(grey.sum((1, 2, 3), keepdim=True) / grey[0].numel() + 0.5)  # numel 1024: exact


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
