"""Counter-based uniform random numbers: every number is a fixed function of its key
(issue 11).

A view's augmentation must not depend on which loader worker makes it, in which order, in
which process, or whether a batch is drawn at once on the GPU or one sample at a time on the
CPU. A generator object cannot give that (its numbers depend on everything drawn before), a
counter-based one can: the uniform for (key, position, view, slot) is a hash of those numbers.

The hash is SplitMix64's finaliser (the mixer of Java's SplittableRandom; a bijection of
64-bit integers with full avalanche), written in int64 tensor ops: xor, masked shifts and
multiplies that wrap modulo 2^64. Integer ops give the same bits on every device and in every
kernel path (vectorised or not), so a whole batch drawn on CUDA equals the same samples drawn
one by one on the CPU. We chose it over Philox because torch exposes no Philox that can be
keyed per element (a torch.Generator is one stream), and a 64-bit hash needs no 32-bit
multiply-high. tests/test_view_params.py checks the ops against Python's exact integers.
"""
import torch

VIEWS = 3  # views 0 and 1, and 2 for the draws both views of a sample share (design 1.4's u)
SLOTS = 1 << 12  # uniforms per (position, view)


def _int64(value):
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _int64(0x9E3779B97F4A7C15)
MIX1, MIX2 = _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _shift_right(x, bits):
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x):
    """SplitMix64's finaliser on an int64 tensor (wrapping arithmetic)."""
    x = x ^ _shift_right(x, 30)
    x = x * MIX1
    x = x ^ _shift_right(x, 27)
    x = x * MIX2
    return x ^ _shift_right(x, 31)


def keyed_uniforms(key, positions, views, num_slots, first_slot=0):
    """float64 uniforms in [0, 1), shape [len(positions), len(views), num_slots], on the device of
    `positions` (an int64 tensor); element [b, v, s] is a function of (key, positions[b],
    views[v], first_slot + s) alone. `key` is a 63-bit int (utils.keyed_seed of the seed and
    epoch). `first_slot` reads a later block of slots without drawing the ones before it."""
    if not 0 <= first_slot <= first_slot + num_slots <= SLOTS or not all(0 <= v < VIEWS for v in views):
        raise ValueError(f'slots in [0, {SLOTS}) and views in [0, {VIEWS}), got {num_slots} slots from '
                         f'{first_slot}, views {views}')
    device = positions.device
    slot = torch.arange(first_slot, first_slot + num_slots, dtype=torch.int64, device=device)
    rows = torch.stack([positions.long() * VIEWS + view for view in views], 1)  # no host data sent
    counter = rows[..., None] * SLOTS + slot
    second_key = int(mix64(torch.tensor(key, dtype=torch.int64)).item())
    bits = mix64(mix64(counter * GOLDEN + key) ^ second_key)
    return _shift_right(bits, 11).double() * 2.0 ** -53  # the top 53 bits: exact in float64
