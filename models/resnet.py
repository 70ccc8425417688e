"""ResNet-18/50 of design 3, normalisation inside, with one of two stems (`stem`):
'cifar' (design 3: conv 3x3/1, BN, ReLU, no max-pool) or 'imagenet' (design 9.2,
torchvision's: conv 7x7/2 pad 3, BN, ReLU, MaxPool(3, 2, 1)). Both name the stem conv1/bn1,
as the published CIFAR and ImageNet code does, so checkpoints map one-to-one.

The layer types are arguments so that the pruned dual-BN network of SDCLR
(models/resnet_prune_multibn.py) is this same network with other convolutions,
BatchNorms and shortcut modules.
"""
import torch.nn as nn

from models.utils import Normalize, init_weights
from utils import InputError

STEMS = ('cifar', 'imagenet')


def plain_shortcut(in_planes, out_planes, stride):
    """1x1 conv + BN; a Sequential, so its keys are downsample.0 / downsample.1 (reference)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride, conv, norm, shortcut):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        out_planes = planes * self.expansion
        self.downsample = (shortcut(in_planes, out_planes, stride)
                           if stride != 1 or in_planes != out_planes else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 with 4x expansion, as torchvision's ResNet-50."""
    expansion = 4

    def __init__(self, in_planes, planes, stride, conv, norm, shortcut):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv(in_planes, planes, 1, 1, 0, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, out_planes, 1, 1, 0, bias=False)
        self.bn3 = norm(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (shortcut(in_planes, out_planes, stride)
                           if stride != 1 or in_planes != out_planes else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """forward(x) = fc(forward_features(x)); fc is the identity until a model puts a head there."""

    def __init__(self, block, num_blocks, conv=nn.Conv2d, norm=nn.BatchNorm2d,
                 shortcut=plain_shortcut, stem='cifar'):
        super().__init__()
        if stem not in STEMS:
            raise InputError(f'unknown stem {stem!r}: use one of {", ".join(STEMS)}')
        self.normalize = Normalize()
        if stem == 'cifar':
            self.conv1 = conv(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = conv(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, planes, stride, conv, norm, shortcut))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes  # 512 (ResNet-18) or 2048 (ResNet-50)
        self.fc = nn.Identity()
        init_weights(self)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x):
        return self.fc(self.forward_features(x))


def resnet18(**layers):
    return ResNet(BasicBlock, (2, 2, 2, 2), **layers)


def resnet50(**layers):
    return ResNet(Bottleneck, (3, 4, 6, 3), **layers)
