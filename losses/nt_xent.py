"""NT-Xent contrastive loss (design 4), per sample or averaged."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def nt_xent(features, temperature=0.5, features2=None, average=True):
    """NT-Xent of design 4.

    features: [2B, d] with the two views of sample i on rows 2i and 2i+1 (a flattened
    [B, 2, d] batch), or [B, d] view 1 with `features2` [B, d] view 2.
    Returns the mean over the batch, or with average=False the per-sample losses [B]
    (each the mean of the losses of the two rows of that sample).
    """
    if features2 is not None:
        if features2.shape != features.shape or features.dim() != 2:
            raise ValueError(f'features {tuple(features.shape)} and features2 '
                             f'{tuple(features2.shape)} must both be [B, d]')
        features = torch.stack([features, features2], dim=1).flatten(0, 1)
    if features.dim() != 2 or features.shape[0] % 2:
        raise ValueError(f'features must be [2B, d], got {tuple(features.shape)}')
    # Design 4: float32 whatever comes in (bf16/fp16 from autocast), with autocast off so
    # that the similarity matmul is not cast back down. float64 input stays float64, which
    # only tests use (torch.autograd.gradcheck needs it).
    if features.dtype != torch.float64:
        features = features.float()
    with torch.autocast(features.device.type, enabled=False):
        z = F.normalize(features, dim=1)
        logits = z @ z.t() / temperature
        n = logits.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, float('-inf'))  # a row is not its own negative
        positive = torch.arange(n, device=logits.device) ^ 1  # row 2i <-> row 2i+1
        row_loss = F.cross_entropy(logits, positive, reduction='none')
        per_sample = row_loss.view(-1, 2).mean(dim=1)
    return per_sample.mean() if average else per_sample


class NTXentLoss(nn.Module):
    def __init__(self, temperature=0.2, average=True):
        super().__init__()
        self.temperature = temperature
        self.average = average

    def forward(self, features, features2=None):
        return nt_xent(features, self.temperature, features2, self.average)
