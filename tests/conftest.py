import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.synthetic import write_synthetic_cifar100  # noqa: E402

SYNTHETIC_TRAIN_PER_CLASS = 20
SYNTHETIC_TEST_PER_CLASS = 10


@pytest.fixture(scope='session')
def synthetic_cifar(tmp_path_factory):
    """A data folder with `cifar-100-python/{train,test,meta}`: 2,000 train, 1,000 test images."""
    root = tmp_path_factory.mktemp('cifar')
    return str(write_synthetic_cifar100(str(root), SYNTHETIC_TRAIN_PER_CLASS,
                                        SYNTHETIC_TEST_PER_CLASS, seed=0))
