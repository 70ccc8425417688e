"""SDCLR's linear evaluation: eval_sdclr.sdclr_probe against the straightforward published loop.

`reference_probe` is the loop the way train_cifar.py runs it (--fixbn --fixto layer4 --wd 0
--lr 30): a Dataset applying torchvision's PIL ops, a DataLoader, nn.Linear, torch.optim.SGD,
MultiStepLR stepped at the start of each epoch, the backbone run on each batch of 128, the
validation images scored every `test_freq` epochs, the best state copied. It takes its
permutation, crop offsets and flips from eval_sdclr.epoch_draws with the same seed, so the two
should end with the same fc (tests/test_eval_sdclr.py checks it).

The script times both on a ResNet-18 SimCLR model (random weights) and random CIFAR-sized data,
float32 (utils.set_cudnn: no TF32, deterministic cuDNN) for both:

    python benchmarks/sdclr_probe.py --epochs 2 --output sdclr_probe.json
    python benchmarks/sdclr_probe.py --epochs 2 --sizes 1000 500 500  # the 2-core CPU: ~1 minute

images/s = epochs x probe-train images / the probe's whole time (validation and test included).
"""
import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from eval_sdclr import (BATCH, CIFAR_VIEWS, FULL_SHOT, GAMMA, LR, MOMENTUM, epoch_draws, initial_fc,  # noqa: E402
                        sdclr_probe)
from models import build_model  # noqa: E402
from utils import set_cudnn  # noqa: E402


class ProbeImages(Dataset):
    """(to_tensor(view), label) of uint8 HWC images; with `params` set (eval_sdclr.PadCropFlip.draw,
    row i for image i), the view is torchvision's pad(4) + crop + hflip of the PIL image."""

    def __init__(self, images, labels):
        self.images, self.labels, self.params = images.numpy(), labels, None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i])
        if self.params is not None:
            top, left, flip = self.params[i].tolist()
            pad = CIFAR_VIEWS.padding
            image = TF.crop(TF.pad(image, pad), top, left, image.height, image.width)
            if flip:
                image = TF.hflip(image)
        return TF.to_tensor(image), self.labels[i]


def logits_of(model, fc, data, device):
    """(logits, labels) of the evaluation views of `data`, in batches of 128."""
    outputs, targets = [], []
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=BATCH):
            outputs.append(fc(model.features(x.to(device))))
            targets.append(y.to(device))
    return torch.cat(outputs), torch.cat(targets)


def reference_probe(model, train_set, val_set, test_set, num_class, device, epochs, milestones, test_freq,
                    seed=0, workers=0):
    """The published loop; returns what eval_sdclr.sdclr_probe returns (but 'val_history')."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()  # --fixbn --fixto layer4: every module but fc in eval mode, backbone frozen
    for p in model.parameters():
        p.requires_grad_(False)
    train_data, val_data, test_data = (ProbeImages(*s) for s in (train_set, val_set, test_set))
    dim = model.features(val_data[0][0][None].to(device)).shape[1]
    fc = nn.Linear(dim, num_class).to(device)
    weight, bias = initial_fc(dim, num_class, generator)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    optimizer = torch.optim.SGD(fc.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=GAMMA)
    best_acc, best_state, best_epoch = -1, None, 0
    for epoch in range(1, epochs + 1):
        with warnings.catch_warnings():  # stepped before optimizer.step(), as published
            warnings.simplefilter('ignore', UserWarning)
            scheduler.step()
        order, train_data.params = epoch_draws(len(train_data), CIFAR_VIEWS, generator)
        for x, y in DataLoader(train_data, batch_size=BATCH, sampler=order.tolist(), num_workers=workers):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(fc(model.features(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % test_freq == 0:
            logits, labels = logits_of(model, fc, val_data, device)
            acc = (logits.argmax(1) == labels).float().mean().item() * 100
            if acc > best_acc:
                best_acc, best_state, best_epoch = acc, copy.deepcopy(fc.state_dict()), epoch
    last_fc = {k: v.detach().cpu().clone() for k, v in fc.state_dict().items()}
    fc.load_state_dict(best_state)
    logits, labels = logits_of(model, fc, test_data, device)
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1)
    hits = logits.argmax(1) == labels
    per_class = [hits[labels == c].float().mean().item() * 100 for c in range(num_class)]
    return {'top1': hits.float().mean().item() * 100, 'top5': top5.float().mean().item() * 100,
            'per_class': np.array(per_class), 'best_epoch': best_epoch, 'val_top1': best_acc,
            'fc': {k: v.cpu() for k, v in best_state.items()}, 'last_fc': last_fc}


def random_set(n, num_class, generator):
    """(uint8 [n, 32, 32, 3], int64 [n]) of uniform noise and labels."""
    return (torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator),
            torch.randint(0, num_class, (n,), generator=generator))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--sizes', type=int, nargs=3, default=(5000, 1000, 1000), metavar=('TRAIN', 'VAL', 'TEST'))
    parser.add_argument('--workers', type=int, default=2, help="the reference's loader workers (published: 2)")
    parser.add_argument('--chunk', type=int, help='images per backbone pass of the fast probe (default: 1024 on '
                        'CUDA, 128 on the CPU, where 1024 32-px images through ResNet-18 page-fault ~270 MB a layer)')
    parser.add_argument('--output', help='write the numbers to this JSON file')
    args = parser.parse_args(argv)
    device, num_class = torch.device(args.device), 10
    args.chunk = args.chunk or (1024 if device.type == 'cuda' else BATCH)
    set_cudnn(device, benchmark=False)
    generator = torch.Generator().manual_seed(0)
    train_set, val_set, test_set = (random_set(n, num_class, generator) for n in args.sizes)
    torch.manual_seed(0)
    model = build_model(False, 'resnet18', num_class).to(device).eval()
    settings = dict(epochs=args.epochs, milestones=FULL_SHOT['milestones'], test_freq=1, seed=0)
    with torch.no_grad():  # warm-up: first kernel choices and allocations, for both
        for batch in (BATCH, args.chunk):
            model.features(torch.rand(batch, 3, 32, 32, device=device))

    results, seconds = {}, {}
    for name, run in (('fast', lambda: sdclr_probe(model, train_set, val_set, test_set, num_class, device,
                                                    chunk=args.chunk, **settings)),
                      ('reference', lambda: reference_probe(model, train_set, val_set, test_set, num_class, device,
                                                            workers=args.workers, **settings))):
        start = time.perf_counter()
        results[name] = run()  # both read their results on the host: the device work is done
        seconds[name] = time.perf_counter() - start
    fast, reference = results['fast'], results['reference']
    images = args.epochs * args.sizes[0]
    report = {
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
        'threads': torch.get_num_threads(), 'sizes': args.sizes, 'chunk': args.chunk, 'workers': args.workers,
        **settings, 'seconds': seconds, 'images_per_s': {k: images / v for k, v in seconds.items()},
        'speed_up': seconds['reference'] / seconds['fast'],
        'max_abs_diff_last_fc_weight': (fast['last_fc']['weight'] - reference['last_fc']['weight']).abs().max().item(),
        'max_abs_diff_selected_fc_weight': (fast['fc']['weight'] - reference['fc']['weight']).abs().max().item(),
        'top1': {k: r['top1'] for k, r in results.items()},
        'best_epoch': {k: r['best_epoch'] for k, r in results.items()}}
    for name in seconds:
        print(f"{name:>9}: {seconds[name]:8.2f} s  {report['images_per_s'][name]:9.1f} images/s  "
              f"top-1 {report['top1'][name]:.2f}  best epoch {report['best_epoch'][name]}")
    print(f"speed-up {report['speed_up']:.2f}x; max |fc weight difference| after the last epoch "
          f"{report['max_abs_diff_last_fc_weight']:.3g}, selected fc {report['max_abs_diff_selected_fc_weight']:.3g}")
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == '__main__':
    main()
