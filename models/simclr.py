"""SimCLR (design 3, 9.2): ResNet backbone (fc = identity) + projection head."""
import torch.nn as nn

from models.resnet import resnet18, resnet50
from models.utils import ProjectionHead
from utils import InputError

NETWORKS = {'resnet18': resnet18, 'resnet50': resnet50}


class SimCLR(nn.Module):
    """forward(x) -> [B, 128] projection; features(x) -> backbone output [B, 512|2048].

    `num_class` is accepted for the shared model API; a contrastive model has no classifier
    (the linear probe is trained on features(x) separately). `stem` is 'cifar' or 'imagenet'
    (models.resnet), `head_layers` 2 or 3 (models.utils.ProjectionHead).
    """

    def __init__(self, num_class=100, network='resnet18', stem='cifar', head_layers=2):
        super().__init__()
        if network not in NETWORKS:
            raise InputError(f'unknown network {network!r}: use one of {", ".join(NETWORKS)}')
        self.backbone = NETWORKS[network](stem=stem)
        self.projector = ProjectionHead(self.backbone.feature_dim, layers=head_layers)

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.projector(self.backbone(x))
