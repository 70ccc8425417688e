"""data/batched_augment.py and data/batched_randaug.py against PIL (issue 12, design 8): every
op, over many random images and parameters, gives PIL's uint8 pixels exactly; so does the whole
two-view pipeline (base augmentation and BCL's RandAugment), view for view; and the device gives
the CPU's bits."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch.overrides import TorchFunctionMode
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data import batched_augment as B
from data import batched_randaug as R
from data import randaug
from data.augmentations import augment_view
from data.device_views import DeviceViews, make_views
from data.memoboosted_cifar100 import MemoBoostedCIFAR
from data.sampler import EpochBatchSampler
from data.view_params import IMAGENET, draw_views
from utils import keyed_seed

NUM_IMAGES = 400


def sample_images(n=NUM_IMAGES, seed=0):
    """uint8 [n, 32, 32, 3]: a quarter uniform noise, a quarter smooth gradients, a quarter few-level
    flat colours (grey pixels, saturated primaries, 0 and 255: hue's and blend's edge cases), a
    quarter noise around a random colour."""
    rng = np.random.RandomState(seed)
    quarter = n // 4
    noise = rng.randint(0, 256, (quarter, 32, 32, 3))
    yy, xx = np.mgrid[0:32, 0:32]
    start, slope = rng.randint(0, 256, (quarter, 1, 1, 3)), rng.uniform(-8, 8, (quarter, 2, 1, 1, 3))
    smooth = np.clip(start + slope[:, 0] * xx[None, ..., None] + slope[:, 1] * yy[None, ..., None], 0, 255)
    levels = np.array([0, 1, 127, 128, 254, 255])
    flat = levels[rng.randint(0, len(levels), (quarter, 32, 32, 3))]
    flat[:, ::2] = flat[:, ::2, :, :1]  # half the rows grey
    centre = rng.randint(0, 256, (n - 3 * quarter, 1, 1, 3))
    near = np.clip(centre + rng.randint(-6, 7, (n - 3 * quarter, 32, 32, 3)), 0, 255)
    return np.concatenate([noise, smooth, flat, near]).astype(np.uint8)


def as_batch(images, device='cpu'):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def as_pixels(batch):
    """float pixel values [B, 3, H, W] (checked: integers in [0, 255]) -> uint8 numpy [B, H, W, 3]"""
    assert batch.min() >= 0 and batch.max() <= 255 and torch.equal(batch, batch.round())
    return batch.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def params(n, rand_k=0, seed=0):
    return draw_views(keyed_seed(seed, 1, 2), torch.arange(n), (32, 32), rand_k)


def test_resized_crop_is_pils_bicubic_resize():
    """Every crop box of 400 images x 2 views (torchvision's get_params distribution) plus the
    smallest and whole-image boxes: bicubic 32x32 equal to PIL's crop + resize, pixel for pixel."""
    images = sample_images()
    boxes = params(NUM_IMAGES).crop[:, 0].clone()
    boxes[0], boxes[1], boxes[2] = torch.tensor([0, 0, 32, 32]), torch.tensor([3, 5, 1, 1]), torch.tensor([31, 0, 1, 32])
    out = as_pixels(B.resized_crops(as_batch(images), boxes[:, None]))
    for image, box, got in zip(images, boxes.tolist(), out):
        top, left, height, width = box
        expected = F.resized_crop(Image.fromarray(image), top, left, height, width, [32, 32],
                                  InterpolationMode.BICUBIC, antialias=True)
        assert np.array_equal(got, np.asarray(expected)), box


def real_size_image(height, width, seed):
    """uint8 [H, W, 3]: noise on a colour gradient with a hard-edged block (a photo's edges and textures)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], -1)
    base[height // 3:height // 2, width // 4:width // 2] = rng.integers(0, 256, 3)
    return np.clip(base + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)


# (height, width): ImageNet-like sizes, a panorama, a tall strip, a photo over 2,000 px, smaller than the view
REAL_SIZES = [(375, 500), (333, 500), (500, 375), (224, 224), (1200, 1600), (180, 900), (900, 120),
              (2200, 1700), (60, 80), (224, 300)]


def test_resized_crops_downscale_like_pil_at_224(device):
    """ImageNet's crops (design 9.3's draws over each image's own size, both views, plus the whole image, a
    1-pixel box and the largest side) resized to 224 as PIL's crop + resize(BICUBIC), pixel for pixel:
    downscales widen Pillow's filter (up to 41 taps here), upscales keep 5; Pillow 13 resamples some boxes
    vertically first."""
    orders = set()
    for seed, (height, width) in enumerate(REAL_SIZES):
        image = real_size_image(height, width, seed)
        boxes = draw_views(keyed_seed(seed, 1, 2), torch.arange(3), torch.tensor([[height, width]] * 3),
                           recipe=IMAGENET).crop.reshape(1, 6, 4)
        boxes[0, 0], boxes[0, 1] = torch.tensor([0, 0, height, width]), torch.tensor([height // 2, width // 3, 1, 1])
        taps = B.resample_taps(max(height, width), 224)
        for box in boxes[0].tolist():
            top, left, box_height, box_width = box
            orders.add(bool(B.vertical_first(box_height, box_width, 224, 224)))
            order = B.vertical_first(box_height, box_width, 224, 224)
            boxes_here = torch.tensor([[box]], device=device)
            got, = as_pixels(B.resized_crops(as_batch(image[None], device), boxes_here, 224, taps, order))
            expected = F.resized_crop(Image.fromarray(image), top, left, box_height, box_width, [224, 224],
                                      InterpolationMode.BICUBIC, antialias=True)
            assert np.array_equal(got, np.asarray(expected)), ((height, width), box)
    assert (B.resample_taps(32, 32), B.resample_taps(224, 224), B.resample_taps(2200, 224)) == (5, 5, 41)
    assert orders == {False, B.PILLOW_VERTICAL_FIRST}  # both orders seen where Pillow has both


def test_vertical_first_is_pillows_order():
    """The rule of vertical_first() against the installed Pillow itself, on 60 random box and output sizes
    (up- and downscales, non-square outputs): Pillow's one-call resize equals the two passes as two calls in
    the order the rule names."""
    rng = np.random.RandomState(4)
    image = Image.fromarray(rng.randint(0, 256, (700, 700, 3), dtype=np.uint8))
    orders = []
    for _ in range(60):
        box_width, box_height, out_width, out_height = (int(v) for v in rng.randint(8, 700, 4) // [1, 1, 3, 3] + 1)
        box = image.crop((0, 0, box_width, box_height))
        one_call = np.asarray(box.resize((out_width, out_height), Image.BICUBIC))
        orders.append(bool(B.vertical_first(box_height, box_width, out_height, out_width)))
        if orders[-1]:
            passes = box.resize((box_width, out_height), Image.BICUBIC).resize((out_width, out_height), Image.BICUBIC)
        else:
            passes = box.resize((out_width, box_height), Image.BICUBIC).resize((out_width, out_height), Image.BICUBIC)
        assert np.array_equal(one_call, np.asarray(passes)), (box_width, box_height, out_width, out_height)
    assert sum(orders) >= 10 if B.PILLOW_VERTICAL_FIRST else not any(orders)


def test_more_taps_than_needed_change_nothing():
    """A chunk's taps come from its largest box: a smaller box with extra (zero) taps gives the same matrix."""
    start, size = torch.tensor([3, 0, 17]), torch.tensor([40, 224, 300])
    exact = [B.resample_matrix(start[i:i + 1], size[i:i + 1], 400, 224, B.resample_taps(int(size[i]), 224))
             for i in range(3)]
    assert torch.equal(torch.cat(exact), B.resample_matrix(start, size, 400, 224, 31))


@pytest.mark.parametrize('name, pil_op, low, high', [
    ('brightness', F.adjust_brightness, 0.1, 1.9), ('contrast', F.adjust_contrast, 0.1, 1.9),
    ('saturation', F.adjust_saturation, 0.1, 1.9), ('hue', F.adjust_hue, -0.5, 0.5)])
def test_colour_ops_are_pils(name, pil_op, low, high):
    """Each ColorJitter op at random factors over a range wider than ColorJitter's (the
    RandAugment enhance range 0.1-1.9; every hue shift): torchvision's PIL op, pixel for pixel."""
    images = sample_images(seed=1)
    factors = torch.empty(NUM_IMAGES, dtype=torch.float64).uniform_(low, high, generator=torch.Generator().manual_seed(2))
    factors[:3] = torch.tensor([low, high, 1.0 if name != 'hue' else 0.0])
    images[3] = 100  # grey 100 and 101 in halves: mean L 100.5, which contrast rounds up (int(m + 0.5))
    images[3, 16:] = 101
    out = as_pixels(getattr(B, name)(as_batch(images).double(), factors))
    for image, factor, got in zip(images, factors.tolist(), out):
        assert np.array_equal(got, np.asarray(pil_op(Image.fromarray(image), factor))), (name, factor)


def test_grayscale_is_pils():
    images = sample_images(seed=3)
    out = as_pixels(B.luminance(as_batch(images).double()).expand(-1, 3, -1, -1))
    for image, got in zip(images, out):
        assert np.array_equal(got, np.asarray(F.rgb_to_grayscale(Image.fromarray(image), num_output_channels=3)))


def special_images():
    """Edge cases of the histogram ops: one colour; a top level holding all but 24 pixels
    (equalize's step 0: identity); 509 pixels below the top level (step 1: the table exceeds 255
    and is clipped); two levels."""
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    images[0] = (7, 200, 255)
    images[1] = 200
    images[1].reshape(-1, 3)[:24] = 10
    flat = images[2].reshape(-1, 3)
    flat[:509] = np.arange(509)[:, None] % 101
    flat[509:] = 255
    images[3, :, :16] = 3
    images[3, :, 16:] = 250
    return images


# op -> values drawn uniformly (signed ops: both signs) plus edge values; design 1.3's ranges
OP_VALUES = {
    'shear_x': (0.6, [0.0, 0.6, -0.6]), 'shear_y': (0.6, [0.0, 0.6, -0.6]),
    # (2.5 - 1e-6) / 32: x + 0.5 just below 3, where Pillow's double path (no shear) and its
    # fixed-point path (shear) would round differently
    'translate_x': (0.66, [0.0, 0.66, -0.66, 0.5, -1 / 32, (2.5 - 1e-6) / 32]),
    'translate_y': (0.66, [0.0, 0.66, -0.66, 0.5, -1 / 32, (2.5 - 1e-6) / 32]),
    'rotate': (60.0, [0.0, 60.0, -60.0, 45.0, 30.0, -1e-9]),
    'auto_contrast': (1.0, []), 'invert': (1.0, []), 'equalize': (1.0, []),
    'solarize': (110.0, [0.0, 55.0, 110.0, 128.0, 255.0, 256.0]), 'posterize': (8.0, [0.5, 1.0, 4.0, 7.9, 8.0]),
    'contrast': (1.9, [0.0, 0.1, 1.0, 1.9]), 'color': (1.9, [0.0, 0.1, 1.0, 1.9]),
    'brightness': (1.9, [0.0, 0.1, 1.0, 1.9]), 'sharpness': (1.9, [0.0, 0.1, 1.0, 1.9]),
    'cutout': (0.4, [0.0, 0.4, 1 / 32, 0.1]),
}


@pytest.mark.parametrize('index', range(randaug.NUM_OPS), ids=[op.__name__ for op, _, _ in randaug.OPS])
def test_rand_augment_ops_are_pils(index):
    """Each of the 15 RandAugment ops of design 1.3 at random values (and edge values) over 404
    images and random Cutout centres: data/batched_randaug.apply_op == data/randaug's PIL op,
    pixel for pixel."""
    op, _, _ = randaug.OPS[index]
    images = np.concatenate([special_images(), sample_images(seed=10 + index)])
    n = len(images)
    generator = torch.Generator().manual_seed(index)
    high, edges = OP_VALUES[op.__name__]
    low = -high if op in randaug.SIGNED else 0.0
    values = torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)
    values[4:4 + len(edges)] = torch.tensor(edges, dtype=torch.float64)
    centres = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    centres[:3] = torch.tensor([[0.0, 0.0], [1 - 2 ** -53, 0.5], [0.5, 1 / 32]], dtype=torch.float64)
    out = as_pixels(R.apply_op(as_batch(images).double(), torch.full((n,), index), values, centres))
    for image, value, centre, got in zip(images, values.tolist(), centres.tolist(), out):
        img = Image.fromarray(image)
        expected = op(img, value, centre) if op is randaug.cutout else op(img, value)
        assert np.array_equal(got, np.asarray(expected)), (op.__name__, value, centre)


def pil_rotate_matrix(angle, size=32):
    """The matrix Image.rotate(angle) hands to its affine transform (Pillow's Python, rewritten)."""
    angle = -math.radians(angle % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    centre = size / 2
    return [a, b, a * -centre + b * -centre + 0.0 + centre, d, e, d * -centre + e * -centre + 0.0 + centre]


def test_rotate_matrix_is_pils_to_the_fixed_point():
    """Rotate's matrix for 200,000 random angles in [-60, 60]: within 2e-15 of Pillow's (cos and
    sin may differ in the last bit before the rounding to 15 digits; 16 times that for the
    translation terms) and identical once Pillow quantises it to 16.16 fixed point, which is all
    the pixels depend on."""
    angles = torch.empty(200_000, dtype=torch.float64).uniform_(-60, 60, generator=torch.Generator().manual_seed(0))
    ours = R.affine_matrices(torch.full((len(angles),), R.ROTATE), angles)
    pils = torch.tensor([pil_rotate_matrix(a) for a in angles.tolist()], dtype=torch.float64)
    tolerance = torch.tensor([2e-15, 2e-15, 4e-14, 2e-15, 2e-15, 4e-14], dtype=torch.float64)
    assert ((ours - pils).abs() <= tolerance).all()
    fixed = lambda m: torch.floor(m * 65536.0 + 0.5)
    assert torch.equal(fixed(ours), fixed(pils))
    assert torch.equal(fixed(ours[:, 2] + ours[:, 0] * 0.5 + ours[:, 1] * 0.5),
                       fixed(pils[:, 2] + pils[:, 0] * 0.5 + pils[:, 1] * 0.5))


def test_no_op_is_the_identity():
    images = sample_images(seed=30)
    pixels = as_batch(images).double()
    n = len(images)
    values, centres = torch.rand(n, dtype=torch.float64), torch.rand(n, 2, dtype=torch.float64)
    out = R.apply_op(pixels, torch.full((n,), R.NO_OP), values, centres)
    assert torch.equal(out, pixels)


@pytest.mark.parametrize('rand_k', [0, 1, 2])
def test_views_equal_the_pil_path_view_for_view(device, rand_k):
    """The whole two-view pipeline for 400 images x 2 views drawn by the keyed sampler (design
    1.2, and with rand_k > 0 BCL's RandAugmentProb(k, m_i, p=w_i) of design 1.4 at random
    weights): make_views on `device` == ToTensor(augment_view(PIL image, the same parameters)),
    exactly."""
    images = sample_images(seed=4 + rand_k)
    weight = torch.rand(NUM_IMAGES, dtype=torch.float64, generator=torch.Generator().manual_seed(rand_k))
    weight[:50] = 1.0  # every op applied, at the strongest magnitude
    drawn = draw_views(keyed_seed(5, 1, 2), torch.arange(NUM_IMAGES), (32, 32), rand_k, weight)
    views = make_views(as_batch(images, device), draw_views(
        keyed_seed(5, 1, 2), torch.arange(NUM_IMAGES, device=device), (32, 32), rand_k, weight.to(device)))
    assert views.shape == (NUM_IMAGES, 2, 3, 32, 32) and views.dtype == torch.float32
    if rand_k:  # the draws cover every op, applied and not
        applied = drawn.ops[drawn.op_applied]
        assert set(applied.tolist()) == set(range(randaug.NUM_OPS)) and (~drawn.op_applied).any()
    views = views.cpu()
    for image, pair, got in zip(images, drawn.per_view(), views):
        expected = torch.stack([F.to_tensor(augment_view(Image.fromarray(image), view)) for view in pair])
        assert torch.equal(got, expected)


class InexactDivisions(TorchFunctionMode):
    """Records every division PyTorch's CUDA kernels would not round correctly: a float tensor
    divided (or floor-divided) by a Python number that is not a power of two (computed with its
    reciprocal on CUDA) and a number divided by a tensor (reciprocal times the number, everywhere).
    (A CPU 0-dim tensor divisor of a CUDA tensor would be one too; on a CPU-only run it cannot be
    told from an exact one: data/ divides by device scalars made with torch.full.)"""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in ('__rdiv__', '__rtruediv__') or (
                name in ('div', 'div_', 'true_divide', 'floor_divide', '__floordiv__')
                and isinstance(args[1], (int, float)) and args[0].is_floating_point()
                and math.frexp(args[1])[0] not in (0.5, -0.5)):
            self.found.append((name, args[1]))
        return func(*args, **(kwargs or {}))


def test_views_divide_as_cuda_would_round_correctly():
    """CUDA's exactness checked on the CPU: drawing the parameters and making BCL views (every op)
    divides by no Python number other than a power of two (data.batched_augment.divide instead)."""
    images = as_batch(sample_images(n=64, seed=7))
    weight = torch.ones(64, dtype=torch.float64)
    with InexactDivisions() as mode:
        make_views(images, draw_views(keyed_seed(0, 1, 2), torch.arange(64), (32, 32), 3, weight))
    assert mode.found == []
    with InexactDivisions() as mode:  # the check itself sees both kinds
        torch.ones(2) / 6.0, 255.0 / torch.ones(2), torch.ones(2) / 32
        torch.ones(2) // 3, torch.ones(2, dtype=torch.long) // 3
    assert [name for name, _ in mode.found] == ['div', '__rdiv__', '__floordiv__']


class HostTransfers(TorchFunctionMode):
    """Records host data sent to another device: a tensor made from host values on it, or a CPU
    tensor moved to it."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        result = func(*args, **kwargs)
        made = name in ('tensor', 'as_tensor', 'new_tensor', 'from_numpy')
        moved = name in ('to', 'cuda', 'copy_') and isinstance(args[0], torch.Tensor) and (
            args[0].device.type == 'cpu' if name != 'copy_' else args[1].device.type == 'cpu')
        if (made or moved) and isinstance(result, torch.Tensor) and result.device.type != 'cpu':
            self.found.append(name)
        return result


def test_device_views_read_and_send_nothing_per_step(synthetic_cifar):
    """--gpu_aug's per-step work has no host sync: an epoch of DeviceViews for BCL k=2 runs on
    the meta device, where reading any value (item, bool, tolist, nonzero) fails, and sends host
    data to it only when the epoch starts (its sample order and BCL weights), not per batch."""
    dataset = MemoBoostedCIFAR(synthetic_cifar, np.arange(100), rand_k=2)
    dataset.update_momentum_weight(torch.rand(100, generator=torch.Generator().manual_seed(0)))
    views = DeviceViews(dataset, EpochBatchSampler(100, 40, 0), torch.device('meta'))
    views.batch_sampler.set_epoch(1)
    dataset.set_epoch(1)
    with HostTransfers() as mode:
        batches = list(views)
    assert [tuple(v.shape) for v, _ in batches] == [(40, 2, 3, 32, 32), (40, 2, 3, 32, 32), (20, 2, 3, 32, 32)]
    assert all(v.device.type == 'meta' and p.device.type == 'meta' for v, p in batches)
    assert mode.found == ['to', 'to']  # the epoch's order and weights, once
    with HostTransfers() as mode:  # the check itself sees each kind
        torch.tensor([1.0], device='meta'), torch.ones(1).to('meta'), torch.ones(1, device='meta').new_tensor([2])
    assert mode.found == ['tensor', 'to', 'new_tensor']


# ----------------------------------------------------------------------------- Pillow's GaussianBlur (design 9.3)
def numpy_box_radius(sigma, dtype=np.float32):
    """BoxBlur.c's _gaussian_blur_radius and ImagingHorizontalBoxBlur's (radius, ww, fw) of float64
    sigmas, rewritten in numpy: C's float variables as `dtype` (np.float64: the same formula in
    double throughout), its double steps in float64."""
    f, f64 = dtype, np.float64
    radius = np.asarray(sigma, dtype=f64).astype(f)
    sigma2 = radius * radius / f(3)
    big_l = np.sqrt(12.0 * sigma2.astype(f64) + 1.0).astype(f)
    l = np.floor((big_l.astype(f64) - 1.0) / 2.0).astype(f)
    a = (f(2) * l + f(1)) * (l * (l + f(1)) - f(3) * sigma2)
    a = a / (f(6) * (sigma2 - (l + f(1)) * (l + f(1))))
    float_radius = l + a
    box = np.trunc(float_radius).astype(np.int64)
    ww = np.trunc(f(1 << 24) / (float_radius * f(2) + f(1))).astype(np.int64)
    return float_radius, box, ww, ((1 << 24) - (2 * box + 1) * ww) // 2


def float32_steps(value, steps):
    """The float32 numbers `steps` ulps either side of value (float32), as float64."""
    centre = np.float32(value).view(np.int32)
    return np.arange(centre - steps, centre + steps + 1, dtype=np.int32).view(np.float32).astype(np.float64)


# sigma^2 = 2: 12 sigma^2 / 3 + 1 = 9, L = 3, where l (and the box radius) turns 0 -> 1; here C's
# floats decide (float radius 0.9999996 or 1.0, radius 0 or 1)
SQRT2_SIGMAS = float32_steps(math.sqrt(2), 4)
# the recipe's limits, 1 (ww = 2^24 / 1.5 = 11184810.67 in double; the float division rounds it to
# 11184811), sqrt 2 as a double and the float32s around it
BLUR_EDGE_SIGMAS = [0.1, 2.0, 1.0, math.sqrt(2), *SQRT2_SIGMAS]


def radius_sigmas():
    """Random sigmas in the recipe's range and up to 25, the edges, and every float32 within 64 ulps
    of each sqrt(l (l + 1)), l = 1..25, where L = 2 l + 1: l and the box radius step up there, at a
    float32 that C's rounding decides."""
    rng = np.random.default_rng(0)
    crossings = [float32_steps(math.sqrt(l * (l + 1)), 64) for l in range(1, 26)]
    return np.concatenate([rng.uniform(0.1, 2.0, 20_000), rng.uniform(0.0, 25.0, 5_000),
                           [0.0, 5.0, 20.0, 1e-30, *BLUR_EDGE_SIGMAS], *crossings])


def test_blur_box_radius_is_pillows_float_arithmetic(device):
    """blur_box_radius == the numpy float32 rewrite of BoxBlur.c for 28,000 sigmas, on `device`;
    the formula in double would give another box for 45% of U(0.1, 2) (so C's floats matter), and
    C's UINT32 arithmetic never wraps: fw >= 0, 2^24 - 1 <= (2 radius + 1) ww + 2 fw <= 2^24. The
    box radius never falls as sigma grows (so box_reach(max_sigma) bounds it)."""
    sigmas = radius_sigmas()
    got = [t.cpu().numpy() for t in B.blur_box_radius(torch.from_numpy(sigmas).to(device))]
    float_radius, *expected = numpy_box_radius(sigmas)
    assert np.array_equal(B.float_box_radius(torch.from_numpy(sigmas).to(device)).cpu().numpy(), float_radius)
    for ours, theirs in zip(got, expected):
        assert np.array_equal(ours, theirs)
    box, ww, fw = expected
    assert box.dtype == np.int64 and (fw >= 0).all()
    total = (2 * box + 1) * ww + 2 * fw
    assert ((total == 1 << 24) | (total == (1 << 24) - 1)).all()
    in_recipe = slice(0, 20_000)
    double = numpy_box_radius(sigmas[in_recipe], np.float64)[1:]
    differs = np.mean(np.any([a[in_recipe] != b for a, b in zip(expected, double)], axis=0))
    assert 0.4 < differs < 0.5
    order = np.argsort(sigmas, kind='stable')
    assert (np.diff(box[order]) >= 0).all()
    for max_sigma in (2.0, 5.0, 20.0, *SQRT2_SIGMAS):
        assert B.box_reach(max_sigma) >= box[sigmas <= max_sigma].max()
    assert B.box_reach(2.0) == 1 and box[sigmas == 0.1][0] == 0


def pil_gaussian_blur(image, sigma):
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def one_pass(lines, weights):
    """box_pass along the rows of int64 pixels [N, C, H, W]."""
    reach = len(weights) - 1
    padded = B.clamped(lines, 3, reach)
    return B.box_pass(padded, torch.empty_like(padded), weights, 3)[..., reach:reach + lines.shape[3]]


def test_blur_box_radius_is_pillows():
    """Against Pillow's own output, for the edge sigmas and 60 random ones: GaussianBlur(sigma) ==
    Pillow's 3-pass box blur at our float radius, and one horizontal pass of Pillow's box blur at
    that radius (ImagingHorizontalBoxBlur alone, one rounding) == box_pass with our (radius, ww,
    fw), over 24 x 224 pixels of noise."""
    rng = np.random.default_rng(1)
    sigmas = np.concatenate([BLUR_EDGE_SIGMAS, rng.uniform(0.1, 2.0, 60), [5.0, 20.0]])
    images = rng.integers(0, 256, (len(sigmas), 24, 224, 3), dtype=np.uint8)
    float_radius = B.float_box_radius(torch.from_numpy(sigmas))
    radius, ww, fw = B.blur_box_radius(torch.from_numpy(sigmas))
    weights = B.box_weights(radius, ww, fw, int(radius.max()) + 1)
    ours = as_pixels(one_pass(as_batch(images).long(), weights).double())
    for image, sigma, fr, got in zip(images, sigmas.tolist(), float_radius.tolist(), ours):
        img = Image.fromarray(image)
        assert np.array_equal(pil_gaussian_blur(image, sigma), np.asarray(img._new(img.im.box_blur((fr, fr), 3))))
        assert np.array_equal(got, np.asarray(img._new(img.im.box_blur((fr, 0.0), 1)))), sigma


def c_line_box_blur(line, radius, ww, fw):
    """BoxBlur.c's ImagingLineBoxBlur32 for one channel, transcribed: the running accumulator,
    its edgeA / edgeB branches, UINT32 arithmetic (masked to 32 bits) and the (UINT8) cast."""
    mask, lastx = 0xFFFFFFFF, len(line) - 1
    edge_a, edge_b = min(radius + 1, len(line)), max(len(line) - radius - 1, 0)
    acc = line[0] * (radius + 1) + sum(line[:max(edge_a - 1, 0)]) + line[lastx] * (radius - edge_a + 1)
    out = [0] * len(line)

    def step(x, subtract, add, left, right):
        nonlocal acc
        acc = (acc + line[add] - line[subtract]) & mask
        bulk = (acc * ww + (line[left] + line[right]) * fw) & mask
        out[x] = (((bulk + (1 << 23)) & mask) >> 24) & 0xFF

    if edge_a <= edge_b:
        for x in range(edge_a):
            step(x, 0, x + radius, 0, x + radius + 1)
        for x in range(edge_a, edge_b):
            step(x, x - radius - 1, x + radius, x - radius - 1, x + radius + 1)
        for x in range(edge_b, lastx + 1):
            step(x, x - radius - 1, lastx, x - radius - 1, lastx)
    else:
        for x in range(edge_b):
            step(x, 0, x + radius, 0, x + radius + 1)
        for x in range(edge_b, edge_a):
            step(x, 0, lastx, 0, lastx)
        for x in range(edge_a, lastx + 1):
            step(x, x - radius - 1, lastx, x - radius - 1, lastx)
    return out


def test_box_pass_is_the_c_accumulator():
    """box_pass's clamped-window closed form == the transcribed C accumulator for every line width
    1..12 and box radius 0..15 (radius + 1 > width: the edgeA > edgeB branch and its middle loop),
    16 lines of noise or two levels each, ww and fw from float radii radius + U(0, 1), taps reaching
    3 pixels past the largest box (their weights 0)."""
    rng = np.random.default_rng(2)
    radii = np.repeat(np.arange(16), 16)
    float_radius = (radii + rng.uniform(0, 1, len(radii))).astype(np.float32)
    ww = np.trunc(np.float32(1 << 24) / (float_radius * np.float32(2) + np.float32(1))).astype(np.int64)
    fw = ((1 << 24) - (2 * radii + 1) * ww) // 2
    weights = B.box_weights(torch.from_numpy(radii), torch.from_numpy(ww), torch.from_numpy(fw), 18)
    for width in range(1, 13):
        lines = rng.integers(0, 256, (len(radii), width))
        lines[::2] = np.where(rng.uniform(size=(len(radii) // 2, width)) < 0.5, 0, 255)
        ours = one_pass(torch.from_numpy(lines)[:, None, None], weights)[:, 0, 0].tolist()
        for line, radius, w, f, got in zip(lines.tolist(), radii.tolist(), ww.tolist(), fw.tolist(), ours):
            assert got == c_line_box_blur(line, radius, w, f), (width, radius)


def blur_images(n, height, width, seed):
    """uint8 [n, height, width, 3]: in turn uniform noise, smooth gradients, hard edges (0 / 255
    blocks and stripes, a checkerboard, a lone bright pixel), noise around a random colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            image = rng.integers(0, 256, (height, width, 3))
        elif kind == 1:
            start, slope = rng.integers(0, 256, 3), rng.uniform(-3, 3, (2, 3))
            image = start + slope[0] * xx[..., None] + slope[1] * yy[..., None]
        elif kind == 2:
            block = rng.integers(1, 9)
            pattern = [(yy // block + xx // block) % 2, (xx // block) % 2, yy >= rng.integers(0, height),
                       (yy == height // 2) & (xx == width // 2)][(i // 4) % 4]
            image = np.where(pattern[..., None], 255, 0) * np.array([1, rng.integers(0, 2), 1])
        else:
            image = rng.integers(0, 256, 3) + rng.integers(-8, 9, (height, width, 3))
        images.append(np.clip(image, 0, 255))
    return np.stack(images).astype(np.uint8)


# (height, width, number of images, max_sigma): the recipe's 224 x 224 views and sigma range, then
# other shapes, tiny lines, and large sigmas whose box is wider than the image
BLUR_CASES = [(224, 224, 16, 2.0), (64, 48, 96, 2.0), (37, 80, 24, 5.0), (1, 1, 8, 20.0), (2, 3, 8, 20.0),
              (3, 2, 8, 20.0), (1, 9, 8, 5.0), (9, 1, 8, 5.0), (12, 30, 8, 20.0)]


def blur_sigmas(n, max_sigma, seed):
    """n sigmas: the edges, then U(0.1, max_sigma), then max_sigma and (if larger) 5 and 20."""
    rng = np.random.default_rng(seed)
    sigmas = rng.uniform(0.1, max_sigma, n)
    head = [s for s in BLUR_EDGE_SIGMAS if s <= max_sigma][:n // 2]
    sigmas[:len(head)] = head
    tail = [s for s in (5.0, 20.0) if s < max_sigma] + [max_sigma]
    sigmas[n - len(tail):] = tail
    return sigmas


@pytest.mark.parametrize('height, width, n, max_sigma', BLUR_CASES)
def test_gaussian_blur_is_pils(device, height, width, n, max_sigma):
    """gaussian_blur on `device` == Image.filter(ImageFilter.GaussianBlur(radius=sigma)), pixel for
    pixel, for noise, gradients and hard edges at the sigma edges (0.1, 2, and the float32 sigmas
    around sqrt 2 where the box radius turns 0 -> 1), random sigmas up to max_sigma, and 5 and 20."""
    images = blur_images(n, height, width, seed=height * 1000 + width)
    sigmas = blur_sigmas(n, max_sigma, seed=width)
    out = B.gaussian_blur(as_batch(images, device).double(), torch.from_numpy(sigmas).to(device), max_sigma)
    assert out.dtype == torch.float64 and out.device.type == device.type
    for image, sigma, got in zip(images, sigmas.tolist(), as_pixels(out)):
        assert np.array_equal(got, pil_gaussian_blur(image, sigma)), sigma


def test_gaussian_blur_needs_cs_floats(monkeypatch):
    """The pixel test has teeth: with the box parameters computed in double throughout, some of 16
    images at the edge sigmas come out different from Pillow's (sigma 1's ww, for one)."""
    images, sigmas = blur_images(16, 32, 32, seed=6), blur_sigmas(16, 2.0, seed=6)
    monkeypatch.setattr(B, 'blur_box_radius', lambda s: tuple(
        torch.from_numpy(t) for t in numpy_box_radius(s.numpy(), np.float64)[1:]))
    out = as_pixels(B.gaussian_blur(as_batch(images).double(), torch.from_numpy(sigmas), 2.0))
    differ = sum(not np.array_equal(got, pil_gaussian_blur(image, sigma))
                 for image, sigma, got in zip(images, sigmas.tolist(), out))
    assert differ > 0


def test_gaussian_blur_divides_exactly_and_reads_nothing():
    """CUDA's exactness and no host sync, checked on the CPU: gaussian_blur divides by no Python
    number other than a power of two, and runs on the meta device (where reading a value fails)
    without sending host data to it."""
    pixels = as_batch(blur_images(4, 16, 16, seed=5)).double()
    with InexactDivisions() as mode:
        B.gaussian_blur(pixels, torch.tensor([0.1, 0.7, 1.5, 2.0], dtype=torch.float64), 2.0)
    assert mode.found == []
    meta = torch.device('meta')
    with HostTransfers() as mode:
        out = B.gaussian_blur(torch.empty(8, 3, 224, 224, dtype=torch.float64, device=meta),
                              torch.empty(8, dtype=torch.float64, device=meta), 2.0)
    assert out.shape == (8, 3, 224, 224) and out.device == meta and out.dtype == torch.float64
    assert mode.found == []
