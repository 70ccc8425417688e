"""The datasets of the ImageNet-scale benchmarks (design 9): JPEG files named by a published
`RELPATH LABEL` list (data/image_list.py), opened with PIL and converted to RGB, as published.

TwoViewImageList is TwoViewCIFAR's keyed two-view dataset (issue 11) over image files: each JPEG is
decoded once per sample per epoch, both views' parameters are drawn from the keyed sampler over that
image's own size (design 9.3's RandomResizedCrop(224, (0.08, 1))), and rendered by the one PIL path
(data/augmentations.render_views with the IMAGENET recipe). MemoBoostedImageList adds BCL's
per-sample RandAugment (design 9.3: 30 w u, k = 2). EvalImageList gives (image, label) with a
torchvision transform: the evaluation transform, or GH's probe-train crop and flip, keyed per item.
"""
import os

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from data.augmentations import eval_transform
from data.cifar100 import TwoViewCIFAR
from data.image_list import load_rgb

from data.memoboosted_cifar100 import MemoryBoost
from data.view_params import IMAGENET
from utils import keyed_seed

PROBE_TRAIN_STREAM = 7  # keyed_seed stream of the probe-train crops (any constant apart from the views')


class TwoViewImageList(TwoViewCIFAR):
    """The images of `image_list` under `data_folder`; item i -> (two views [2, 3, 224, 224], i)."""

    recipe = IMAGENET

    def __init__(self, data_folder, image_list, num_class, seed=0):  # noqa: super().__init__ reads CIFAR
        self.data_folder, self.image_list = data_folder, image_list
        self.labels = image_list.labels
        self.num_class = num_class
        self.class_counts = image_list.class_counts(num_class)
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self):
        return len(self.image_list)

    def image(self, position):
        return load_rgb(os.path.join(self.data_folder, self.image_list.relpath(position)))

    def image_sizes(self, images):
        return torch.tensor([[img.height, img.width] for img in images], dtype=torch.int64)


class MemoBoostedImageList(MemoryBoost, TwoViewImageList):
    """BCL's memory-boosted views of an image list (design 9.3 after 1.4)."""

    def __init__(self, data_folder, image_list, num_class, rand_k=2, rand_strength=30, seed=0):
        super().__init__(data_folder, image_list, num_class, seed=seed)
        self.boost(rand_k, rand_strength)


def probe_train_transform(size=224):
    """GH's probe-train images (design 9.4): RandomResizedCrop(224) and a flip (bilinear, torchvision's default)."""
    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor()])


class EvalImageList(Dataset):
    """item -> (image tensor, label): `transform` of each image (default: design 9.4's evaluation transform,
    Resize 256, CenterCrop 224). With `seed`, a random transform's draws for item i are a function of
    (seed, i) alone (torch's generator seeded per item), so features are the same in any loader setting."""

    def __init__(self, data_folder, image_list, transform=None, seed=None):
        self.data_folder, self.image_list = data_folder, image_list
        self.labels = image_list.labels
        self.transform = transform or eval_transform(IMAGENET)
        self.seed = seed

    def __len__(self):
        return len(self.image_list)

    def __getitem__(self, i):
        img = load_rgb(os.path.join(self.data_folder, self.image_list.relpath(i)))
        if self.seed is None:
            return self.transform(img), int(self.labels[i])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(keyed_seed(self.seed, i, PROBE_TRAIN_STREAM))
            return self.transform(img), int(self.labels[i])
