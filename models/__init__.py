from models.sdclr import SDCLR, PruneMask
from models.simclr import SimCLR
from models.utils import load_pretrained


def build_model(prune, network='resnet18', num_class=100):
    """SDCLR (SDCLR/BCL-D, `--prune`) if prune else SimCLR (SimCLR/BCL-I)."""
    return (SDCLR if prune else SimCLR)(num_class=num_class, network=network)
