"""The random parameters of every augmented view, drawn from keyed uniforms (issue 11).

Design 1.2-1.4 with torchvision's algorithms (RandomResizedCrop's ten tries and centre
fallback, ColorJitter's per-image order and factor ranges) and the published RandAugment
draws, vectorised over a batch of dataset positions on any device. Every parameter of view v
of the sample at `position` in an epoch is a function of (seed, epoch, position, v) alone
(data/keyed_random.py), so it is the same in every loader worker, process, loader setting and
resume, and the same drawn for a whole batch on the GPU as for one sample on the CPU.
data/augmentations.augment_view applies them to a PIL image. A ViewRecipe picks the published
augmentation of a benchmark: CIFAR (design 1.2-1.4) or IMAGENET (design 9.3: 224 px crops of
each image's own size, scale (0.08, 1), Pillow's Gaussian blur with p = 0.5, BCL's strength
rule without a minimum); CIFAR's draws do not depend on the blur's (slots BLUR, BLUR_SIGMA).

Only IEEE-exact float64 ops (+, *, /, sqrt, floor, round, comparisons) turn uniforms into
parameters, so the values cannot depend on the device or the kernel path; the one exp
(the log-uniform aspect ratio) is a Taylor polynomial for that reason.
"""
import math
from dataclasses import dataclass, fields

import torch

from data.keyed_random import SLOTS, keyed_uniforms
from data.randaug import NUM_OPS

SCALE, RATIO, CROP_TRIES = (0.1, 1.0), (3 / 4, 4 / 3), 10  # design 1.2: RandomResizedCrop(32, scale=(0.1, 1))
LOG_RATIO = (math.log(RATIO[0]), math.log(RATIO[1]))
FLIP_P, JITTER_P, GRAY_P = 0.5, 0.8, 0.2
JITTER_RANGES = ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))  # brightness, contrast, saturation, hue

# Where each draw sits among a view's uniforms (slots).
CROP = 0  # (area, log aspect) for each try, then top, left
FLIP = CROP + 2 * CROP_TRIES + 2
JITTER_APPLY = FLIP + 1
JITTER_ORDER = JITTER_APPLY + 1  # 4 uniforms: their argsort is a uniform random permutation
JITTER_FACTORS = JITTER_ORDER + 4  # 4
GRAY = JITTER_FACTORS + 4
RAND_AUGMENT = GRAY + 1  # then OP_SLOTS per RandAugment op:
OP_SLOTS = 5  # choice, apply, sign, Cutout centre x, centre y
SHARED_VIEW = 2  # keyed_random's view of the draws both views share: slot 0 is design 1.4's u
BLUR, BLUR_SIGMA = SLOTS - 2, SLOTS - 1  # design 9.3's blur: the last slots, past every other draw


@dataclass(frozen=True)
class ViewRecipe:
    """A benchmark's published training views and evaluation resize (design 1.2, 9.3)."""
    name: str
    size: int  # side of the square views
    scale: tuple  # RandomResizedCrop's area range
    blur_p: float  # probability of Pillow's GaussianBlur (0: never)
    blur_sigma: tuple  # its radius range, U(low, high)
    eval_resize: object  # evaluation: Resize(eval_resize), CenterCrop(size); None: ToTensor only
    strength_floor: bool = True  # BCL's magnitude: design 1.4's rule (True) or 9.3's rand_strength * w * u


CIFAR = ViewRecipe('CIFAR', 32, SCALE, 0.0, (0.0, 0.0), None)  # design 1.2-1.4
IMAGENET = ViewRecipe('ImageNet', 224, (0.08, 1.0), 0.5, (0.1, 2.0), 256, strength_floor=False)  # design 9.3


@dataclass
class ViewParams:
    """The parameters of the two views of each sample of a batch: every field is [B, 2, ...]."""
    crop: torch.Tensor  # int64 [B, 2, 4]: top, left, height, width of the box, resized to the recipe's size
    flip: torch.Tensor  # bool
    jitter: torch.Tensor  # bool: ColorJitter applied
    jitter_order: torch.Tensor  # int64 [B, 2, 4]: 0 brightness, 1 contrast, 2 saturation, 3 hue
    jitter_factors: torch.Tensor  # float64 [B, 2, 4], in that order
    gray: torch.Tensor  # bool
    magnitude: torch.Tensor  # float64: RandAugment magnitude m_i (both views the same)
    ops: torch.Tensor  # int64 [B, 2, k]: RandAugment ops, indices into data.randaug.OPS
    op_applied: torch.Tensor  # bool [B, 2, k]
    op_sign: torch.Tensor  # float64 [B, 2, k]: -1 or 1
    op_centre: torch.Tensor  # float64 [B, 2, k, 2]: Cutout centre as fractions of width, height
    blur: torch.Tensor  # bool: Pillow's GaussianBlur applied (design 9.3; never for CIFAR)
    blur_sigma: torch.Tensor  # float64: its radius (0 where the recipe has no blur)

    def to(self, device, non_blocking=False):
        return ViewParams(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self):
        return ViewParams(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def per_view(self):
        """[[view 0, view 1] for each sample], each view a dict of Python values (the PIL path)."""
        columns = {f.name: getattr(self, f.name).tolist() for f in fields(self)}
        return [[{name: column[b][v] for name, column in columns.items()} for v in range(2)]
                for b in range(len(self.flip))]


def exp_small(x):
    """exp(x) for |x| <= 0.3: the Taylor polynomial of degree 16 (truncation error below 1e-21)
    in separate IEEE mul and add ops. The exp kernels of the CPU (vectorised or not) and of CUDA
    may differ in the last bit; this gives the same bits everywhere."""
    result = torch.full_like(x, 1 / math.factorial(16))
    for k in range(15, -1, -1):
        result = result * x + 1 / math.factorial(k)
    return result


def uniform_int(u, n):
    """floor(u * n): a uniform integer in [0, n) for u in [0, 1) (never n: u <= 1 - 2^-53)."""
    return torch.floor(u * n).long()


def crop_boxes(u, height, width, scale=SCALE):
    """torchvision's RandomResizedCrop.get_params for each row of u [..., 2 * CROP_TRIES + 2]:
    up to ten tries of an area in `scale` and a log-uniform aspect ratio in RATIO, w and h rounded
    half to even (Python's round), the first box that fits wins and gets a uniform corner; if
    none fits, the centre crop of the fallback. `height`, `width`: ints, or int64 tensors of each
    row's image size (shaped like u[..., 0] or broadcastable to it). Returns int64 [..., 4]:
    top, left, h, w."""
    tries = u[..., CROP:CROP + 2 * CROP_TRIES]
    try_height, try_width = _per_try(height), _per_try(width)
    target_area = try_height * try_width * (scale[0] + (scale[1] - scale[0]) * tries[..., 0::2])
    aspect = exp_small(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * tries[..., 1::2])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= try_width) & (h > 0) & (h <= try_height)
    first = (~fits).long().cumprod(-1).sum(-1, keepdim=True).clamp(max=CROP_TRIES - 1)  # leading misses
    found = fits.any(-1)
    fallback_h, fallback_w = fallback_box(height, width)
    if isinstance(height, torch.Tensor):
        fallback_h, fallback_w = fallback_h.double(), fallback_w.double()
    else:
        fallback_h, fallback_w = torch.full_like(h[..., 0], fallback_h), torch.full_like(w[..., 0], fallback_w)
    h = torch.where(found, h.gather(-1, first).squeeze(-1), fallback_h).long()
    w = torch.where(found, w.gather(-1, first).squeeze(-1), fallback_w).long()
    top = torch.where(found, uniform_int(u[..., CROP + 2 * CROP_TRIES], height - h + 1), (height - h) // 2)
    left = torch.where(found, uniform_int(u[..., CROP + 2 * CROP_TRIES + 1], width - w + 1), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=-1)


def _per_try(side):
    """An image side for the [..., CROP_TRIES] tries: a trailing axis on a tensor of sizes."""
    return side[..., None] if isinstance(side, torch.Tensor) else side


def fallback_box(height, width):
    """torchvision's box when no try fits: the whole image, cut to the nearest allowed ratio
    (ints, or int64 tensors of sizes elementwise)."""
    in_ratio = width / height
    if isinstance(height, torch.Tensor):
        return (torch.where(in_ratio < RATIO[0], torch.round(width / RATIO[0]).long(), height),
                torch.where(in_ratio > RATIO[1], torch.round(height * RATIO[1]).long(), width))
    if in_ratio < RATIO[0]:
        return int(round(width / RATIO[0])), width
    if in_ratio > RATIO[1]:
        return height, int(round(height * RATIO[1]))
    return height, width


def rand_strength_magnitude(weight, rand_k, rand_strength, u, floor=True):
    """Design 1.4: RandAugment magnitude of a sample with weight w (u ~ U(0, 1) per sample,
    used unless rand_k == 1; with rand_k == 0 no op is applied and the value is unused); with
    floor=False design 9.3's rand_strength * w * u (for every k). Floats or tensors alike,
    evaluated in the published order."""
    if not floor:
        return rand_strength * weight * u
    if rand_k == 1:
        return 10 + (rand_strength - 10) * weight
    return 5 + (rand_strength - 5) * weight * u


def draw_views(key, positions, size=(32, 32), rand_k=0, weight=None, rand_strength=30, recipe=CIFAR):
    """The parameters of both views of the samples at `positions` (int64 tensor [B], any device):
    the recipe's base augmentation (design 1.2 or 9.3), and with rand_k > 0 BCL's
    RandAugmentProb(rand_k, m_i, p=w_i) of design 1.4 / 9.3 (`weight`: float64 [B], the samples'
    w_i, on the same device). `key` is utils.keyed_seed(seed, epoch, ...); `size` the images'
    (height, width), or an int64 tensor [B, 2] of each sample's own (height, width)."""
    if isinstance(size, torch.Tensor):
        size = size.to(positions.device).long()
        height, width = size[:, None, 0], size[:, None, 1]  # [B, 1]: the same for both views
    else:
        height, width = size
    num_slots = RAND_AUGMENT + OP_SLOTS * rand_k
    if num_slots > BLUR:
        raise ValueError(f'rand_k = {rand_k} needs {num_slots} slots, more than the {BLUR} before the blur')
    u = keyed_uniforms(key, positions, (0, 1), num_slots)  # [B, 2, slots]
    batch = len(positions)
    draws = u[..., RAND_AUGMENT:].reshape(batch, 2, rand_k, OP_SLOTS)
    if rand_k:
        shared_u = keyed_uniforms(key, positions, (SHARED_VIEW,), 1)[:, 0, 0]
        magnitude = rand_strength_magnitude(weight.double(), rand_k, rand_strength, shared_u,
                                            recipe.strength_floor)
        applied = draws[..., 1] < weight.double()[:, None, None]
    else:
        magnitude, applied = u.new_zeros(batch), draws[..., 1] < 0
    if recipe.blur_p > 0:
        blur_u = keyed_uniforms(key, positions, (0, 1), 2, first_slot=BLUR)
        low, high = recipe.blur_sigma
        blur, blur_sigma = blur_u[..., 0] < recipe.blur_p, low + (high - low) * blur_u[..., 1]
    else:
        blur, blur_sigma = u.new_zeros(batch, 2, dtype=torch.bool), u.new_zeros(batch, 2)
    return ViewParams(
        crop=crop_boxes(u, height, width, recipe.scale),
        flip=u[..., FLIP] < FLIP_P,
        jitter=u[..., JITTER_APPLY] < JITTER_P,
        jitter_order=torch.argsort(u[..., JITTER_ORDER:JITTER_ORDER + 4], dim=-1),
        jitter_factors=torch.stack([low + (high - low) * u[..., JITTER_FACTORS + i]
                                    for i, (low, high) in enumerate(JITTER_RANGES)], -1),
        gray=u[..., GRAY] < GRAY_P,
        magnitude=magnitude[:, None].expand(batch, 2).contiguous(),  # no stride 0: pinned memory refuses it
        ops=uniform_int(draws[..., 0], NUM_OPS),
        op_applied=applied,
        op_sign=torch.where(draws[..., 2] < 0.5, -1.0, 1.0).double(),
        op_centre=draws[..., 3:5].contiguous(),
        blur=blur,
        blur_sigma=blur_sigma,
    )
