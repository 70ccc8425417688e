"""The SDCLR network (design 3): the CIFAR ResNet where every convolution is prunable and
every BatchNorm is a pair (index 0 dense, 1 pruned); one prune flag selects the branch.
Module names follow shared/reference_state_dict.json (published checkpoints)."""
import torch
import torch.nn as nn

from models.resnet import BasicBlock, Bottleneck, ResNet
from models.utils import ProjectionHead


class PrunableConv2d(nn.Conv2d):
    """Convolves with `weight * prune_mask` while `prune_flag` is on, with `weight` otherwise.

    The mask is a non-persistent buffer: it follows the module's device and dtype, is never
    in the state dict, and is recomputed by models.sdclr.PruneMask.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer('prune_mask', torch.ones_like(self.weight, requires_grad=False),
                             persistent=False)
        self.prune_flag = False

    def forward(self, x):
        weight = self.weight * self.prune_mask if self.prune_flag else self.weight
        return self._conv_forward(x, weight, self.bias)


class PairedBatchNorm(nn.Module):
    """Two BatchNorms; `bn_list[1]` while `prune_flag` is on, `bn_list[0]` otherwise."""

    def __init__(self, num_features, batch_norm=nn.BatchNorm2d):
        super().__init__()
        self.bn_list = nn.ModuleList([batch_norm(num_features), batch_norm(num_features)])
        self.prune_flag = False

    def forward(self, x):
        return self.bn_list[int(self.prune_flag)](x)


def paired_batch_norm_1d(num_features):
    return PairedBatchNorm(num_features, nn.BatchNorm1d)


class PrunableShortcut(nn.Module):
    """1x1 prunable conv + paired BN; named .conv / .bn (reference keys downsample.conv/.bn)."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.conv = PrunableConv2d(in_planes, out_planes, 1, stride, bias=False)
        self.bn = PairedBatchNorm(out_planes)

    def forward(self, x):
        return self.bn(self.conv(x))


class PruneResNet(ResNet):
    """The ResNet with prunable convs (the stem's too, either stem) and paired BNs; the SDCLR
    head (`head_layers` Linear layers, design 3 / 9.2) sits at `fc`."""

    def __init__(self, block, num_blocks, stem='cifar', head_layers=2):
        super().__init__(block, num_blocks, conv=PrunableConv2d, norm=PairedBatchNorm,
                         shortcut=PrunableShortcut, stem=stem)
        self.fc = ProjectionHead(self.feature_dim, norm=paired_batch_norm_1d, layers=head_layers)

    def set_prune_flag(self, flag):
        """Select the pruned (True) or dense (False) branch in every conv and BN, head included."""
        for m in self.modules():
            if isinstance(m, (PrunableConv2d, PairedBatchNorm)):
                m.prune_flag = bool(flag)


def prune_resnet18_dual(**options):
    return PruneResNet(BasicBlock, (2, 2, 2, 2), **options)


def prune_resnet50_dual(**options):
    return PruneResNet(Bottleneck, (3, 4, 6, 3), **options)
