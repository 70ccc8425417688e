"""test.py under torchrun (issue 23): the feature pass split over the ranks, gathered on rank 0.

On CPU (gloo). The claim the design rests on: a rank's shard of the features equals, bit for
bit, the same rows of a one-process pass, although the batches are cut elsewhere (rank 1's first
batch starts at its shard) and each torchrun process runs one thread (OMP_NUM_THREADS=1) against
the plain run's two. Measured on this machine's CPU (oneDNN convolutions, eval-mode BatchNorm): 301
images of a ResNet-18 in one pass, in two shards and in batches of 7, with 1 and 2 threads, all
identical (largest difference 0.0); so the tests below ask for exact equality, and the probes
trained on rank 0 on those features give the one-process results file number for number.
"""
import contextlib
import io
import json
import multiprocessing
import os

import pytest
import torch
from torch.utils.data import TensorDataset

from distributed import Distributed, from_environment, launched_world_size, shares
from eval_cifar import extract_features
from models import SimCLR
from test_test_script import checkpoints, expect_error, test_script, tiny  # noqa: F401 (fixtures)

ROWS = 7  # over 2 ranks: shards of 4 and 3 rows (over 3: 3, 2, 2)


def images_and_model():
    """A tiny dataset of ROWS images and a seeded ResNet-18 SimCLR, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(ROWS, 3, 32, 32, generator=generator)
    torch.manual_seed(0)
    return TensorDataset(images, torch.arange(ROWS) * 3 % 5), SimCLR()


def rank_main(rank, world_size, port, folder):
    """One rank, as torchrun starts it: its shard, the gather of plain rows (float32 and int64), and
    test.py's sharded feature pass of a real model; what it got is saved for the test to read."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1
    dist = from_environment('cpu')
    try:
        shard = dist.shard(ROWS)
        rows = torch.arange(ROWS * 3, dtype=torch.float32).view(ROWS, 3)
        labels = torch.arange(ROWS) * 10
        gathered = [dist.gather_shards(t[shard.start:shard.stop], ROWS) for t in (rows, labels)]
        dataset, model = images_and_model()
        features = test_script.sharded_features(model, dataset, dist, desc='features')
        torch.save({'shard': (shard.start, shard.stop), 'gathered': gathered, 'features': features},
                   os.path.join(folder, f'rank{rank}.pt'))
    finally:
        dist.close()


def launch(world_size, folder):
    """Runs the ranks as separate (spawned) processes and returns their exit codes."""
    from test_distributed import free_port  # here: the spawned ranks need not import train.py
    context, port = multiprocessing.get_context('spawn'), free_port()
    processes = [context.Process(target=rank_main, args=(rank, world_size, port, str(folder)))
                 for rank in range(world_size)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    return [p.exitcode for p in processes]


def test_shards_cover_the_rows_once_in_order():
    for total, world_size in ((7, 2), (7, 3), (8, 4), (2, 3)):
        ranges = [Distributed(torch.device('cpu'), rank, world_size, enabled=True).shard(total)
                  for rank in range(world_size)]
        assert [i for r in ranges for i in r] == list(range(total))
        assert [len(r) for r in ranges] == shares(total, world_size)
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    assert shares(7, 2) == [4, 3] and shares(7, 3) == [3, 2, 2]
    one = Distributed(torch.device('cpu'))  # no process group: the whole set, the tensor itself
    rows = torch.ones(7, 2)
    assert one.shard(7) == range(7) and one.gather_shards(rows, 7) is rows


def test_gather_of_uneven_shards_is_the_one_process_rows(tmp_path):
    """7 rows over 2 gloo processes (shards of 4 and 3): rank 0 gets every row, in order, with its
    dtype; rank 1 gets None. test.py's sharded feature pass of a real ResNet-18 gives rank
    0 the one-process features of the 7 images bit for bit (and labels), rank 1 None."""
    world_size = 2
    assert launch(world_size, tmp_path) == [0] * world_size
    saved = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=False) for rank in range(world_size)]
    bounds = [0] + [sum(shares(ROWS, world_size)[:r + 1]) for r in range(world_size)]
    assert [s['shard'] for s in saved] == list(zip(bounds[:-1], bounds[1:]))
    rows, labels = saved[0]['gathered']
    assert rows.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(rows, torch.arange(ROWS * 3, dtype=torch.float32).view(ROWS, 3))
    assert torch.equal(labels, torch.arange(ROWS) * 10)
    dataset, model = images_and_model()
    features, targets = extract_features(model, dataset, torch.device('cpu'))  # one process, 2 threads
    assert torch.equal(saved[0]['features'][0], features) and torch.equal(saved[0]['features'][1], targets)
    for other in saved[1:]:
        assert other['gathered'] == [None, None] and other['features'] is None


def test_sdclr_protocol_is_refused_on_several_ranks_before_any_work(tiny, checkpoints, capsys,  # noqa: F811
                                                                  monkeypatch):
    """Rank 0 of a 2-process torchrun job (its variables in the environment) with --protocol sdclr: the
    one-line error, before a process group exists or anything is written."""
    for name, value in (('RANK', '0'), ('LOCAL_RANK', '0'), ('WORLD_SIZE', '2')):
        monkeypatch.setenv(name, value)
    assert launched_world_size() == 2
    before = sorted(os.listdir(checkpoints))
    expect_error(['--checkpoint', str(checkpoints / 'bcl_i.pt'), '--protocol', 'sdclr', '--test_fullshot',
                  '--gpus', 'cpu'], tiny, capsys,
                 '--protocol sdclr runs in one process, not 2: run it with python test.py')
    assert not torch.distributed.is_initialized() and sorted(os.listdir(checkpoints)) == before


@pytest.fixture(scope='module')
def results_files(tiny, checkpoints, tmp_path_factory):  # noqa: F811
    """The BCL-I checkpoint's three probe groups by test.py in one process (in this one: no torchrun
    variables, so no process group) and by `torchrun --nproc_per_node 2 test.py` (one loader worker
    per rank): {'one' | 'two': (results file, stdout)}."""
    from test_distributed import run_script
    folder = tmp_path_factory.mktemp('torchrun_test')
    argv = ['--checkpoint', str(checkpoints / 'bcl_i.pt'), '--test_fullshot', '--test_100shot', '--test_50shot',
            '--data_folder', tiny, '--gpus', 'cpu', '--probe_epochs', '20']
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        test_script.main(argv + ['--num_workers', '0', '--output', str(folder / 'one.json')])
    assert not torch.distributed.is_initialized()
    runs = {'one': (json.loads((folder / 'one.json').read_text()), stdout.getvalue())}
    stdout = run_script('test.py', argv + ['--num_workers', '1', '--output', str(folder / 'two.json')], 2)
    runs['two'] = (json.loads((folder / 'two.json').read_text()), stdout)
    assert sorted(os.listdir(folder)) == ['one.json', 'two.json']  # nothing else, no rank's temp file
    return runs


def test_torchrun_gives_the_one_process_results_exactly(results_files):
    """Every number of the results file (full-shot top-1/top-5, per class, Many/Medium/Few, each
    subset's top-1 and top-5) equal to the plain run's, not merely close."""
    one, two = results_files['one'][0], results_files['two'][0]
    assert two['fullshot']['per_class'] == one['fullshot']['per_class']
    assert [two[g]['top1'] for g in ('100shot', '50shot')] == [one[g]['top1'] for g in ('100shot', '50shot')]
    assert two == one


def test_only_rank_0_reports(results_files):
    one, two = results_files['one'][1], results_files['two'][1]
    assert 'extracting features of' in two and two.count('split over 2 processes') == 1
    assert two.count('results written to') == 1 and two.count('full-shot  top-1') == 1
    assert 'split over' not in one and one.count('results written to') == 1
