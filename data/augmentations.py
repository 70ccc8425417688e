"""The training views, PIL in and PIL out, from their drawn parameters, and the evaluation
transform (design 1.2-1.4).

The parameters come from data/view_params.py (keyed by seed, epoch, position and view); here
they are applied with torchvision's own functional ops, the ones its RandomResizedCrop,
RandomHorizontalFlip, ColorJitter and RandomGrayscale call, then BCL's RandAugmentProb.
No mean/std normalisation: the network normalises its input itself (design 3).
"""
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data.randaug import apply_rand_augment

VIEW_SIZE = [32, 32]  # design 1.2: RandomResizedCrop(32, bicubic)
JITTER_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)  # ColorJitter's fn_idx


def augment_view(img, view):
    """One view of `img` from its parameters (ViewParams.per_view): crop and bicubic resize,
    flip, ColorJitter in the drawn order, grayscale, then the RandAugment ops (none unless BCL)."""
    top, left, height, width = view['crop']
    img = F.resized_crop(img, top, left, height, width, VIEW_SIZE, InterpolationMode.BICUBIC, antialias=True)
    if view['flip']:
        img = F.hflip(img)
    if view['jitter']:
        for fn in view['jitter_order']:
            img = JITTER_OPS[fn](img, view['jitter_factors'][fn])
    if view['gray']:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    return apply_rand_augment(img, view['magnitude'], view['ops'], view['op_applied'], view['op_sign'],
                              view['op_centre'])


def eval_transform():
    return transforms.ToTensor()
