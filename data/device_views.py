"""--gpu_aug (issue 12): the training images live on the training device as uint8 and both views
of every batch are made there, in one batched pass, from the same keyed parameters as the PIL
path (data/view_params.py), with ops that repeat Pillow's arithmetic (data/batched_augment.py):
the same views, pixel for pixel, without loader workers.

A drop-in for train.run's DataLoader: it iterates its EpochBatchSampler's batches, yields
(views [B, 2, 3, 32, 32] float32, positions [B]) on the device, and reads no host value per step
(the epoch's sample order is copied to the device once, when the epoch starts).
"""
import torch

from data.batched_augment import base_views
from data.view_params import draw_views


class DeviceViews:
    def __init__(self, dataset, batch_sampler, device):
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, device
        self.images = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).contiguous().to(device)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        sampler = self.batch_sampler
        order = sampler.order(sampler.epoch).to(self.device)
        key = self.dataset.views_key()
        for start, end in sampler.batches(sampler.epoch)[sampler.start_step:]:
            positions = order[start:end]
            params = draw_views(key, positions, tuple(self.images.shape[2:]))
            yield base_views(self.images[positions], params), positions
