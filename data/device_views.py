"""--gpu_aug (issue 12): the training images live on the training device as uint8 and both views
of every batch are made there, in one batched pass, from the same keyed parameters as the PIL
path (data/view_params.py), with ops that repeat Pillow's arithmetic (data/batched_augment.py for
the base augmentation, data/batched_randaug.py for BCL's RandAugment): the same views, pixel for
pixel, without loader workers.

A drop-in for train.run's DataLoader: it iterates its EpochBatchSampler's batches, yields
(views [B, 2, 3, 32, 32] float32, positions [B]) on the device, and reads no host value per step:
the epoch's sample order and BCL's weights are copied to the device once, when the epoch starts.
"""
import torch

from data.batched_augment import base_pixels, to_views
from data.batched_randaug import rand_augment


def make_views(images, params):
    """Both views of each image (uint8 [B, 3, H, W]) from their ViewParams: float32
    [B, 2, 3, 32, 32], equal to ToTensor(augment_view(...)) of the PIL path."""
    pixels = base_pixels(images, params)
    if params.ops.shape[-1]:
        pixels = rand_augment(pixels, params)
    return to_views(pixels)


class DeviceViews:
    def __init__(self, dataset, batch_sampler, device):
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, device
        self.images = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).contiguous().to(device)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        sampler, dataset = self.batch_sampler, self.dataset
        order = sampler.order(sampler.epoch).to(self.device)
        weight = None if dataset.momentum_weight is None else dataset.momentum_weight.to(self.device)
        for start, end in sampler.batches(sampler.epoch)[sampler.start_step:]:
            positions = order[slice(*sampler.share(start, end))]  # this rank's share (distributed.py)
            yield make_views(self.images[positions], dataset.view_params(positions, weight)), positions
