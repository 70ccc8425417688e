"""SDCLR's linear evaluation (design 9.4), the published protocol made fast on a GPU.

The protocol (VITA-Group/SDCLR train_cifar.py with --fixbn --fixto layer4 --wd 0 --lr 30): a
linear layer fc (weight ~ Normal(0, 0.01), bias 0) on the frozen backbone, every backbone module
in eval mode; the probe-train images with RandomCrop(32, padding=4) + RandomHorizontalFlip,
batches of 128 from a fresh permutation each epoch (last partial batch kept), mean cross-entropy,
SGD lr 30, momentum 0.9, weight decay 0. The published loop steps MultiStepLR(gamma=0.1) at the
start of each epoch, so epoch e (from 1) trains at 30 * 0.1 ** (number of milestones <= e).
Every `test_freq` epochs the fc is scored on the validation images (evaluation transform:
ToTensor only) and kept when its top-1 is strictly the best so far; that fc is then tested.

Why it is fast, and still the same computation: the backbone is frozen and in eval mode, so the
features of a view are a fixed function of it. The validation and test features are therefore
extracted once, and the augmented views of a whole chunk of an epoch (`chunk` images, e.g. 1024)
are made on the device from the uint8 images and sent through the backbone at once, under
no_grad; only the fc's steps run in batches of 128. Nothing the loop does reads a device value
on the host: the epoch's draws (permutation, crop offsets, flips, from one CPU generator seeded
with `seed`) go to the device in one copy per epoch, the learning rate is a Python float set per
epoch, and the best fc is kept with torch.where on a device comparison. The results are read
once, at the end. benchmarks/sdclr_probe.py holds the straightforward per-batch loop with
torchvision's PIL ops; tests/test_eval_sdclr.py checks that both give the same fc.

SDCLR's ImageNet script (train_imagenet.py, run by cmds/shell_scrips/imagenet-100-res50-LT.sh for
ImageNet-100-LT and ImageNet-LT-exp) runs the same loop with other facts (Protocol, IMAGENET_PROTOCOL):
RandomResizedCrop(224) + flip of each JPEG, evaluation views Resize(256) + CenterCrop(224), global batch
512, MultiStepLR stepped at the end of each epoch, validation every 2 (full-shot) or 10 (few-shot)
epochs, and the fc selected on the validation *top-5*. Its views cannot live on the device (every JPEG
has its own size): loader workers make them with torchvision, one seed per image and epoch from the
probe's generator (ResizedCropFlip), and each chunk of views goes through the backbone at once.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eval_cifar import probe_accuracy
from preemption import check, ignore_in_worker, workers_start_shielded

LR, MOMENTUM, GAMMA, BATCH = 30.0, 0.9, 0.1, 128
FULL_SHOT = dict(epochs=30, milestones=(10, 20), test_freq=1)
FEW_SHOT = dict(epochs=100, milestones=(40, 60), test_freq=5)


def lr_at(epoch, milestones, step_first=True):
    """The learning rate of epoch `epoch` (from 1): MultiStepLR's value after `epoch` steps (stepped at
    each epoch's start, train_cifar.py) or `epoch - 1` (at its end, train_imagenet.py), with its
    arithmetic (one multiplication by GAMMA per milestone passed), so the floats are equal."""
    steps = epoch if step_first else epoch - 1
    lr = LR
    for milestone in sorted(milestones):
        if milestone <= steps:
            lr *= GAMMA
    return lr


class PadCropFlip:
    """CIFAR's probe views: RandomCrop(32, padding=4) (zero padding), RandomHorizontalFlip, ToTensor.

    The interface a probe set's views offer sdclr_probe (a 224-px set brings its own):
    draw(n, generator) -> int64 [n, k], each image's parameters; train_views(images, params) and
    eval_views(images) -> float32 [B, 3, H, W] network inputs (our networks normalise themselves).
    """
    padding = 4

    def draw(self, n, generator):
        """int64 [n, 3]: top and left of the crop in the padded image (0..8), flip (0 or 1)."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        return torch.cat([offsets, torch.randint(0, 2, (n, 1), generator=generator)], 1)

    def train_views(self, images, params):
        """uint8 [B, H, W, 3] -> the crops at params' offsets, flipped where asked: one gather
        from the zero-padded batch, on the images' device; pixel for pixel torchvision's
        pad + crop + hflip + to_tensor."""
        b, h, w, _ = images.shape
        pad = self.padding
        padded = images.new_zeros(b, h + 2 * pad, w + 2 * pad, 3)
        padded[:, pad:pad + h, pad:pad + w] = images
        rows = params[:, :1] + torch.arange(h, device=images.device)  # [B, H]
        cols = torch.arange(w, device=images.device)
        cols = params[:, 1:2] + torch.where(params[:, 2:3].bool(), w - 1 - cols, cols)  # [B, W]
        batch = torch.arange(b, device=images.device)[:, None, None]
        return self.eval_views(padded[batch, rows[:, :, None], cols[:, None, :]])

    @staticmethod
    def eval_views(images):
        """ToTensor: uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1], as to_tensor divides."""
        return images.permute(0, 3, 1, 2).float().div(255)

    @staticmethod
    def prepare(data_set, device):
        """A set (images, labels) on the device, once (CIFAR-10's 50,000 training images: 150 MB)."""
        images, labels = data_set
        return images.to(device), labels.to(device).long()

    @staticmethod
    def count(data_set):
        return len(data_set[1])

    def train_batches(self, data_set, order, params, chunk, device, num_workers=0):
        """The epoch's views in `order`, `chunk` at a time: (inputs, labels) on the device, made there."""
        images, labels = data_set
        draws = _to_device(torch.cat([order[:, None], params[order]], 1), device)  # row j: the j-th sample
        for start in range(0, len(draws), chunk):
            rows = draws[start:start + chunk]
            yield self.train_views(images[rows[:, 0]], rows[:, 1:]), labels[rows[:, 0]]

    def eval_features(self, model, data_set, device, chunk, amp, channels_last, num_workers=0):
        """(features [N, d], labels [N]) of the evaluation views, `chunk` images at a time."""
        images, labels = data_set
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return torch.cat([_features(model, self.eval_views(images[s:s + chunk]), amp, memory_format)
                          for s in range(0, len(images), chunk)]), labels


class SeededItems(Dataset):
    """dataset[position] with torch's generator seeded by `seed` while it is made: key (position, seed)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        position, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[position]


class ResizedCropFlip:
    """SDCLR's ImageNet probe views (train_imagenet.py): the sets are datasets of (view, label), e.g.
    data.image_list_datasets.EvalImageList; the train set's transform is RandomResizedCrop(224) +
    RandomHorizontalFlip + ToTensor (bilinear, torchvision's defaults), made in loader workers; val and
    test carry the evaluation transform. An epoch's draws are one seed per image (SeededItems), so a
    view depends on (seed, epoch, image) alone, not on workers or chunks. Workers load batches of
    `load_batch` (so that every worker is busy and shared memory holds a few small batches); the
    batches of a chunk are joined on the device."""

    def __init__(self, load_batch=128):
        self.load_batch = load_batch

    @staticmethod
    def draw(n, generator):
        return torch.randint(0, 2 ** 62, (n, 1), generator=generator)

    @staticmethod
    def prepare(data_set, device):
        return data_set

    @staticmethod
    def count(data_set):
        return len(data_set)

    def _batches(self, data_set, device, num_workers, sampler=None):
        cuda = device.type == 'cuda'
        loader = DataLoader(data_set, batch_size=self.load_batch, sampler=sampler, num_workers=num_workers,
                            pin_memory=cuda, worker_init_fn=ignore_in_worker if num_workers else None)
        with workers_start_shielded():  # a signal is the main process's (preemption.py)
            batches = iter(loader)
        for inputs, labels in batches:
            yield inputs.to(device, non_blocking=cuda), labels.to(device, non_blocking=cuda).long()

    def train_batches(self, data_set, order, params, chunk, device, num_workers=0):
        if chunk % self.load_batch:
            raise ValueError(f'need chunk ({chunk}) a multiple of the loader batch ({self.load_batch})')
        keys = list(zip(order.tolist(), params[order, 0].tolist()))
        inputs, labels = [], []
        for batch in self._batches(SeededItems(data_set), device, num_workers, keys):
            inputs.append(batch[0])
            labels.append(batch[1])
            if len(inputs) * self.load_batch == chunk:  # full loader batches until the epoch's last
                yield torch.cat(inputs), torch.cat(labels)
                inputs, labels = [], []
        if inputs:
            yield torch.cat(inputs), torch.cat(labels)

    def eval_features(self, model, data_set, device, chunk, amp, channels_last, num_workers=0):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        features, labels = [], []
        for inputs, batch_labels in self._batches(data_set, device, num_workers):
            features.append(_features(model, inputs, amp, memory_format))
            labels.append(batch_labels)
        return torch.cat(features), torch.cat(labels)


CIFAR_VIEWS = PadCropFlip()


@dataclass(frozen=True)
class Protocol:
    """The facts that differ between SDCLR's two evaluation scripts (train_cifar.py, train_imagenet.py)."""
    views: object  # the probe sets' views: PadCropFlip or ResizedCropFlip
    batch: int  # the fc's (global) batch
    select: str  # 'top1' or 'top5': the validation accuracy that selects the fc
    step_first: bool  # MultiStepLR stepped at each epoch's start (train_cifar.py) or at its end
    full_shot: dict  # {'epochs', 'milestones', 'test_freq'}
    few_shot: dict


CIFAR_PROTOCOL = Protocol(CIFAR_VIEWS, BATCH, 'top1', True, FULL_SHOT, FEW_SHOT)
# cmds/shell_scrips/imagenet-100-res50-LT.sh (ImageNet-100-LT) and imagenet-res50-LT.sh (ImageNet-LT-exp)
IMAGENET_PROTOCOL = Protocol(ResizedCropFlip(), 512, 'top5', False,
                             dict(epochs=30, milestones=(10, 20), test_freq=2),
                             dict(epochs=100, milestones=(40, 60), test_freq=10))


def initial_fc(dim, num_class, generator):
    """The published fc before training: weight [C, d] ~ Normal(0, 0.01), bias zeros."""
    return torch.empty(num_class, dim).normal_(0.0, 0.01, generator=generator), torch.zeros(num_class)


def epoch_draws(n, views, generator):
    """One epoch's draws: (order int64 [n], the order of the images; params [n, k] of image i in row i)."""
    return torch.randperm(n, generator=generator), views.draw(n, generator)


def _features(model, inputs, amp, memory_format):
    """Backbone features float32 [B, d] of network inputs, no gradient."""
    with torch.no_grad(), torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp == 'bf16'):
        return model.features(inputs.contiguous(memory_format=memory_format)).float()


def _fc_steps(weight, bias, optimizer, features, labels, batch):
    """SGD steps on batches of `batch` consecutive rows (the last partial one kept)."""
    for start in range(0, len(features), batch):
        logits = F.linear(features[start:start + batch], weight, bias)
        loss = F.cross_entropy(logits, labels[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def hits(logits, labels, select):
    """0-dim count of rows whose label is the top-1 ('top1') or among the top 5 ('top5') logits."""
    if select == 'top1':
        return (logits.argmax(1) == labels).sum()
    return (logits.topk(min(5, logits.shape[1]), 1).indices == labels[:, None]).any(1).sum()


def keep_best(best, correct, epoch, weight, bias):
    """The model selection of the published loop without a host read: best = (hits, epoch,
    weight, bias), device tensors, replaced by the new ones where `correct` (validation hits,
    0-dim) is strictly higher; a tie keeps the earlier fc."""
    better = correct > best[0]
    return tuple(torch.where(better, new, old) for new, old in zip((correct, epoch, weight, bias), best))


def _to_device(tensor, device):
    """A CPU tensor on `device`; on CUDA through pinned memory without a host sync."""
    cuda = device.type == 'cuda'
    return (tensor.pin_memory() if cuda else tensor).to(device, non_blocking=cuda)


def train_fc(model, train_set, val_features, val_labels, num_class, epochs, milestones, test_freq, seed=0,
             protocol=CIFAR_PROTOCOL, chunk=1024, amp='none', channels_last=False, num_workers=0, stop=None,
             desc=None):
    """Train the probe on `train_set` (protocol.views.prepare's form, on the features' device; the model in
    eval mode). Nothing here reads a device value on the host: the caller reads the results, once.

    Returns {'weight' [C, d], 'bias' [C] (the selected fc), 'last_weight', 'last_bias' (after the
    last epoch), 'best_epoch' (0-dim), 'val_correct' (int64 [epochs // test_freq], validation hits
    (protocol.select) after epochs test_freq, 2 test_freq, ...)}.
    """
    if chunk % protocol.batch or not 1 <= test_freq <= epochs:
        raise ValueError(f'need chunk ({chunk}) a multiple of {protocol.batch} and 1 <= test_freq ({test_freq}) '
                         f'<= epochs ({epochs})')
    device = val_features.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    views = protocol.views
    generator = torch.Generator().manual_seed(seed)
    weight, bias = (_to_device(t, device).requires_grad_()
                    for t in initial_fc(val_features.shape[1], num_class, generator))
    optimizer = torch.optim.SGD([weight, bias], lr=LR, momentum=MOMENTUM, weight_decay=0.0)
    # -1 hits: the first evaluation always counts (see sdclr_probe)
    best = (torch.full((), -1, device=device), torch.zeros((), dtype=torch.long, device=device),
            weight.detach().clone(), bias.detach().clone())
    val_correct = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, leave=False, dynamic_ncols=True, disable=None if desc else True):
        check(stop)
        optimizer.param_groups[0]['lr'] = lr_at(epoch, milestones, protocol.step_first)
        order, params = epoch_draws(views.count(train_set), views, generator)
        for inputs, labels in views.train_batches(train_set, order, params, chunk, device, num_workers):
            features = _features(model, inputs, amp, memory_format)
            _fc_steps(weight, bias, optimizer, features, labels, protocol.batch)
        if epoch % test_freq == 0:
            with torch.no_grad():
                correct = hits(F.linear(val_features, weight, bias), val_labels, protocol.select)
                best = keep_best(best, correct, epoch, weight, bias)
            val_correct.append(correct)
    return {'weight': best[2], 'bias': best[3], 'last_weight': weight.detach(), 'last_bias': bias.detach(),
            'best_epoch': best[1], 'val_correct': torch.stack(val_correct)}


def sdclr_probe(model, train_set, val_set, test_set, num_class, device, epochs, milestones, test_freq, seed=0,
                protocol=CIFAR_PROTOCOL, chunk=1024, amp='none', channels_last=False, num_workers=0, stop=None,
                desc=None, features=None):
    """SDCLR's linear evaluation of `model` (anything with .features(x)); e.g.
    sdclr_probe(model, train, val, test, 10, device, **FULL_SHOT).

    The sets are what protocol.views takes: for CIFAR (images, labels), uint8 [N, 32, 32, 3] (HWC, as
    data/cifar100.py holds them) and int64 [N], on any device, copied to `device` once; for ImageNet
    datasets of (view, label), read by loaders of `num_workers` workers. Returns {'top1', 'top5' (%),
    'per_class' (np.ndarray [C], %), 'best_epoch', 'val_<select>' (the selected fc's validation
    accuracy, %), 'val_history' ({epoch: validation accuracy %}), 'fc' and 'last_fc' ({'weight',
    'bias'}, CPU tensors: the selected fc and the fc after the last epoch)}. The validation and test
    features are extracted once, in chunks of `chunk` images, as are the augmented views of each epoch
    (train_fc); 1024 suits a GPU, on a CPU 128 is faster for CIFAR (measured on 2 cores: ~1.6x against
    1024). `amp`/`channels_last` act on the backbone as in eval_cifar.extract_features; the fc trains in
    float32. `stop` (preemption.StopRequest): a signal raises preemption.Stopped at the next epoch.
    `desc`: a progress bar over the epochs. The published code starts its best accuracy at 0 (it would
    find no best model if every validation accuracy were 0); here the first evaluation counts.
    `features`: evaluation_features' result, to reuse over several train sets (val_set, test_set unused).
    """
    was_training = model.training
    model.eval()
    try:
        if features is None:
            features = evaluation_features(model, val_set, test_set, device, protocol, chunk, amp, channels_last,
                                           num_workers)
        (val_features, val_labels), (test_features, test_labels) = features
        fc = train_fc(model, protocol.views.prepare(train_set, device), val_features, val_labels, num_class, epochs,
                      milestones, test_freq, seed, protocol, chunk, amp, channels_last, num_workers, stop, desc)
    finally:
        model.train(was_training)
    result = probe_accuracy(fc['weight'].t()[None], fc['bias'][None], test_features, test_labels, num_class)[0]
    val_history = (100 * fc['val_correct'].double() / len(val_labels)).cpu().tolist()
    best_epoch = int(fc['best_epoch'])
    return {**result, 'best_epoch': best_epoch, f'val_{protocol.select}': val_history[best_epoch // test_freq - 1],
            'val_history': dict(zip(range(test_freq, epochs + 1, test_freq), val_history)),
            'fc': {'weight': fc['weight'].cpu(), 'bias': fc['bias'].cpu()},
            'last_fc': {'weight': fc['last_weight'].cpu(), 'bias': fc['last_bias'].cpu()}}


def evaluation_features(model, val_set, test_set, device, protocol=CIFAR_PROTOCOL, chunk=1024, amp='none',
                        channels_last=False, num_workers=0):
    """((val features, labels), (test features, labels)) on `device`, the model in eval mode: extracted once."""
    was_training = model.training
    model.eval()
    try:
        views = protocol.views
        return tuple(views.eval_features(model, views.prepare(s, device), device, chunk, amp, channels_last,
                                         num_workers) for s in (val_set, test_set))
    finally:
        model.train(was_training)
