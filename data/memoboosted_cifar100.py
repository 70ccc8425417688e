"""The memory-boosted two-view dataset of BCL (design 1.4).

Sample i is augmented with the base SimCLR augmentation, then RandAugmentProb(k, m_i,
p=w_i), where w_i in [0, 1] comes from its momentum loss: harder-to-memorise samples get
stronger, more frequent RandAugment.
"""
import numpy as np
import torch

from data.cifar100 import CIFAR100, TwoViewCIFAR


def momentum_weight(momentum_loss):
    """Design 1.4: z = (L - mean) / std (unbiased), w = z / max|z| / 2 + 1/2, in [0, 1].

    Accepts a torch tensor (any device) or anything numpy reads; returns float64 numpy.
    """
    if isinstance(momentum_loss, torch.Tensor):
        momentum_loss = momentum_loss.detach().cpu().numpy()
    loss = np.asarray(momentum_loss, dtype=np.float64)
    std = loss.std(ddof=1) if loss.size > 1 else 0.0
    z = (loss - loss.mean()) / std if std > 0 else np.zeros_like(loss)
    scale = np.abs(z).max() if z.size else 0.0
    if scale == 0:
        # All losses equal: the published formula divides 0 by 0 and gives NaN weights;
        # we give every sample the middle weight 0.5 (z = 0) instead.
        return np.full_like(loss, 0.5)
    return z / scale / 2 + 0.5


class MemoryBoost:
    """BCL's per-sample weights on a keyed two-view dataset (TwoViewCIFAR, data/image_list_datasets.py):
    view_params then draws RandAugmentProb(k, m_i, p=w_i) after the base views (design 1.4, 9.3; with
    k >= 2 both views of a sample share its u, hence m_i)."""

    def boost(self, rand_k, rand_strength):
        self.rand_k, self.rand_strength = rand_k, rand_strength
        # Shared memory, updated in place: DataLoader workers (persistent ones included)
        # map the same storage, so they see the new weights at the next epoch.
        self.momentum_weight = torch.zeros(len(self), dtype=torch.float64).share_memory_()

    def update_momentum_weight(self, momentum_loss):
        """Set the weights from this epoch's momentum losses (length N, dataset order)."""
        weight = torch.from_numpy(momentum_weight(momentum_loss))
        if weight.shape != self.momentum_weight.shape:
            raise ValueError(f'momentum loss has shape {tuple(weight.shape)}, '
                             f'expected {tuple(self.momentum_weight.shape)}')
        self.momentum_weight.copy_(weight)


class MemoBoostedCIFAR(MemoryBoost, TwoViewCIFAR):
    """Two-view CIFAR dataset whose RandAugment strength and probability follow per-sample weights."""

    def __init__(self, data_folder, indices, rand_k=1, rand_strength=30, seed=0, download=True, source=CIFAR100):
        super().__init__(data_folder, indices, seed=seed, download=download, source=source)
        self.boost(rand_k, rand_strength)
