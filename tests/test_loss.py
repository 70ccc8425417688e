"""NT-Xent (design 4) against a naive float64 loop over rows."""
import math

import pytest
import torch

from losses.nt_xent import NTXentLoss, nt_xent


def naive_per_sample(views, temperature):
    """views: list over samples of (v1, v2) float64 lists; design 4 written out row by row."""
    rows = [v for pair in views for v in pair]  # row 2i = view 1 of sample i, 2i+1 = view 2

    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v]

    rows = [unit(v) for v in rows]
    row_loss = []
    for a in range(len(rows)):
        positive = a + 1 if a % 2 == 0 else a - 1
        sims = {b: sum(x * y for x, y in zip(rows[a], rows[b])) / temperature
                for b in range(len(rows)) if b != a}
        denominator = sum(math.exp(s) for s in sims.values())
        row_loss.append(-math.log(math.exp(sims[positive]) / denominator))
    return [(row_loss[2 * i] + row_loss[2 * i + 1]) / 2 for i in range(len(views))]


@pytest.mark.parametrize('temperature', [0.1, 0.2, 0.5])
@pytest.mark.parametrize('batch', [1, 2, 7])
def test_adjacent_rows_form_matches_naive_loop(temperature, batch):
    torch.manual_seed(batch)
    views = torch.randn(batch, 2, 5)
    got = nt_xent(views.flatten(0, 1), temperature, average=False)
    expected = naive_per_sample(views.double().tolist(), temperature)
    assert got.dtype == torch.float32 and got.shape == (batch,)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-5, atol=1e-5)
    mean = nt_xent(views.flatten(0, 1), temperature)
    assert mean.shape == () and math.isclose(mean.item(), sum(expected) / batch, rel_tol=1e-5)


@pytest.mark.parametrize('temperature', [0.1, 0.2, 0.5])
@pytest.mark.parametrize('batch', [1, 4])
def test_two_tensor_form_matches_naive_loop(temperature, batch):
    torch.manual_seed(10 + batch)
    z1, z2 = torch.randn(batch, 6), torch.randn(batch, 6)
    got = nt_xent(z1, temperature, features2=z2, average=False)
    expected = naive_per_sample(list(zip(z1.double().tolist(), z2.double().tolist())), temperature)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-5, atol=1e-5)


def test_batch_of_one_has_zero_loss():
    # with one sample the positive is the only other row: -log(1) = 0
    assert nt_xent(torch.randn(2, 3), 0.2).item() == pytest.approx(0.0, abs=1e-6)


def test_module_defaults_to_temperature_0_2_and_mean():
    torch.manual_seed(0)
    z = torch.randn(8, 4)
    assert torch.equal(NTXentLoss()(z), nt_xent(z, 0.2))
    assert torch.equal(NTXentLoss(0.5, average=False)(z[::2], z[1::2]),
                       nt_xent(z, 0.5, average=False))


def test_low_precision_input_is_computed_in_float32():
    torch.manual_seed(1)
    z = torch.randn(16, 32).bfloat16()
    reference = nt_xent(z.float(), 0.2, average=False)
    got = nt_xent(z, 0.2, average=False)
    assert got.dtype == torch.float32 and torch.equal(got, reference)
    # under autocast the similarity matmul must not drop back to bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = nt_xent(z.float(), 0.2, average=False)
    assert got.dtype == torch.float32
    assert torch.allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_gradcheck_float64():
    torch.manual_seed(2)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    z1, z2 = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # float64 input stays float64 (only lower precisions are raised to float32)
    assert nt_xent(z, 0.2).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: nt_xent(x, 0.2, average=False), (z,))
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, 0.5, features2=b), (z1, z2))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(5, 3))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 3), features2=torch.randn(3, 3))
