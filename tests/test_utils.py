"""utils.py: schedule, meter, logger, atomic save, seeding and RNG state."""
import math
import random

import numpy as np
import pytest
import torch

from utils import AverageMeter, Logger, cosine_annealing, rng_state, set_rng_state, set_seed


def test_cosine_annealing_closed_form():
    total, warmup, lr_min = 110, 10, 1e-3
    assert cosine_annealing(0, total, 1.0, lr_min, warmup) == 0.0
    assert cosine_annealing(5, total, 1.0, lr_min, warmup) == pytest.approx(0.5)
    assert cosine_annealing(10, total, 1.0, lr_min, warmup) == pytest.approx(1.0)
    assert cosine_annealing(60, total, 1.0, lr_min, warmup) == pytest.approx((1 + lr_min) / 2)
    quarter = lr_min + (1 - lr_min) * (1 + math.sqrt(0.5)) / 2  # cos(pi / 4)
    assert cosine_annealing(35, total, 1.0, lr_min, warmup) == pytest.approx(quarter)
    assert cosine_annealing(total, total, 1.0, lr_min, warmup) == pytest.approx(lr_min, abs=1e-15)
    # lr_max scales the whole curve; no warm-up starts at lr_max.
    assert cosine_annealing(5, total, 0.5, lr_min, warmup) == pytest.approx(0.25)
    assert cosine_annealing(0, 100, 0.5, 0.0) == pytest.approx(0.5)
    assert cosine_annealing(50, 100, 0.5, 0.0) == pytest.approx(0.25)


def test_cosine_annealing_run_shorter_than_warmup():
    # A run no longer than its warm-up stays on the warm-up line (as the published code does).
    assert cosine_annealing(3, 5, 1.0, 0.0, 10) == pytest.approx(0.3)
    assert cosine_annealing(5, 5, 2.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_annealing(10, 10, 1.0, 0.0, 10) == 1.0


@pytest.mark.parametrize('total, warmup', [(10, -1), (0, 0), (-5, 2)])
def test_cosine_annealing_invalid(total, warmup):
    with pytest.raises(ValueError, match='warmup_steps'):
        cosine_annealing(0, total, 1.0, 0.0, warmup)


def test_average_meter_weighted():
    meter = AverageMeter()
    meter.update(2.0, n=3)
    meter.update(torch.tensor(4.0), n=1)
    assert meter.avg == pytest.approx(2.5) and meter.val == 4.0 and meter.count == 4


def test_logger_prints_and_appends(tmp_path, capsys):
    path = tmp_path / 'run' / 'nested' / 'log.txt'
    Logger(str(path)).log('first')
    logger = Logger(str(path))  # a second logger (a resumed run) appends, never truncates
    logger.log('second')
    assert path.read_text() == 'first\nsecond\n'
    assert capsys.readouterr().out == 'first\nsecond\n'


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_set_seed_and_rng_state_reproduce_draws():
    set_seed(7)
    first = draws()
    set_seed(7)
    assert draws() == first
    set_seed(8)
    assert all(a != b for a, b in zip(draws(), first))  # each generator is seeded
    state = rng_state()
    expected = [draws(), draws()]
    draws()
    set_rng_state(state)
    assert [draws(), draws()] == expected
