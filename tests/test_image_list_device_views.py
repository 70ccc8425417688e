"""--gpu_aug on the ImageNet-scale lists (issue 24, data/device_views.ImageListDeviceViews): loader workers
decode real JPEG files and cut each image's region; the device makes both views. Checked against the PIL
path (TwoViewImageList.__getitems__, design 9.3) view for view, pixel for pixel, on real-size JPEGs (up- and
downscales, both of Pillow's resize orders, a photo over 2,000 px, chunks of bounded memory); no device value
read and nothing but the batch sent per step; no division CUDA would round differently."""
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data import device_views
from data.device_views import CHUNK_BYTES, ImageListDeviceViews, decode_batch, image_list_views
from data.image_list import ImageList
from data.image_list_datasets import MemoBoostedImageList, TwoViewImageList
from data.sampler import EpochBatchSampler
from data.synthetic import imagenet_size
from test_batched_augment import HostTransfers, InexactDivisions

# (height, width): a panorama, a tall strip, a photo over 2,000 px, smaller than a view, ImageNet-like ones
EDGE_SIZES = [(180, 900), (900, 120), (2200, 1700), (60, 80), (224, 224)]
IMAGES = 14


def write_jpegs(folder, sizes, seed=0):
    """Real JPEGs of the given (height, width) (noise on gradients, a hard-edged block): their ImageList."""
    rng = np.random.RandomState(seed)
    paths = []
    for i, (height, width) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
        pixels = pixels + rng.normal(0, 25, (height, width, 3))
        pixels[height // 3:height // 2, width // 4:width // 2] = rng.randint(0, 256, 3)
        rel = f'train/n{i % 3:08d}/{i}.JPEG'
        os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(folder, rel), quality=90)
        paths.append(rel)
    return ImageList(paths, [i % 3 for i in range(len(sizes))])


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
    """(folder, ImageList) of IMAGES JPEGs: the edge sizes, then ImageNet's size distribution."""
    folder = str(tmp_path_factory.mktemp('jpegs'))
    rng = np.random.RandomState(5)
    sizes = EDGE_SIZES + [imagenet_size(rng) for _ in range(IMAGES - len(EDGE_SIZES))]
    return folder, write_jpegs(folder, sizes)


def boosted(jpegs, seed=4):
    """BCL k = 2 at spread-out weights (every op drawn, applied and not); its epoch 1 has 5 boxes Pillow resizes
    vertically first."""
    folder, image_list = jpegs
    dataset = MemoBoostedImageList(folder, image_list, 3, rand_k=2, rand_strength=30, seed=seed)
    dataset.momentum_weight.copy_(torch.linspace(0, 1, len(image_list), dtype=torch.float64))
    dataset.set_epoch(1)
    return dataset


def pil_views(dataset, positions):
    return torch.stack([views for views, _ in dataset.__getitems__(positions)])


@pytest.mark.parametrize('budget', [CHUNK_BYTES, 3 * 10 ** 6])
def test_views_are_the_pil_paths(jpegs, budget, device):
    """Both views of every image, BCL k = 2 (design 9.3), made on the device from a worker's DecodedBatch,
    equal the PIL path's, pixel for pixel: in one chunk, and in many (a budget of 3 MB: the 2,200 x 1,700
    photo's box alone in its chunk). Pillow resizes some boxes vertically first; both orders occur here."""
    dataset = boosted(jpegs)
    positions = list(range(IMAGES))
    batch = decode_batch(dataset, positions, budget)
    if budget < CHUNK_BYTES:
        assert len(batch.chunks) > 2
    views, got_positions = image_list_views(batch, device, dataset.recipe)
    assert views.shape == (IMAGES, 2, 3, 224, 224) and views.dtype == torch.float32
    assert got_positions.tolist() == positions
    assert torch.equal(views.cpu(), pil_views(dataset, positions))


def test_the_base_views_too(jpegs):
    """SimCLR / SDCLR's views (no RandAugment) of another seed and epoch, a batch in shuffled order."""
    folder, image_list = jpegs
    dataset = TwoViewImageList(folder, image_list, 3, seed=11)
    dataset.set_epoch(5)
    positions = [9, 2, 13, 0, 5]
    views, _ = image_list_views(decode_batch(dataset, positions), torch.device('cpu'), dataset.recipe)
    assert torch.equal(views, pil_views(dataset, positions))


def test_a_batch_sends_one_region_per_image(jpegs):
    """Each image's region holds both its boxes and lies inside the image; the pixels sent are those regions
    (never more than the decoded pixels); each chunk is one resize order, largest boxes first, within the
    budget unless it is one view; both orders are planned here."""
    dataset = boosted(jpegs)
    sizes = [Image.open(os.path.join(jpegs[0], jpegs[1].relpath(i))).size for i in range(IMAGES)]  # (w, h)
    budget = 3 * 10 ** 6
    batch = decode_batch(dataset, list(range(IMAGES)), budget)
    assert batch.pixels.dtype == torch.uint8
    assert batch.pixels.numel() <= sum(3 * w * h for w, h in sizes)
    assert sorted(batch.order.tolist()) == list(range(2 * IMAGES))
    crop = batch.params.crop.reshape(-1, 4).numpy()
    regions = {}
    for row, view in zip(batch.boxes.rows(0, 2 * IMAGES), batch.order.tolist()):
        offset, height, width, top, left, box_height, box_width = row
        w, h = sizes[view // 2]
        assert 0 < height <= h and 0 < width <= w and (box_height, box_width) == tuple(crop[view, 2:])
        assert 0 <= top and top + box_height <= height and 0 <= left and left + box_width <= width
        assert regions.setdefault(view // 2, (offset, height, width)) == (offset, height, width)  # shared
    assert sum(3 * height * width for _, height, width in regions.values()) == batch.pixels.numel()
    verticals = set()
    for first, last, taps, vertical in batch.chunks:
        heights, widths = batch.boxes.height[first:last], batch.boxes.width[first:last]
        assert list(heights * widths) == sorted(heights * widths, reverse=True)
        padded = device_views.chunk_bytes(last - first, heights.max(), widths.max(), vertical, 224)
        assert padded <= budget or last - first == 1
        assert taps == device_views.resample_taps(max(heights.max(), widths.max()), 224)
        verticals.add(vertical)
    assert verticals == {False, True}


def test_a_batch_pins(jpegs):
    """Every tensor a worker sends can be pinned (the DataLoader pins batches for CUDA, copying each into a
    tensor of the same strides, which a stride-0 expand refuses) and is sent alone (not a view into a larger
    storage): each is contiguous."""
    batch = decode_batch(boosted(jpegs), list(range(4)))
    sent = [batch.pixels, batch.positions, batch.order] + [getattr(batch.params, f.name)
                                                           for f in dataclasses.fields(batch.params)]
    assert [t.is_contiguous() for t in sent] == [True] * len(sent)
    assert not torch.zeros(2)[:, None].expand(2, 2).is_contiguous()  # what the check catches
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert pinned.pixels.is_pinned() and pinned.params.magnitude.is_pinned()


def test_nothing_is_read_and_only_the_batch_is_sent(jpegs):
    """The device part of a step on the meta device, where reading any value fails: it runs, and the host
    data it sends is the batch's own tensors (pixels, resize order, the 13 parameter fields, positions: 16
    copies), nothing made per step from host values."""
    dataset = boosted(jpegs)
    batch = decode_batch(dataset, list(range(IMAGES)), 3 * 10 ** 6)
    with HostTransfers() as mode:
        views, positions = image_list_views(batch, torch.device('meta'), dataset.recipe)
    assert views.shape == (IMAGES, 2, 3, 224, 224) and views.device.type == 'meta' == positions.device.type
    assert mode.found == ['to'] * 16


def test_views_divide_as_cuda_would_round_correctly(jpegs):
    """No division by a Python number other than a power of two (CUDA multiplies by its reciprocal)."""
    dataset = boosted(jpegs)
    batch = decode_batch(dataset, list(range(6)))
    with InexactDivisions() as mode:
        image_list_views(batch, torch.device('cpu'), dataset.recipe)
    assert mode.found == []


def test_the_loader_decodes_in_workers_and_keeps_the_order(jpegs, device):
    """ImageListDeviceViews with 2 persistent loader workers (on CUDA: pinned batches): the sampler's batches in
    order, each equal to the PIL path's views of its positions; an epoch's later batches after a mid-epoch start;
    the next epoch's batches with new BCL weights (the workers see them and the epoch through shared memory)."""
    dataset = boosted(jpegs)
    sampler = EpochBatchSampler(IMAGES, 7, seed=1)
    loader = ImageListDeviceViews(dataset, sampler, device, num_workers=2, persistent_workers=True)
    sampler.set_epoch(2, start_step=1)
    dataset.set_epoch(2)
    batches = [(views.cpu(), positions.cpu()) for views, positions in loader]
    assert [p.tolist() for _, p in batches] == [sampler.order(2)[7:].tolist()]
    dataset.update_momentum_weight(torch.arange(IMAGES, 0, -1, dtype=torch.float64))
    sampler.set_epoch(3)
    dataset.set_epoch(3)
    batches += [(views.cpu(), positions.cpu()) for views, positions in loader]
    assert [p.tolist() for _, p in batches[1:]] == [sampler.order(3)[:7].tolist(), sampler.order(3)[7:].tolist()]
    for views, positions in batches[1:]:
        assert torch.equal(views, pil_views(dataset, positions.tolist()))
    dataset.set_epoch(2)
    dataset.momentum_weight.copy_(torch.linspace(0, 1, IMAGES, dtype=torch.float64))  # boosted()'s
    assert torch.equal(batches[0][0], pil_views(dataset, batches[0][1].tolist()))
