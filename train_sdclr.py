"""Contrastive pre-training with a pruned self-competitor: SDCLR, and BCL-D with `--bcl`.

    python train_sdclr.py BCL_D --bcl --rand_k 2 --lr 0.5 --epochs 2000 --temperature 0.2 \
      --weight_decay 1e-4 --data_folder DATA --trainSplit cifar100_imbSub_with_subsets/cifar100_split1_D_i.npy

Everything but the model and the step lives in train.py's training core.
"""
import torch

import train
from losses.nt_xent import nt_xent
from models.sdclr import PruneMask


def sdclr_step(model, images, temperature, autocast, gather=lambda features: features):
    """design 5, SDCLR / BCL-D: returns the per-sample loss of the dense branch.

    (a) pruned network on view 2 without gradient; (b) dense network on view 1,
    loss(dense1, pruned2 detached) -> momentum update and backward; (c) pruned network on
    view 2 with gradient, loss(dense1 detached, pruned2) -> backward. The caller then takes
    one optimiser step for both. `gather` makes one rank's features the global batch's
    (distributed.py; `model` is then the DDP wrapper, its network `model.module`).
    """
    view1, view2 = images[0::2], images[1::2]
    backbone = getattr(model, 'module', model).backbone
    with torch.no_grad(), autocast():
        backbone.set_prune_flag(True)
        pruned2 = gather(model(view2))
    with autocast():
        backbone.set_prune_flag(False)
        dense1 = gather(model(view1))
    per_sample_loss = nt_xent(dense1, temperature, features2=pruned2, average=False)
    per_sample_loss.mean().backward()
    with autocast():
        backbone.set_prune_flag(True)
        pruned2 = gather(model(view2))
    nt_xent(dense1.detach(), temperature, features2=pruned2).backward()
    backbone.set_prune_flag(False)
    return per_sample_loss.detach()


def prune_before_epoch(model, epoch, args):
    """design 3: at the start of every epoch the mask is recomputed from the current weights.

    As in the published SDCLR loop, --prune_percent is the total: magnitude pruning takes
    prune_percent - random_prune_percent and a random random_prune_percent comes on top
    (with the default random_prune_percent 0 this is design 3's f = prune_percent).
    Returns the epoch's sparsity for the log line and metrics.jsonl."""
    prune_mask = PruneMask(model)
    prune_mask.magnitude_prune(args.prune_percent - args.random_prune_percent, args.random_prune_percent)
    return {'sparsity': prune_mask.sparsity}


def main(argv=None):
    train.main(argv, sdclr=True, step_fn=sdclr_step, before_epoch=prune_before_epoch)


if __name__ == '__main__':
    main()
