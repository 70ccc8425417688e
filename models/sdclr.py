"""SDCLR (design 3): dense and pruned branches of one network, and its magnitude pruning."""
import math

import torch
import torch.nn as nn

from models.resnet_prune_multibn import PrunableConv2d, prune_resnet18_dual, prune_resnet50_dual
from utils import InputError

NETWORKS = {'resnet18': prune_resnet18_dual, 'resnet50': prune_resnet50_dual}


class SDCLR(nn.Module):
    """forward(x) -> [B, 128] projection of the branch that backbone.set_prune_flag selected;
    features(x) -> dense-branch backbone output before the head (turns the prune flag off).

    `num_class` is accepted for the shared model API; a contrastive model has no classifier.
    `stem` is 'cifar' or 'imagenet' (models.resnet), `head_layers` 2 (GH, design 9.2) or 3
    (the SDCLR repository's ImageNet SDCLR), see models.utils.ProjectionHead.
    """

    def __init__(self, num_class=100, network='resnet18', stem='cifar', head_layers=2):
        super().__init__()
        if network not in NETWORKS:
            raise InputError(f'unknown network {network!r}: use one of {", ".join(NETWORKS)}')
        self.backbone = NETWORKS[network](stem=stem, head_layers=head_layers)

    def features(self, x):
        self.backbone.set_prune_flag(False)  # design 6: features come from the dense branch
        return self.backbone.forward_features(x)

    def forward(self, x):
        return self.backbone(x)


class PruneMask:
    """The masks of every PrunableConv2d in `model` (design 3).

    magnitude_prune(f): over all prunable conv weights together, threshold = the value at
    position ceil(f * total) (clamped to total - 1) of |w| sorted ascending; mask = |w| >= it.
    random_fraction r: afterwards exactly min(ceil(r * total), kept) of the weights the
    magnitude step kept are zeroed, chosen uniformly at random (torch RNG on the weights'
    device), so the sparsity is about f + r. Like `fraction`, r counts against all prunable
    weights; the published code zeroes each kept weight with probability
    ceil(r * total) / (total - ceil(f * total)), the same expected count; an exact count
    keeps the sparsity deterministic. r = 0 (the default) draws no random numbers.
    """

    def __init__(self, model):
        self.convs = [m for m in model.modules() if isinstance(m, PrunableConv2d)]
        if not self.convs:
            raise ValueError('the model has no prunable convolution')

    @torch.no_grad()
    def magnitude_prune(self, fraction, random_fraction=0.0):
        if not (0 <= fraction <= 1 and 0 <= random_fraction <= 1 - fraction):
            raise InputError(f'prune fractions must satisfy 0 <= fraction ({fraction}) and '
                             f'0 <= random_fraction ({random_fraction}) <= 1 - fraction')
        magnitudes = torch.cat([c.weight.detach().abs().flatten() for c in self.convs])
        total = magnitudes.numel()
        position = min(math.ceil(fraction * total), total - 1)
        # k-th smallest (1-based) == sorted(magnitudes)[position], exactly, without a full sort
        threshold = magnitudes.kthvalue(position + 1).values
        keep = magnitudes >= threshold
        if random_fraction > 0:
            kept = keep.nonzero().squeeze(1)
            n_random = min(math.ceil(random_fraction * total), kept.numel())
            drop = torch.randperm(kept.numel(), device=kept.device)[:n_random]
            keep[kept[drop]] = False
        for conv, conv_keep in zip(self.convs, keep.split([c.weight.numel() for c in self.convs])):
            conv.prune_mask.copy_(conv_keep.view_as(conv.prune_mask))

    @torch.no_grad()
    def reset(self):
        for conv in self.convs:
            conv.prune_mask.fill_(1)

    @property
    def sparsity(self):
        """Fraction of zero mask entries over all prunable convs."""
        zeros = torch.stack([(c.prune_mask == 0).sum() for c in self.convs]).sum().item()  # one host sync
        return zeros / sum(c.prune_mask.numel() for c in self.convs)
