"""Multi-GPU training with torchrun (issue 13): PyTorch's DistributedDataParallel, NCCL on CUDA,
gloo on CPU, training the same method as one process with the same global batch.

    torchrun --nproc_per_node 4 train_sdclr.py BCL_D --bcl --rand_k 2 ...   (one node, 4 GPUs)

How the global batch stays the one-process batch:
- `--batch_size` is the global batch. Every rank draws the same epoch order and batches
  (data/sampler.py, keyed by the seed) and takes its contiguous share of each batch (sizes
  differ by at most one; the last partial batch is kept, nothing padded or repeated). A
  sample's views come from the keyed sampler, so they do not depend on the world size.
- BatchNorm: every BatchNorm (SDCLR's paired ones and the projection head's included) becomes a
  GlobalBatchNorm, whose training statistics are those of the global batch. nn.SyncBatchNorm
  does the same on CUDA only; this one also runs on gloo, so that the equivalence with one
  process is tested on CPU.
- NT-Xent: each rank's features are gathered with their gradients, in batch order, and every
  rank computes the whole batch's loss (design 4: 2B - 2 negatives per sample). The per-sample
  losses, hence the momentum loss, BCL's weights and the prune mask (from the same weights),
  are then the same on every rank with no further communication.
- Gradients: the gather's backward sums the (identical) losses of all ranks, so each rank's
  gradient is world_size times its share of the global gradient; DDP's average makes it the
  one-process gradient.

Rank 0 alone writes checkpoints, logs, metrics and progress bars and runs the in-training probe;
checkpoints are those of one process, so a run resumes on any number of ranks. A stop signal is
acted on when every rank agrees (agree_stop, at the loss checks), so all ranks stop after the
same step; a non-finite loss or state is found on every rank at once (they are identical).

test.py under torchrun (issue 23) splits its feature pass: each rank extracts a contiguous shard
of each dataset (Distributed.shard), rank 0 gathers them in order (Distributed.gather_shards) and
alone trains the probes.
"""
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils import InputError, get_device


@dataclass
class Distributed:
    """This process's place in the run: rank, world size and device (one process: 0, 1), and
    whether a process group exists (`enabled`: every run under torchrun, a world of one included,
    so that `torchrun --nproc_per_node 1` runs the collectives and DDP it runs with more ranks)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self):
        return self.rank == 0

    def wrap(self, model, find_unused_parameters):
        """DDP around `model` (already converted by global_batch_norm, on self.device); the model
        itself without a process group. Buffers are not broadcast: global statistics keep them
        equal on every rank."""
        if not self.enabled:
            return model
        no_buffer_sync = {'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(
            DistributedDataParallel).parameters else 'broadcast_buffers': False}  # renamed in newer torch
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == 'cuda' else None,
                                       find_unused_parameters=find_unused_parameters, **no_buffer_sync)

    def gather(self, tensor, sizes):
        """Every rank's `tensor` (its first dimension k * sizes[rank], the rank's share of a batch
        of k rows per sample) concatenated in rank order, i.e. in batch order; gradients flow back
        to each rank's rows."""
        if not self.enabled:
            return tensor
        rows = tensor.shape[0] // sizes[self.rank]
        padding = tensor.new_zeros(rows * (max(sizes) - sizes[self.rank]), *tensor.shape[1:])
        parts = AllGather.apply(torch.cat([tensor, padding])).chunk(self.world_size)  # equal sizes
        return torch.cat([part[:rows * size] for part, size in zip(parts, sizes)])

    def agree_stop(self, stop):
        """A collective: if any rank received a stop signal, every rank's `stop` takes it (the same
        signal name, hence the same exit code). Returns stop.requested."""
        if self.enabled and stop is not None:
            signals = {'SIGINT': 2, 'SIGTERM': 15}
            code = torch.tensor([signals.get(stop.requested, 0)], device=self.device)
            dist.all_reduce(code, op=dist.ReduceOp.MAX)
            names = {number: name for name, number in signals.items()}
            stop.requested = names.get(int(code), stop.requested)
        return None if stop is None else stop.requested

    def shard(self, total):
        """This rank's contiguous shard of `total` rows, as a range (test.py's feature pass): the ranks'
        shards, in rank order, are 0..total-1 once each, their sizes differing by at most one (shares).
        Contiguous rather than strided, so that each rank reads a run of neighbouring files and the gather
        is a plain concatenation in rank order."""
        sizes = shares(total, self.world_size)
        start = sum(sizes[:self.rank])
        return range(start, start + sizes[self.rank])

    def gather_shards(self, tensor, total):
        """A collective (every rank calls it): on rank 0, every rank's `tensor` (the rows self.shard(total)
        of something, on self.device) concatenated in rank order, i.e. rows 0..total-1 in order; None on
        the other ranks, which need nothing back. Without a process group, `tensor` itself. The shards
        are padded to the largest one (a gather needs equal shapes); the padding rows are dropped. It all
        stays on the tensor's device (NCCL: GPU memory, no host copy); rank 0 holds the result and, while
        gathering, one padded copy of it."""
        if not self.enabled:
            return tensor
        sizes = shares(total, self.world_size)
        if tensor.shape[0] != sizes[self.rank]:
            raise ValueError(f'rank {self.rank} holds {tensor.shape[0]} rows, but its shard of {total} has '
                             f'{sizes[self.rank]}')
        padded = torch.cat([tensor, tensor.new_zeros(max(sizes) - sizes[self.rank], *tensor.shape[1:])])
        gathered = padded.new_empty(self.world_size * max(sizes), *tensor.shape[1:]) if self.is_main else None
        parts = list(gathered.chunk(self.world_size)) if self.is_main else None  # views: gathered in place
        dist.gather(padded, parts, dst=0)
        if not self.is_main or min(sizes) == max(sizes):  # no padding to drop
            return gathered
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def shares(total, world_size):
    """The sizes of the ranks' contiguous shares of `total` rows: equal, the first total % world_size
    ranks one larger (the rule of the training batches' shares, data/sampler.py)."""
    size, larger = divmod(total, world_size)
    return [size + (rank < larger) for rank in range(world_size)]


TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')
# how long a collective waits for every rank: while rank 0 alone runs the in-training probe (--eval_freq), the
# others wait in their next collective; the probe's feature pass over ImageNet-LT's 100k-image 100-shot list and
# 50k test images (decoding JPEGs at 224 px) can outlast the default 10 minutes (NCCL), so a healthy run would
# time out. The cost: a rank that really hangs is reported only after this long.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def launched_world_size():
    """WORLD_SIZE of the torchrun job this process belongs to (its variables in the environment), None
    outside one: what a script may check before from_environment creates the process group."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    return int(os.environ['WORLD_SIZE'])


def from_environment(gpus):
    """The run's Distributed: under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment)
    the process group is created, for a world of one too (NCCL with one GPU per rank,
    cuda:LOCAL_RANK; gloo on CPU, with `--gpus cpu` or without CUDA), and the model is wrapped in
    DDP; otherwise one process on get_device(gpus), as before. A world of one trains exactly
    the one-process run (GlobalBatchNorm is plain BatchNorm there; tests/test_distributed.py)."""
    if launched_world_size() is None:
        return Distributed(get_device(gpus))
    rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    if str(gpus).split(',')[0].strip().lower() == 'cpu' or not torch.cuda.is_available():
        device, backend = torch.device('cpu'), 'gloo'
    else:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f'rank {rank} has LOCAL_RANK {local_rank} but this node has '
                             f'{torch.cuda.device_count()} CUDA device(s): start at most that many processes '
                             f'per node (torchrun --nproc_per_node)')
        device, backend = torch.device('cuda', local_rank), 'nccl'
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
    return Distributed(device, rank, world_size, enabled=True)


class AllReduce(torch.autograd.Function):
    """Sum over ranks; the gradient is summed over ranks too (each rank's loss depends on every
    rank's input)."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        return AllReduce.apply(grad)


class AllGather(torch.autograd.Function):
    """Every rank's tensor (equal shapes) concatenated in rank order; the gradient of a rank's part
    is summed over ranks."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return AllReduce.apply(grad).chunk(dist.get_world_size())[dist.get_rank()]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics are over the global batch (all ranks' samples):
    mean, then the centred sum of squares (two all-reduces, both differentiable), the biased
    variance normalising and the unbiased one entering the running variance, as nn.BatchNorm
    does on one process. Evaluation, and a single process, use the plain BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() not in (2, 4):
            raise ValueError(f'expected 2D or 4D input, got {input.dim()}D')

    def forward(self, input):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # bf16 under autocast -> float32
        local_count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = AllReduce.apply(torch.cat([x.sum(dims), local_count]))
        count = totals[-1]
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        square_sum = AllReduce.apply((centred * centred).sum(dims))
        output = centred * torch.rsqrt(square_sum / count + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # as F.batch_norm: (1 - momentum) * running + momentum * batch
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - self.momentum).add_(mean.detach() * self.momentum)
                self.running_var.mul_(1 - self.momentum).add_((square_sum / (count - 1)).detach() * self.momentum)
        return output.to(input.dtype)


def global_batch_norm(model):
    """Every nn.BatchNorm1d/2d of `model` replaced in place by a GlobalBatchNorm holding the same
    parameters and buffers (the state-dict keys, dtypes and devices do not change)."""
    for name, child in model.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            like = next(iter(child.state_dict().values()))  # the same dtype and device
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats, device=like.device, dtype=like.dtype)
            replacement.load_state_dict(child.state_dict())
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            global_batch_norm(child)
    return model
