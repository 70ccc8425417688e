"""Linear-probe evaluation (design 6): frozen features, linear probes, Many/Medium/Few groups.

Features are the backbone output before the projection head, network in eval mode, dense
branch for SDCLR (`model.features`). A probe is Linear(d, num_class) trained with Adam
(lr 1e-2, weight decay 5e-6), the learning rate decayed per epoch by
gamma = (1e-6 / 1e-2) ** (1 / epochs), shuffled mini-batches of 1000 (last partial batch
kept), cross-entropy. Everything stays on the features' device.

Probes trained on index sets of equal size (the five 100-shot subsets, say) are trained
together as one stacked weight [P, d, C]. Each probe is the same computation as a probe
trained alone: the same initial weights and the same shuffled order of positions (one
generator seeded with `seed`), its own loss (per-probe mean; the sum over probes leaves each
probe's gradient its own), and Adam is elementwise. So a separate run with the same seed
gives the same accuracy (tests/test_eval.py checks it).
"""
import functools
import math
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.benchmarks import DEFAULT, class_groups, get_benchmark
from preemption import check, ignore_in_worker, workers_start_shielded
from utils import InputError

PROBE_EPOCHS = 500
PROBE_BATCH = 1000
LR_START, LR_END, WEIGHT_DECAY = 1e-2, 1e-6, 5e-6
GROUPS = ('many', 'medium', 'few')
PERMUTATION_BLOCK = 2 ** 23  # indices drawn ahead per host-to-device copy (64 MB of int64 at most)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as published
CUDA_GRAPHS = True  # replay a probe epoch as a CUDA graph on CUDA (tests compare with eager)


def extract_features(model, dataset, device, batch_size=512, num_workers=0, amp='none',
                     channels_last=False, desc=None, stop=None):
    """(features float32 [N, d], labels int64 [N]) of `dataset`, both on `device`, in dataset order.

    Design 6: eval mode, no gradient, `model.features` (the dense branch for SDCLR). The
    model's train/eval mode is restored afterwards. Speed (issue 6, opt-in): amp='bf16' runs
    the network under bfloat16 autocast, the features are still returned as float32 (the
    probes train in float32); channels_last feeds the images in channels-last memory format
    (convert the model too: model.to(memory_format=torch.channels_last)). `desc`: a progress bar.
    `stop` (preemption.StopRequest): a signal raises preemption.Stopped at the next batch.
    """
    cuda = device.type == 'cuda'
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=cuda, worker_init_fn=ignore_in_worker if num_workers else None)
    with workers_start_shielded():  # a signal during training's probe is the main process's (preemption.py)
        batches = iter(loader)
    was_training = model.training
    model.eval()
    features, labels = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == 'bf16'):
        for images, targets in tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, total=len(loader),
                                    disable=None if desc else True):
            check(stop)
            images = images.to(device, non_blocking=cuda).contiguous(memory_format=memory_format)
            features.append(model.features(images).float())
            labels.append(targets.to(device, non_blocking=cuda))
    model.train(was_training)
    return torch.cat(features), torch.cat(labels).long()


def _probe_logits(features, weight, bias):
    """Logits [P, B, C] of P probes on features [P, B, d], in float32 even inside autocast."""
    with torch.autocast(features.device.type, enabled=False):
        return torch.baddbmm(bias.unsqueeze(1), features.float(), weight)


def adam_scalars(epochs, steps_per_epoch):
    """float32 [epochs * steps_per_epoch, 2]: for each Adam step t (from 1), the step size
    lr_e / (1 - beta1^t) and sqrt(1 - beta2^t), computed in Python floats as torch.optim.Adam
    computes them, with lr_e decayed per epoch as ExponentialLR does (lr <- lr * gamma)."""
    gamma = (LR_END / LR_START) ** (1 / epochs)
    lr, rows, step = LR_START, [], 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            rows.append((lr / (1 - ADAM_BETAS[0] ** step), math.sqrt(1 - ADAM_BETAS[1] ** step)))
        lr = lr * gamma
    return torch.tensor(rows, dtype=torch.float32)


def _adam_step(param, grad, exp_avg, exp_avg_sq, scalars):
    """torch.optim.Adam's update (L2 weight decay, not decoupled), in place, with the step's
    scalars as a device tensor (step size, sqrt of bias correction 2), so no host value is read."""
    grad = grad + WEIGHT_DECAY * param
    exp_avg.lerp_(grad, 1 - ADAM_BETAS[0])
    exp_avg_sq.mul_(ADAM_BETAS[1]).addcmul_(grad, grad, value=1 - ADAM_BETAS[1])
    denom = (exp_avg_sq.sqrt() / scalars[1]).add_(ADAM_EPS)
    param.sub_(scalars[0] * (exp_avg / denom))


def _probe_epoch(features, labels, index, perm, scalars, state):
    """One epoch of every probe's steps over the permutation `perm` (batches of PROBE_BATCH, the
    last partial one kept). Each probe's loss is the mean cross-entropy of its batch; its
    gradient is written out: d loss / d logits = (softmax - one-hot) / batch. Device tensors only:
    no host sync, so on CUDA the epoch can be captured as one graph."""
    weight, bias, moments = state
    for step, start in enumerate(range(0, perm.shape[0], PROBE_BATCH)):
        rows = index[:, perm[start:start + PROBE_BATCH]]  # [P, B] rows of `features`
        x = features[rows].float()
        with torch.autocast(features.device.type, enabled=False):
            probs = torch.baddbmm(bias.unsqueeze(1), x, weight).softmax(2)
            dlogits = (probs - torch.zeros_like(probs).scatter_(2, labels[rows].unsqueeze(2), 1.0)) / rows.shape[1]
            grad_weight = torch.bmm(x.transpose(1, 2), dlogits)
        _adam_step(weight, grad_weight, *moments[:2], scalars[step])
        _adam_step(bias, dlogits.sum(1), *moments[2:], scalars[step])


def train_probes(features, labels, index_sets, num_class, epochs=PROBE_EPOCHS, seed=0, desc=None, stop=None):
    """Train one linear probe per index set (rows of `features`), all at once.

    Returns (weight [P, d, C], bias [P, C]). The index sets (numpy arrays or tensors on any
    device) must have equal sizes. The random draws (initial weights as nn.Linear draws them, one
    permutation per epoch) come from one CPU generator seeded with `seed`, so they do not depend
    on the device; the permutations are drawn ahead in blocks of epochs and copied to the device
    once per block. The steps (_probe_epoch, torch.optim.Adam's arithmetic with gradients written
    out) read no host value; on CUDA the first epoch runs eagerly, the others replay it as one
    CUDA graph (the same kernels: the same numbers, without ~20 launches per step). `desc`: a
    progress bar over the epochs; `stop`: a signal raises preemption.Stopped at the next epoch.
    """
    if len({len(s) for s in index_sets}) != 1:
        raise ValueError(f'probes trained together need index sets of one size, got {[len(s) for s in index_sets]}')
    device = features.device
    index = torch.stack([torch.as_tensor(s, dtype=torch.long).to(device) for s in index_sets])
    num_probes, n = index.shape
    dim = features.shape[1]
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(dim)  # nn.Linear's default init: U(-1/sqrt(d), 1/sqrt(d))
    weight0 = torch.empty(num_class, dim).uniform_(-bound, bound, generator=generator)
    bias0 = torch.empty(num_class).uniform_(-bound, bound, generator=generator)
    weight = weight0.t().repeat(num_probes, 1, 1).to(device)
    bias = bias0.repeat(num_probes, 1).to(device)
    state = (weight, bias, [torch.zeros_like(weight), torch.zeros_like(weight),
                            torch.zeros_like(bias), torch.zeros_like(bias)])

    steps = math.ceil(n / PROBE_BATCH)
    all_scalars = adam_scalars(epochs, steps).to(device)
    perm, scalars = torch.empty(n, dtype=torch.long, device=device), torch.empty(steps, 2, device=device)
    run_epoch = functools.partial(_probe_epoch, features, labels, index, perm, scalars, state)
    graph = None
    block = max(1, PERMUTATION_BLOCK // n)  # epochs per host-to-device copy
    for epoch in tqdm(range(epochs), desc=desc, leave=False, dynamic_ncols=True, disable=None if desc else True):
        check(stop)
        if epoch % block == 0:
            perms = torch.stack([torch.randperm(n, generator=generator)
                                 for _ in range(min(block, epochs - epoch))]).to(device)
        perm.copy_(perms[epoch % block])
        scalars.copy_(all_scalars[epoch * steps:(epoch + 1) * steps])
        if graph is not None:
            graph.replay()
            continue
        run_epoch()
        if device.type == 'cuda' and CUDA_GRAPHS and epoch + 1 < epochs:
            graph = capture(run_epoch, device)
    return weight, bias


def capture(fn, device):
    """`fn` captured as a CUDA graph (run with .replay()), or None where capture fails (eager)."""
    try:
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except RuntimeError as error:
        warnings.warn(f'CUDA graph capture of the probe failed ({str(error).splitlines()[0]}); running eagerly')
        return None


def probe_accuracy(weight, bias, features, labels, num_class):
    """Per probe: {'top1', 'top5' (%), 'per_class' (np.ndarray [C], % top-1 per class)}."""
    with torch.no_grad():
        logits = _probe_logits(features.expand(len(weight), -1, -1), weight, bias)
        hits = logits.topk(5, dim=2).indices == labels[None, :, None]  # [P, M, 5]
        top1, top5 = hits[..., 0].float(), hits.any(2).float()
        per_class = torch.zeros(len(weight), num_class, device=features.device)
        per_class.index_add_(1, labels, top1)
        per_class = per_class / torch.bincount(labels, minlength=num_class)  # nan for a class absent from test
        # one explicit copy to the host (a host value is needed: results are reported)
        top1, top5 = (100 * torch.stack([top1.mean(1), top5.mean(1)])).cpu().tolist()
        per_class = (100 * per_class).double().cpu().numpy()
    return [{'top1': a, 'top5': b, 'per_class': c} for a, b, c in zip(top1, top5, per_class)]


def linear_probe(train_features, train_labels, test_features, test_labels, num_class=100,
                 epochs=PROBE_EPOCHS, seed=0, desc=None, stop=None):
    """One probe on all training features: {'top1', 'top5', 'per_class'} on the test features."""
    rows = torch.arange(len(train_features), device=train_features.device)
    weight, bias = train_probes(train_features, train_labels, [rows], num_class, epochs, seed, desc, stop)
    return probe_accuracy(weight, bias, test_features, test_labels, num_class)[0]


def group_accuracy(per_class_acc, class_counts, rule=class_groups):
    """Design 6: {'many', 'medium', 'few', 'std'} from per-class accuracy and D_i class counts, grouped
    by the benchmark's `rule` (data.benchmarks.class_groups on CIFAR). Std is the population std (numpy default) of the
    three group means. A class absent from the test set (nan) counts in no group's mean."""
    per_class_acc, class_counts = np.asarray(per_class_acc, dtype=np.float64), np.asarray(class_counts)
    if per_class_acc.shape != class_counts.shape or per_class_acc.ndim != 1:
        raise ValueError(f'need one accuracy per class count, got {per_class_acc.shape} and {class_counts.shape}')

    def mean(values):  # over the classes the test set has; nan for a group without one (tiny synthetic lists)
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float('nan')

    groups = {name: mean(per_class_acc[ids]) for name, ids in zip(GROUPS, rule(class_counts))}
    groups['std'] = float(np.std([groups['many'], groups['medium'], groups['few']]))
    return groups


def prepare_full_shot(data_folder, train_split, disable_hint=None, benchmark=None, seed=0):
    """Resolve and read everything the full-shot probe of `train_split` (a D_i name of `benchmark`,
    default CIFAR-100-LT) needs, so that a missing file fails before training: {'train_set' (its
    family's train list), 'test_set' (the test images), 'class_counts' (of D_i, for Many/Medium/Few),
    'benchmark'}. `disable_hint` (e.g. '--eval_freq 0') is added to errors: how to run without the probe.
    `seed` keys an image-list probe set's random crops (CIFAR's probe images are not augmented)."""
    benchmark = benchmark or get_benchmark(DEFAULT)
    try:
        return {**benchmark.full_shot_sets(data_folder, train_split, seed), 'benchmark': benchmark}
    except InputError as error:
        if disable_hint is None:
            raise
        raise InputError(f'{error} (needed by the in-training full-shot probe; {disable_hint} turns it off)') from None


def full_shot_eval(model, probe_data, device, probe_epochs=PROBE_EPOCHS, seed=0, num_workers=0, amp='none',
                   channels_last=False, stop=None):
    """Full-shot probe of design 6 on `probe_data` (prepare_full_shot): trained on the train list,
    tested on the test images. Returns {'top1', 'top5', 'per_class', 'many', 'medium',
    'few', 'std'}. `amp` and `channels_last` act on the feature pass, as in extract_features. A signal
    on `stop` (train.py's StopRequest) raises preemption.Stopped within a batch or a probe epoch."""
    speed = {'num_workers': num_workers, 'amp': amp, 'channels_last': channels_last, 'stop': stop}
    train_features, train_labels = extract_features(model, probe_data['train_set'], device,
                                                    desc='features (train list)', **speed)
    test_features, test_labels = extract_features(model, probe_data['test_set'], device,
                                                  desc='features (test set)', **speed)
    benchmark = probe_data['benchmark']
    result = linear_probe(train_features, train_labels, test_features, test_labels, benchmark.num_classes,
                          probe_epochs, seed, desc='full-shot probe', stop=stop)
    return {**result, **group_accuracy(result['per_class'], probe_data['class_counts'], benchmark.groups)}
