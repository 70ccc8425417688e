"""--gpu_aug (issues 12, 24): both views of every batch made on the training device, in one batched pass,
from the same keyed parameters as the PIL path (data/view_params.py), with ops that repeat Pillow's
arithmetic (data/batched_augment.py for the base augmentation and the blur, data/batched_randaug.py for
BCL's RandAugment): the same views, pixel for pixel, as the loader path.

Two loaders, drop-ins for train.run's DataLoader; each iterates its EpochBatchSampler's batches and yields
(views [B, 2, 3, S, S] float32, positions [B]) on the device, reading no device value on the host:

- DeviceViews (CIFAR): the training images live on the device as uint8; the epoch's sample order and
  BCL's weights are copied there once, when the epoch starts; nothing is sent per step.
- ImageListDeviceViews (the ImageNet-scale lists, design 9.3): every JPEG has its own size, so loader
  workers decode them with PIL as published, draw both views' parameters over each image's size (the
  PIL path's numbers), and send the one region of each image that holds both views' crop boxes: per step
  the host sends at most the decoded pixels, and usually less. The device cuts each view's box out, resizes
  it to 224 in chunks of bounded memory (CHUNK_BYTES), and makes the rest of the view.
"""
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.batched_augment import colour_pixels, gaussian_blur, resample_taps, resized_crops, to_views, vertical_first
from data.batched_randaug import rand_augment
from data.image_list_datasets import TwoViewImageList
from data.view_params import CIFAR, ViewParams
from preemption import ignore_in_worker

# The resize's working memory per chunk of views (chunk_bytes); views are taken largest first and a chunk holds
# at least one, so one 4,000 x 3,000 box alone (0.39 GB) is the most a batch needs beyond CHUNK_BYTES.
CHUNK_BYTES = 2 ** 30


def augment_views(pixels, params, recipe):
    """The views after the crop (float64 pixel values [2B, 3, S, S], (sample, view) order): flip, ColorJitter,
    grayscale, Pillow's GaussianBlur (design 9.3), BCL's RandAugment; float32 [B, 2, 3, S, S] in [0, 1]."""
    pixels = colour_pixels(pixels, params)
    if recipe.blur_p > 0:
        blurred = gaussian_blur(pixels, params.blur_sigma.reshape(-1), recipe.blur_sigma[1])
        pixels = torch.where(params.blur.reshape(-1)[:, None, None, None], blurred, pixels)
    if params.ops.shape[-1]:
        pixels = rand_augment(pixels, params)
    return to_views(pixels)


def make_views(images, params, recipe=CIFAR):
    """Both views of each image (uint8 [B, 3, H, W], all one size) from their ViewParams: float32
    [B, 2, 3, S, S], equal to ToTensor(augment_view(...)) of the PIL path."""
    return augment_views(resized_crops(images, params.crop, recipe.size), params, recipe)


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
            yield make_views(self.images[positions], dataset.view_params(positions, weight), dataset.recipe), positions


@dataclass
class ViewBoxes:
    """Where each view's box lies in a DecodedBatch, one entry per view (NumPy int64 [2B], in resize order; host
    only: not sent): its image's region in the pixels (offset, height, width) and its box in the region (top,
    left, height, width)."""
    offset: np.ndarray
    region_height: np.ndarray
    region_width: np.ndarray
    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray

    def rows(self, first, last):
        """(offset, region height, width, top, left, height, width) of views first .. last - 1, as Python ints."""
        return zip(*(getattr(self, f.name)[first:last].tolist() for f in fields(self)))


@dataclass
class DecodedBatch:
    """What a loader worker sends for one batch of B images: `pixels`, uint8, each image's region (the union
    of its two views' boxes, channels first) one after the other; `params`, the views' ViewParams (crop boxes in
    image coordinates); `positions`; `order`, int64 [2B], the views (b * 2 + v) in resize order. Host only (not
    sent): `boxes` (ViewBoxes) and `chunks`, the resize chunks: (first, last) views in resize order, taps,
    vertical first."""
    pixels: torch.Tensor
    params: ViewParams
    positions: torch.Tensor
    order: torch.Tensor
    boxes: ViewBoxes
    chunks: list

    def pin_memory(self):
        return DecodedBatch(self.pixels.pin_memory(), self.params.pin_memory(), self.positions.pin_memory(),
                            self.order.pin_memory(), self.boxes, self.chunks)


def chunk_bytes(views, height, width, vertical, out_size):
    """Peak memory of resized_crops on `views` boxes padded to height x width: 3 x (10 H W + 12 H' S + 24 S^2)
    bytes a view, H' the first pass's rows (W when it goes vertically first, which also copies the transposed
    crops: 24 H W more), S the view size. Fitted to the peak RSS of chunks of 224 x 224, 1,000 x 800, 3,000 x 600
    and 150 x 150 boxes on the CPU (within 1.4x above it, never below)."""
    rows = width if vertical else height
    per_view = 3 * (10 * height * width + 12 * rows * out_size + 24 * out_size * out_size)
    return views * (per_view + (24 * height * width if vertical else 0))


def resize_chunks(box_heights, box_widths, vertical, out_size, budget):
    """The views in resize order (those Pillow resizes vertically first apart, each group largest box first)
    and their chunks [(first, last, taps, vertical first)]: consecutive views whose padded boxes need at most
    `budget` bytes (chunk_bytes; CHUNK_BYTES), at least one view each."""
    order = np.lexsort((-(box_heights * box_widths), vertical))
    chunks, first = [], 0
    while first < len(order):
        last, height, width, group = first, 0, 0, bool(vertical[order[first]])
        while last < len(order) and vertical[order[last]] == group:
            h, w = max(height, box_heights[order[last]]), max(width, box_widths[order[last]])
            if last > first and chunk_bytes(last + 1 - first, h, w, group, out_size) > budget:
                break
            height, width, last = h, w, last + 1
        chunks.append((first, last, resample_taps(max(height, width), out_size), group))
        first = last
    return order, chunks


def decode_batch(dataset, positions, budget=None):
    """A loader worker's part of --gpu_aug on an image list: decode each JPEG (PIL, RGB, as published), draw
    both views' parameters over its size (the PIL path's draws), and cut the region that holds both boxes."""
    positions = [range(len(dataset))[p] for p in positions]  # as TwoViewCIFAR.__getitems__: -1 is N - 1
    images = [np.asarray(dataset.image(p)) for p in positions]
    sizes = torch.tensor([image.shape[:2] for image in images], dtype=torch.int64).reshape(-1, 2)
    params = dataset.view_params(torch.as_tensor(positions, dtype=torch.int64), sizes=sizes)
    crop = params.crop.numpy()  # [B, 2, 4]: top, left, height, width
    region_top, region_left = crop[..., 0].min(1), crop[..., 1].min(1)
    region_bottom, region_right = (crop[..., 0] + crop[..., 2]).max(1), (crop[..., 1] + crop[..., 3]).max(1)
    regions = [np.ascontiguousarray(image[t:b, l:r].transpose(2, 0, 1)).reshape(-1)
               for image, t, l, b, r in zip(images, region_top, region_left, region_bottom, region_right)]
    offsets = np.cumsum([0] + [len(region) for region in regions])[:-1]
    heights, widths = crop[..., 2].reshape(-1), crop[..., 3].reshape(-1)
    size = dataset.recipe.size
    order, chunks = resize_chunks(heights, widths, vertical_first(heights, widths, size, size), size,
                                  budget or CHUNK_BYTES)
    image = order // 2
    boxes = ViewBoxes(offsets[image], (region_bottom - region_top)[image], (region_right - region_left)[image],
                      crop[..., 0].reshape(-1)[order] - region_top[image],
                      crop[..., 1].reshape(-1)[order] - region_left[image], heights[order], widths[order])
    return DecodedBatch(torch.from_numpy(np.concatenate(regions)), params,
                        torch.as_tensor(positions, dtype=torch.int64), torch.from_numpy(order), boxes, chunks)


def resize_views(batch, pixels, order, box_sizes, out_size):
    """Each view's box of a DecodedBatch resized to out_size as PIL does (`pixels`, `order` and `box_sizes`,
    the boxes' (height, width) in resize order, on the device): float64 pixel values [2B, 3, S, S] in (sample,
    view) order. Per chunk, each box is copied from its region into a zero-padded uint8 tensor (slices with host
    ints: no device value read)."""
    resized = torch.empty(len(order), 3, out_size, out_size, dtype=torch.float64, device=pixels.device)
    for first, last, taps, vertical in batch.chunks:
        rows = list(batch.boxes.rows(first, last))
        crops = torch.zeros(len(rows), 3, max(row[5] for row in rows), max(row[6] for row in rows),
                            dtype=torch.uint8, device=pixels.device)
        for crop, (offset, region_height, region_width, top, left, height, width) in zip(crops, rows):
            region = pixels[offset:offset + 3 * region_height * region_width].view(3, region_height, region_width)
            crop[:, :height, :width] = region[:, top:top + height, left:left + width]
        sizes = box_sizes[first:last]
        boxes = torch.cat([torch.zeros_like(sizes), sizes], 1)[:, None]  # (0, 0, height, width)
        resized.index_copy_(0, order[first:last], resized_crops(crops, boxes, out_size, taps, vertical))
    return resized


def image_list_views(batch, device, recipe):
    """Both views of each image of a DecodedBatch, made on `device`: float32 [B, 2, 3, S, S], equal to the
    PIL path's (render_views), and the positions there."""
    pixels, order = (t.to(device, non_blocking=True) for t in (batch.pixels, batch.order))
    params = batch.params.to(device, non_blocking=True)
    box_sizes = params.crop.reshape(-1, 4)[order, 2:]  # gathered on the device
    views = augment_views(resize_views(batch, pixels, order, box_sizes, recipe.size), params, recipe)
    return views, batch.positions.to(device, non_blocking=True)


class DecodedImages:
    """The loader workers' dataset: a batch of positions -> its DecodedBatch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, positions):
        return decode_batch(self.dataset, positions)


def _as_is(batch):
    return batch


class ImageListDeviceViews:
    """--gpu_aug's loader for an image list (module docstring): `num_workers` loader workers decode."""

    def __init__(self, dataset, batch_sampler, device, num_workers=0, persistent_workers=False):
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, device
        self.generator = torch.Generator()  # seeded per epoch as the DataLoader's (train.start_epoch_loader)
        self.loader = DataLoader(DecodedImages(dataset), batch_sampler=batch_sampler, num_workers=num_workers,
                                 collate_fn=_as_is, pin_memory=device.type == 'cuda',
                                 persistent_workers=persistent_workers and num_workers > 0,
                                 worker_init_fn=ignore_in_worker if num_workers else None, generator=self.generator)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        batches = iter(self.loader)  # the workers start here, where the caller shields them (preemption.py)
        return (image_list_views(batch, self.device, self.dataset.recipe) for batch in batches)


def device_loader(dataset, batch_sampler, device, num_workers=0, persistent_workers=False):
    """--gpu_aug's loader of `dataset`: ImageListDeviceViews for an image list, else DeviceViews."""
    if isinstance(dataset, TwoViewImageList):
        return ImageListDeviceViews(dataset, batch_sampler, device, num_workers, persistent_workers)
    return DeviceViews(dataset, batch_sampler, device)
