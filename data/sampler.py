"""The order of the training samples in an epoch, as batches (design 5: shuffled, last partial
batch kept).

The order of epoch e is a uniform random permutation drawn from a generator keyed by
(seed, e): it does not depend on anything else the run drew, so a run resumed in the middle of
an epoch continues that epoch's order, and the rest of its batches are the ones the
uninterrupted run would have had.

A last batch of a single sample is merged into the batch before it: BatchNorm cannot normalise
one sample in training mode, and NT-Xent gives a lone sample no negative (a zero loss). Merging
keeps every sample's loss in every epoch (BCL's momentum loss needs it); dropping the sample
would leave its momentum loss stale. With the published sizes (9,754 images, batch 512: a last
batch of 26) nothing changes.
"""
import math

import torch
from torch.utils.data import Sampler

from utils import keyed_seed


class EpochBatchSampler(Sampler):
    """Yields lists of dataset positions, one list per step; `set_epoch(epoch, start_step)` picks
    the epoch (1-based) and skips its first `start_step` batches (a mid-epoch resume).

    With several ranks (distributed.py) the batches are the global ones, the same on every rank,
    and rank r yields its share of each: `share(start, end)`, contiguous, sizes `shares(n)`."""

    def __init__(self, num_samples, batch_size, seed, rank=0, world_size=1):
        if num_samples < 2:
            raise ValueError(f'need at least 2 samples to train, got {num_samples}')
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = 1, 0

    @property
    def steps_per_epoch(self):
        steps = math.ceil(self.num_samples / self.batch_size)
        return steps - 1 if steps > 1 and self.num_samples % self.batch_size == 1 else steps

    def set_epoch(self, epoch, start_step=0):
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f'start_step must be in [0, {self.steps_per_epoch}), got {start_step}')
        self.epoch, self.start_step = epoch, start_step

    def order(self, epoch):
        generator = torch.Generator().manual_seed(keyed_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def batches(self, epoch):
        """The batches of `epoch`: [start, end) bounds into its order."""
        steps, size = self.steps_per_epoch, self.batch_size
        return [(s * size, self.num_samples if s == steps - 1 else (s + 1) * size) for s in range(steps)]

    def shares(self, batch):
        """The sizes of the ranks' shares of a batch of `batch` samples (the first ones one larger)."""
        size, larger = divmod(batch, self.world_size)
        return [size + (rank < larger) for rank in range(self.world_size)]

    def share(self, start, end):
        """This rank's [start, end) of the batch [start, end) of the order."""
        sizes = self.shares(end - start)
        first = start + sum(sizes[:self.rank])
        return first, first + sizes[self.rank]

    def __len__(self):
        return self.steps_per_epoch - self.start_step

    def __iter__(self):
        order = self.order(self.epoch).tolist()
        for start, end in self.batches(self.epoch)[self.start_step:]:
            first, last = self.share(start, end)
            yield order[first:last]
