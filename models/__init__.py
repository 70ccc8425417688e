from models.sdclr import SDCLR, PruneMask
from models.simclr import SimCLR
from models.utils import load_pretrained


def build_model(prune, network='resnet18', num_class=100, stem='cifar', head_layers=2):
    """SDCLR (SDCLR/BCL-D, `--prune`) if prune else SimCLR (SimCLR/BCL-I); `stem` 'cifar'
    (design 3, also for a ResNet-50 on CIFAR) or 'imagenet' (9.2), `head_layers` 2 or 3."""
    return (SDCLR if prune else SimCLR)(num_class=num_class, network=network, stem=stem,
                                        head_layers=head_layers)
