"""Design 1.2's base augmentation as batched tensor ops on any device, pixel-exact with the PIL
path (issue 12, design 8).

Given the parameters of data/view_params.py, `base_pixels` gives, for a whole batch at once, the
same uint8 pixels as data/augmentations.augment_view (torchvision's functional ops on PIL),
because every op repeats Pillow's arithmetic:

- crop + bicubic resize to 32x32: Pillow's two-pass resampling (a = -0.5, coefficients
  normalised in double, stored in 22-bit fixed point, horizontal pass first, each pass rounded
  and clipped to uint8), as one integer resampling matrix per sample and axis; the products and
  sums are integers below 2^53, so a float64 matmul computes them exactly on every device;
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
import torch

from data.view_params import ViewParams

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
VIEW_SIZE = 32
TAPS = 5  # Pillow's ksize for an upscale: ceil(support 2) * 2 + 1


def divide(x, divisor):
    """x / divisor, correctly rounded on every device (see the module docstring)."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)  # made on the device: no copy


def _bicubic(x):
    """Pillow's bicubic_filter (a = -0.5) in double, evaluated in C's order."""
    x = x.abs()
    inner = ((1.5 * x - 2.5) * x) * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * -0.5
    return torch.where(x < 1, inner, torch.where(x < 2, outer, torch.zeros_like(x)))


def resample_matrix(start, size, full):
    """float64 [B, 32, full]: row o holds Pillow's fixed-point bicubic coefficients of output
    pixel o over input pixels start .. start + size - 1 (precompute_coeffs and
    normalize_coeffs_8bpc for an upscale of `size` <= 32 pixels to 32), zero elsewhere."""
    size = size.double()[:, None]
    center = (torch.arange(VIEW_SIZE, dtype=torch.float64, device=size.device) + 0.5)[None] * (size / VIEW_SIZE)
    xmin = torch.trunc(center - 2.0 + 0.5).clamp(min=0)  # C's (int) truncates toward zero
    xmax = torch.minimum(torch.trunc(center + 2.0 + 0.5), size) - xmin
    taps = torch.arange(TAPS, dtype=torch.float64, device=size.device)
    x = xmin[..., None] + taps  # [B, 32, TAPS] input pixel of each tap
    weight = torch.where(taps < xmax[..., None], _bicubic((x - center[..., None]) + 0.5), 0.0)
    total = torch.zeros_like(center)
    for tap in range(TAPS):  # C sums the taps in order; the invalid ones add 0.0 exactly
        total = total + weight[..., tap]
    weight = weight / total[..., None]
    scaled = weight * 2.0 ** PRECISION_BITS
    fixed = torch.where(weight < 0, torch.trunc(-0.5 + scaled), torch.trunc(0.5 + scaled))
    column = (start.double()[:, None, None] + x).clamp(max=full - 1).long()  # invalid taps hold 0
    return torch.zeros(len(start), VIEW_SIZE, full, dtype=torch.float64,
                       device=size.device).scatter_add_(2, column, fixed)


def _clip8(total):
    """Pillow's clip8 after a pass: (sum + 2^21) >> 22, clipped to [0, 255]."""
    return torch.floor((total + 2.0 ** (PRECISION_BITS - 1)) / 2.0 ** PRECISION_BITS).clamp(0, 255)


def resized_crop(images, boxes):
    """uint8 [B, C, H, W] -> float64 pixel values [B, C, 32, 32]: the (top, left, height, width)
    box of each image resized to 32x32 as PIL's crop + resize(BICUBIC)."""
    top, left, height, width = boxes.unbind(1)
    horizontal = resample_matrix(left, width, images.shape[3])  # [B, 32, W]
    vertical = resample_matrix(top, height, images.shape[2])  # [B, 32, H]
    rows = _clip8(images.double() @ horizontal.transpose(1, 2)[:, None])  # [B, C, H, 32]
    return _clip8(vertical[:, None] @ rows)


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


def base_pixels(images, params: ViewParams):
    """Design 1.2's base augmentation of both views of each image (uint8 [B, 3, H, W]) from their
    parameters: float64 pixel values [2B, 3, 32, 32], the views of each image in turn, equal to
    the PIL path's augment_view without RandAugment ops."""
    pixels = resized_crop(images.repeat_interleave(2, 0), params.crop.reshape(-1, 4))
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
    """[2B, 3, 32, 32] pixel values -> float32 [B, 2, 3, 32, 32] in [0, 1], as ToTensor."""
    return divide(pixels.float(), 255.0).reshape(-1, 2, 3, VIEW_SIZE, VIEW_SIZE)
