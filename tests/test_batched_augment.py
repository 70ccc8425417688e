"""data/batched_augment.py against PIL (issue 12, design 8): every op, over many random images
and parameters, gives PIL's uint8 pixels exactly; so does the whole base augmentation, view for
view; and the device gives the CPU's bits."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data import batched_augment as B
from data.augmentations import augment_view
from data.view_params import draw_views
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
    """float pixel values [B, 3, H, W] -> uint8 numpy [B, H, W, 3]"""
    return batch.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def params(n, rand_k=0, seed=0):
    return draw_views(keyed_seed(seed, 1, 2), torch.arange(n), (32, 32), rand_k)


def test_resized_crop_is_pils_bicubic_resize():
    """Every crop box of 400 images x 2 views (torchvision's get_params distribution) plus the
    smallest and whole-image boxes: bicubic 32x32 equal to PIL's crop + resize, pixel for pixel."""
    images = sample_images()
    boxes = params(NUM_IMAGES).crop[:, 0].clone()
    boxes[0], boxes[1], boxes[2] = torch.tensor([0, 0, 32, 32]), torch.tensor([3, 5, 1, 1]), torch.tensor([31, 0, 1, 32])
    out = as_pixels(B.resized_crop(as_batch(images), boxes))
    for image, box, got in zip(images, boxes.tolist(), out):
        top, left, height, width = box
        expected = F.resized_crop(Image.fromarray(image), top, left, height, width, [32, 32],
                                  InterpolationMode.BICUBIC, antialias=True)
        assert np.array_equal(got, np.asarray(expected)), box


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


def test_base_views_equal_the_pil_path_view_for_view(device):
    """Design 1.2's whole base augmentation for 400 images x 2 views drawn by the keyed sampler:
    base_views on `device` == ToTensor(augment_view(PIL image, the same parameters)), exactly."""
    images = sample_images(seed=4)
    drawn = params(NUM_IMAGES, seed=5)
    views = B.base_views(as_batch(images, device), draw_views(
        keyed_seed(5, 1, 2), torch.arange(NUM_IMAGES, device=device), (32, 32), 0))
    assert views.shape == (NUM_IMAGES, 2, 3, 32, 32) and views.dtype == torch.float32
    views = views.cpu()
    for image, pair, got in zip(images, drawn.per_view(), views):
        expected = torch.stack([F.to_tensor(augment_view(Image.fromarray(image), view)) for view in pair])
        assert torch.equal(got, expected)
