"""The training views, PIL in and PIL out, from their drawn parameters, and the evaluation
transform (design 1.2-1.4, 9.3).

The parameters come from data/view_params.py (keyed by seed, epoch, position and view); here
they are applied with torchvision's own functional ops, the ones its RandomResizedCrop,
RandomHorizontalFlip, ColorJitter and RandomGrayscale call, then (ImageNet recipe) Pillow's
GaussianBlur as the published code calls it, then BCL's RandAugmentProb.
No mean/std normalisation: the network normalises its input itself (design 3).
"""
import torch
from PIL import ImageFilter
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data.randaug import apply_rand_augment
from data.view_params import CIFAR

VIEW_SIZE = [CIFAR.size, CIFAR.size]  # design 1.2: RandomResizedCrop(32, bicubic)
JITTER_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)  # ColorJitter's fn_idx


def augment_view(img, view, recipe=CIFAR):
    """One view of `img` from its parameters (ViewParams.per_view): crop and bicubic resize to
    recipe.size, flip, ColorJitter in the drawn order, grayscale, Pillow's GaussianBlur (design
    9.3; never drawn for CIFAR), then the RandAugment ops (none unless BCL)."""
    top, left, height, width = view['crop']
    img = F.resized_crop(img, top, left, height, width, [recipe.size, recipe.size], InterpolationMode.BICUBIC,
                         antialias=True)
    if view['flip']:
        img = F.hflip(img)
    if view['jitter']:
        for fn in view['jitter_order']:
            img = JITTER_OPS[fn](img, view['jitter_factors'][fn])
    if view['gray']:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    if view['blur']:
        img = img.filter(ImageFilter.GaussianBlur(radius=view['blur_sigma']))
    return apply_rand_augment(img, view['magnitude'], view['ops'], view['op_applied'], view['op_sign'],
                              view['op_centre'])


def render_views(img, views, recipe=CIFAR):
    """The two views of one PIL image as a float tensor [2, 3, S, S] in [0, 1] (ToTensor)."""
    return torch.stack([F.to_tensor(augment_view(img, view, recipe)) for view in views])


def eval_transform(recipe=CIFAR):
    """Evaluation: ToTensor (design 1.2), or Resize(256), CenterCrop(224), ToTensor (design 9.3;
    torchvision's default bilinear resize, as published)."""
    if recipe.eval_resize is None:
        return transforms.ToTensor()
    return transforms.Compose([transforms.Resize(recipe.eval_resize), transforms.CenterCrop(recipe.size),
                               transforms.ToTensor()])
