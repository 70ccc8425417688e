"""Base SimCLR augmentation and the evaluation transform (design 1.2).

No mean/std normalisation: the network normalises its input itself (design 3).
"""
from torchvision import transforms


def simclr_pil_transform():
    """The SimCLR augmentation, PIL in and PIL out (the memory-boosted dataset adds
    RandAugment after it, before ToTensor)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(0.1, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ])


def simclr_transform():
    return transforms.Compose([simclr_pil_transform(), transforms.ToTensor()])


def eval_transform():
    return transforms.ToTensor()
