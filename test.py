"""Linear-probe evaluation of a pre-trained checkpoint (design 6, 9.4), and the papers' tables (design 7).

    python test.py --checkpoint checkpoints/BCL_D/model_2000.pt --prune --test_fullshot \
        --test_100shot --test_50shot --data_folder DATA --model resnet18 --seed 10 --gpus 0 \
        --num_workers 8 --prune_percent 0.9

`--dataset` (default: the checkpoint's, else cifar100) picks the benchmark (data/benchmarks/);
`--protocol` the evaluation: `bcl` (default, design 6) or `sdclr` (design 9.4, eval_sdclr.py: a linear
layer trained on the frozen backbone with augmented views, SGD lr 30, 30 / 100 epochs).
`--test_fewshot` probes SDCLR's five S_b subsets (CIFAR-10-LT's few-shot sets; CIFAR-100-LT has them too).

    python test.py --dataset cifar10 --protocol sdclr --checkpoint checkpoints/SDCLR_C10/model.pt --prune \
        --test_fullshot --test_fewshot --data_folder DATA

Design 6's protocol makes one feature pass: the features of every train image some probe needs (the
union of the train list and the probe subsets of the split's family) and of the test images are
extracted once; the full-shot probe and each group's five probes (trained together,
eval_cifar.train_probes) reuse them. Prints a table and a markdown
row in design 7's layout next to the published numbers, and writes every number as JSON to
--output (default: <checkpoint without extension>_results.json beside the checkpoint; never the
checkpoint itself or a .pt), atomically, with the checkpoint's epoch and mid-epoch progress.

On several GPUs (issue 23), torchrun splits the feature pass; rank 0 alone trains the probes and
writes the results, which equal the one-process run's:

    torchrun --nproc_per_node 4 test.py --checkpoint checkpoints/BCL_I/model.pt --dataset imagenet_lt \
        --test_100shot --data_folder DATA --num_workers 8

Each rank (NCCL, cuda:LOCAL_RANK; gloo on CPU) extracts a contiguous shard of the train pool and of the
test set with its own --num_workers loader workers; rank 0 gathers the shards in order
(distributed.Distributed.gather_shards), so its features are those of one process, row for row; the other
ranks then exit 0. `--protocol sdclr` has no feature pass to split: it runs in one process (more than
one rank is refused). Without torchrun no process group is created.

Opt-in speed flags (issue 6) act on the feature pass only: `--amp bf16` (bfloat16 autocast;
features, probe weights and logits stay float32), `--channels_last`, `--compile`. Without them
the evaluation is the faithful float32 path.

    python test.py --table results/*.json

prints design 7's table from several results files: one table per dataset and protocol (never
mixed), one row per method, each cell the mean +- population std over the files of that method
(e.g. the five splits).
"""
import json
import numbers
import os

import numpy as np
import torch
from torch.utils.data import Subset

import checkpoint as checkpoint_files
from data.benchmarks import BENCHMARKS, DEFAULT, benchmark_of, class_groups, get_benchmark
from distributed import from_environment, launched_world_size
from eval_cifar import PROBE_EPOCHS, extract_features, group_accuracy, probe_accuracy, train_probes
from eval_sdclr import FEW_SHOT as SDCLR_FEW_SHOT, FULL_SHOT as SDCLR_FULL_SHOT, evaluation_features, sdclr_probe
from models import build_model, load_pretrained
from preemption import loader_worker_death
from utils import ArgumentParser, InputError, compile_model, fail, int_in, set_cudnn, set_seed

METHODS = ('SimCLR', 'SDCLR', 'BCL-I', 'BCL-D')
PUBLISHED = {'SimCLR': (50.7, 46.3, 42.4), 'SDCLR': (55.0, 49.7, 45.6),  # design 7: full, 100, 50-shot
             'BCL-I': (55.7, 50.1, 45.8), 'BCL-D': (58.7, 52.6, 48.7)}
PROBE_GROUPS = ('100shot', '50shot', 'fewshot')  # the subset groups (data.benchmarks: Benchmark.probe_sets)
GROUP_NAMES = {'fullshot': 'full-shot', '100shot': '100-shot', '50shot': '50-shot', 'fewshot': 'few-shot'}
PROTOCOL_GROUPS = {'bcl': ('fullshot',) + PROBE_GROUPS, 'sdclr': ('fullshot', 'fewshot')}
FULLSHOT_KEYS = ('top1', 'top5', 'many', 'medium', 'few', 'std')


def get_parser():
    parser = ArgumentParser(description='Linear-probe evaluation of a BCL/SDCLR checkpoint '
                                                 '(design 6, 9.4), or the papers\' tables from results files.')
    parser.add_argument('--checkpoint', default='', help='checkpoint to evaluate (ours, or a published one)')
    parser.add_argument('--prune', action='store_true', help='the checkpoint holds an SDCLR model (SDCLR, BCL-D)')
    parser.add_argument('--test_fullshot', action='store_true', help='probe on the train list (+ Many/Medium/Few)')
    parser.add_argument('--test_100shot', action='store_true', help='probes on the five 100-shot subsets')
    parser.add_argument('--test_50shot', action='store_true', help='probes on the five 50-shot subsets')
    parser.add_argument('--test_fewshot', action='store_true', help="probes on SDCLR's five few-shot subsets S_b")
    parser.add_argument('--data_folder', default='',
                        help="folder holding torchvision's cifar-100-python/ (cifar10: cifar-10-batches-py/)")
    parser.add_argument('--dataset', default=None, choices=sorted(BENCHMARKS),
                        help=f"the benchmark; default: the checkpoint's, else {DEFAULT}")
    parser.add_argument('--protocol', default='bcl', choices=sorted(PROTOCOL_GROUPS),
                        help='bcl: design 6 (linear probes on frozen features); sdclr: design 9.4 (SDCLR\'s '
                             'linear layer on augmented views, SGD lr 30)')
    parser.add_argument('--save_dir', default='', help='accepted as published, unused (see --output)')
    parser.add_argument('--model', default=None, choices=['resnet18', 'resnet50'],
                        help="network; default: the checkpoint's, else the benchmark's (CIFAR: resnet18)")
    parser.add_argument('--seed', type=int_in(0, 2 ** 32 - 1), default=10,
                        help='seed of the probes (init and batch order)')
    parser.add_argument('--gpus', default='0', help="CUDA device id (first of a comma list), or 'cpu'")
    parser.add_argument('--num_workers', type=int_in(0), default=8, help='feature-extraction loader workers')
    parser.add_argument('--prune_percent', type=float, default=0,
                        help='accepted for compatibility; no effect: evaluation uses the dense branch')
    parser.add_argument('--trainSplit', default=None,
                        help="pre-training split D_i (its family's train list and shot subsets are probed, "
                             "its class counts define Many/Medium/Few); default: the checkpoint's, "
                             "else the benchmark's split 1")
    parser.add_argument('--output', default=None,
                        help='results JSON; default: <checkpoint without extension>_results.json')
    parser.add_argument('--probe_epochs', type=int_in(1), default=PROBE_EPOCHS,
                        help="epochs of each linear probe (design 6's; --protocol sdclr trains its published 30 / 100)")
    # Speed (issue 6): opt-in; the defaults are the faithful float32 path.
    parser.add_argument('--amp', default='none', choices=['none', 'bf16'],
                        help='bf16 autocast for feature extraction (features and probes stay float32)')
    parser.add_argument('--channels_last', action='store_true',
                        help='channels-last memory format for feature extraction')
    parser.add_argument('--compile', action='store_true', help='torch.compile the feature extractor')
    parser.add_argument('--cudnn_benchmark', action='store_true',
                        help='fastest cuDNN kernels, not bit-reproducible (default: deterministic, as published)')
    parser.add_argument('--tf32', action='store_true',
                        help='TF32 tensor cores for float32 convolutions and matmuls on CUDA (default: off, exact float32)')
    parser.add_argument('--table', nargs='+', metavar='RESULTS', default=None,
                        help='print the design 7 table from these results files and exit')
    return parser


def read_checkpoint(path):
    if not path:
        raise InputError('no checkpoint given: pass --checkpoint PATH')
    return checkpoint_files.load(path)


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def training_progress(checkpoint):
    """{'epoch': the last finished pre-training epoch, 'progress': for a checkpoint written mid-epoch
    (a preempted run), the steps done of the next epoch}; null where the checkpoint does not say
    (published checkpoints, bare state dicts)."""
    if not isinstance(checkpoint, dict):
        return {'epoch': None, 'progress': None}
    partial = checkpoint.get('progress')
    return {'epoch': _int_or_none(checkpoint.get('epoch')),
            'progress': _int_or_none(partial.get('step')) if isinstance(partial, dict) else None}


def mean_std(values):
    """(mean, population std) of a list; std over the 5 subsets (or the runs) uses numpy's default."""
    return float(np.mean(values)), float(np.std(values))


def evaluation_inputs(args, checkpoint):
    """(benchmark, pre-training split, network) of the evaluation: the flags, else what the checkpoint
    recorded, else the defaults; a split of another benchmark is refused."""
    saved = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    saved = saved if isinstance(saved, dict) else {}
    name = args.dataset or saved.get('dataset') or DEFAULT
    benchmark = get_benchmark(name) if name in BENCHMARKS else None
    if benchmark is None:
        raise InputError(f'{args.checkpoint} was trained on --dataset {name}, which this version does not know: '
                         f'pass --dataset (one of {", ".join(sorted(BENCHMARKS))})')
    same = saved.get('dataset', DEFAULT) == benchmark.name
    if saved and not same and not args.trainSplit:
        raise InputError(f'{args.checkpoint} was pre-trained on --dataset {saved.get("dataset", DEFAULT)}, not '
                         f'{benchmark.name}: drop --dataset, or pass --trainSplit (a {benchmark.title} D_i, whose class '
                         f'counts give Many/Medium/Few) to evaluate it on {benchmark.title}')
    train_split = args.trainSplit or (saved.get('trainSplit') if same else None) or benchmark.default_split
    owner = benchmark_of(os.path.normpath(train_split))
    if owner is not None and owner is not benchmark:
        raise InputError(f'--trainSplit {train_split} is a {owner.title} split, not {benchmark.title}: pass '
                         f'--dataset {owner.name}, or a {benchmark.title} split')
    return benchmark, train_split, args.model or saved.get('model') or benchmark.defaults(args.prune)['model']


def wanted_groups(args, benchmark):
    """The probe groups asked for, each checked against the benchmark and the protocol."""
    groups = [g for g, flag in (('fullshot', args.test_fullshot), ('100shot', args.test_100shot),
                                ('50shot', args.test_50shot), ('fewshot', args.test_fewshot)) if flag]
    if not groups:
        raise InputError('nothing to evaluate: pass at least one of --test_fullshot --test_100shot --test_50shot '
                         '--test_fewshot')
    if args.protocol not in benchmark.protocols:
        raise InputError(f'{benchmark.title} has no --protocol {args.protocol}: use one of {", ".join(benchmark.protocols)}')
    full_shot = getattr(benchmark, 'probe_lists', {'fullshot': None})  # CIFAR: always (its train list)
    for group in groups:
        if group == 'fullshot' and group not in full_shot:
            have = ' '.join(f'--test_{g}' for g in benchmark.probe_sets)
            raise InputError(f'{benchmark.title} has no full-shot list: its probe sets are {have}')
        if group != 'fullshot' and group not in benchmark.probe_sets:
            have = ' '.join(f'--test_{g}' for g in benchmark.probe_sets)
            raise InputError(f'{benchmark.title} has no {GROUP_NAMES[group]} subsets: its probe sets are {have}')
        if group not in PROTOCOL_GROUPS[args.protocol]:
            have = ' '.join(f'--test_{g}' for g in PROTOCOL_GROUPS[args.protocol])
            raise InputError(f'--protocol {args.protocol} probes {have} (design 9.4), not --test_{group}')
    return groups


def evaluate(args, output):
    """Every requested probe of the checkpoint -> the results dict (main writes it to `output`); None on
    the ranks other than 0 of a torchrun job, which only extract their shards of the features."""
    checkpoint = read_checkpoint(args.checkpoint)
    benchmark, train_split, network = evaluation_inputs(args, checkpoint)
    groups = wanted_groups(args, benchmark)
    check_writable(output)
    check_world(args)
    # published checkpoints record no method: only the family follows from --prune
    method = checkpoint.get('method', 'unknown') if isinstance(checkpoint, dict) else 'unknown'
    trained = training_progress(checkpoint)
    del checkpoint

    dist = from_environment(args.gpus)  # one process, or this rank of a torchrun job (the process group)
    try:
        return evaluate_on(dist, args, benchmark, train_split, network, groups,
                           {'method': method, 'model': 'SDCLR' if args.prune else 'SimCLR', 'network': network,
                            'dataset': benchmark.name, 'protocol': args.protocol,
                            'checkpoint': os.path.abspath(args.checkpoint), **trained, 'split': train_split,
                            'seed': args.seed})
    finally:
        dist.close()


def check_world(args):
    """Refuse, on every rank before any work, what a torchrun job of several processes cannot share:
    SDCLR's protocol trains its linear layers on augmented views through the backbone (no feature pass
    to split), so it runs in one process only."""
    world_size = launched_world_size()
    if args.protocol == 'sdclr' and world_size is not None and world_size > 1:
        raise InputError(f'--protocol sdclr runs in one process, not {world_size}: run it with python test.py '
                         f'(or torchrun --nproc_per_node 1)')


def evaluate_on(dist, args, benchmark, train_split, network, groups, results):
    """evaluate's work on `dist` (distributed.Distributed): `results` holds the checkpoint's fields."""
    device = dist.device
    set_cudnn(device, args.cudnn_benchmark, args.tf32)
    set_seed(args.seed)
    # by path, so that its errors name the file (it reads the file again: well under a second)
    model = build_model(args.prune, network, benchmark.num_classes, **benchmark.model_options(args.prune))
    model = load_pretrained(model, args.checkpoint)
    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    if args.compile:
        compile_model(model, 'features')

    # every split first, so that a missing one fails before the slow part
    sets = benchmark.evaluation_sets(args.data_folder, train_split, groups, args.protocol, args.seed)
    test_set, class_counts = sets['test_set'], sets['class_counts']
    results.update({'probe_epochs': args.probe_epochs if args.protocol == 'bcl' else None, 'amp': args.amp,
                    **{group: None for group in ('fullshot',) + PROBE_GROUPS}})
    speed = {'amp': args.amp, 'channels_last': args.channels_last}
    if args.protocol == 'sdclr':
        results.update(sdclr_probes(model, sets, benchmark.num_classes, benchmark.groups, device, args.seed,
                                    args.num_workers, **speed))
        return results

    # design 6: one feature pass (issue 5.2) over the union of every needed train index, and the test set
    index_sets = sets['index_sets']
    pool = np.unique(np.concatenate([s for group_sets in index_sets.values() for s in group_sets]))
    if dist.enabled and dist.world_size > min(len(pool), len(test_set)):
        raise InputError(f'{len(pool)} train and {len(test_set)} test images cannot be shared by {dist.world_size} '
                         f'processes: start at most {min(len(pool), len(test_set))} (torchrun --nproc_per_node)')
    if dist.is_main:
        shared = f' (split over {dist.world_size} processes)' if dist.enabled else ''
        print(f'extracting features of {len(pool)} train and {len(test_set)} test images on {device}{shared}',
              flush=True)
    train = sharded_features(model, Subset(sets['train_set'], pool), dist, num_workers=args.num_workers,
                             desc='features (train)', **speed)
    test = sharded_features(model, test_set, dist, num_workers=args.num_workers, desc='features (test)', **speed)
    if not dist.is_main:
        return None
    (train_features, train_labels), (test_features, test_labels) = train, test
    results.update(run_probes(train_features, train_labels, test_features, test_labels, pool, index_sets,
                              args.probe_epochs, args.seed, class_counts, num_class=benchmark.num_classes,
                              groups_rule=benchmark.groups))
    return results


def sharded_features(model, dataset, dist, desc=None, **options):
    """(features, labels) of `dataset`, in its order, as extract_features gives them in one process; under
    torchrun each rank extracts its contiguous shard (Distributed.shard) on its device with its own loader
    workers, and rank 0 receives every shard in rank order (Distributed.gather_shards): the same rows in
    the same order. The other ranks get None (rank 0 alone trains the probes); the progress bar is
    rank 0's, over its shard."""
    if not dist.enabled:
        return extract_features(model, dataset, dist.device, desc=desc, **options)
    shard = dist.shard(len(dataset))
    desc = f'{desc} shard 1/{dist.world_size}' if desc and dist.is_main else None
    features, labels = extract_features(model, Subset(dataset, shard), dist.device, desc=desc, **options)
    features, labels = (dist.gather_shards(t, len(dataset)) for t in (features, labels))
    return (features, labels) if dist.is_main else None


def sdclr_probes(model, sets, num_class, groups_rule, device, seed, num_workers=0, amp='none', channels_last=False):
    """Design 9.4's SDCLR protocol for every probe group -> {group: results}: one linear layer per train set
    (the full-shot train list, or each few-shot set), trained on augmented views of the frozen backbone and
    selected on the val list (eval_sdclr.sdclr_probe with the benchmark's sets['sdclr'] protocol)."""
    protocol = sets['sdclr']
    features = evaluation_features(model, sets['val_set'], sets['test_set'], device, protocol, amp=amp,
                                   channels_last=channels_last, num_workers=num_workers)  # once for every group
    results = {}
    for group, train_sets in sets['train_sets'].items():
        schedule = protocol.full_shot if group == 'fullshot' else protocol.few_shot
        print(f'training {len(train_sets)} {group} linear layer(s) for {schedule["epochs"]} epochs (SDCLR protocol)',
              flush=True)
        probes = [sdclr_probe(model, train, None, None, num_class, device, seed=seed, protocol=protocol, amp=amp,
                              channels_last=channels_last, num_workers=num_workers,
                              desc=f'{group} {k}/{len(train_sets)}', features=features, **schedule)
                  for k, train in enumerate(train_sets, start=1)]
        selected = f'val_{protocol.select}'
        results[group] = {**group_results(group, probes, sets['class_counts'], groups_rule),
                          'best_epoch': [p['best_epoch'] for p in probes], selected: [p[selected] for p in probes]}
    return results


def group_results(group, accuracies, class_counts, groups_rule):
    """One probe group's results: the full-shot probe's numbers with Many/Medium/Few (and per class, for
    plot.py), or a subset group's top-1 per subset and their mean ± std."""
    if group == 'fullshot':
        acc = accuracies[0]
        return {'top1': acc['top1'], 'top5': acc['top5'], **group_accuracy(acc['per_class'], class_counts, groups_rule),
                'per_class': np.asarray(acc['per_class']).tolist(),
                'class_counts': np.asarray(class_counts).tolist()}  # of D_i, for plot.py
    top1 = [a['top1'] for a in accuracies]
    mean, std = mean_std(top1)
    result = {'top1': top1, 'mean': mean, 'std': std, 'top5': [a['top5'] for a in accuracies]}
    if len(accuracies) == 1 and class_counts is not None:  # one probe list (design 9.4): its Many/Medium/Few too
        result['groups'] = group_accuracy(accuracies[0]['per_class'], class_counts, groups_rule)
    return result


def run_probes(train_features, train_labels, test_features, test_labels, pool, index_sets, probe_epochs, seed,
               class_counts=None, verbose=True, num_class=100, groups_rule=class_groups):
    """Every probe group on the one feature pass -> {group: results}.

    `pool`: the sorted train indices whose features are the rows of `train_features`;
    `index_sets`: {group: [index arrays into the train set]}, each group's probes trained together
    (eval_cifar.train_probes); `class_counts` (D_i) gives the full-shot Many/Medium/Few groups.
    """
    results = {}
    for group, sets in index_sets.items():
        if verbose:
            print(f'training {len(sets)} {group} probe(s) for {probe_epochs} epochs', flush=True)
        rows = [np.searchsorted(pool, s) for s in sets]  # positions of each subset in the feature pool
        weight, bias = train_probes(train_features, train_labels, rows, num_class, probe_epochs, seed,
                                    desc=f'{group} probes' if verbose else None)
        results[group] = group_results(group, probe_accuracy(weight, bias, test_features, test_labels, num_class),
                                       class_counts, groups_rule)
    return results


def default_output(checkpoint):
    return f'{os.path.splitext(checkpoint)[0]}_results.json'


def check_output(output, checkpoint):
    """Refuse, before any work, a results path that would replace a checkpoint: the checkpoint
    itself (by any name: a link, ../), a checkpoint's file name or an existing torch file."""
    same = os.path.realpath(output) == os.path.realpath(checkpoint)
    if not same and os.path.exists(output) and os.path.exists(checkpoint):
        same = os.path.samefile(output, checkpoint)  # a hard link
    if same:
        raise InputError(f'--output {output} is the checkpoint {checkpoint}: writing the results there would '
                         f'destroy it; pass another path (default: {default_output(checkpoint)})')
    if output.lower().endswith(('.pt', '.pth', '.tar', '.ckpt')):
        extension = os.path.splitext(output)[1].lower()
        raise InputError(f'--output {output} ends in {extension}, the name of a checkpoint: pass a .json path for '
                         f'the results')
    if os.path.isfile(output):
        with open(output, 'rb') as f:
            head = f.read(4)
        if head == b'PK\x03\x04' or head[:1] == b'\x80':  # torch.save's zip, or a legacy pickle
            raise InputError(f'--output {output} holds a saved torch file (a checkpoint?), not results: pass '
                             f'another path')


def check_writable(path):
    """Fail before the slow part if the results file cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise InputError(f'cannot create the folder of {path} ({e}): pass a writable --output') from None
    if not os.access(folder, os.W_OK):
        raise InputError(f'cannot write results to {path} (folder not writable): pass a writable --output')


def write_json(obj, path):
    """A temp file beside `path` (named for this process, so two runs never share one), fsynced,
    then renamed over it: a crash or a Ctrl-C leaves the old file or the new one, never half, and
    never a stray temp file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise InputError(f'cannot write results to {path} ({error}): pass a writable --output') from None
        raise


def cell(values):
    """'-' for nothing, 'x' for one value, 'mean ± std' for several."""
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    mean, std = mean_std(values)
    return f'{mean:.2f} ± {std:.2f}'


def table_groups(benchmark_name, protocol, results_list=()):
    """The probe-group columns of a table: design 7's full-shot, 100-shot, 50-shot on CIFAR-100-LT with
    design 6's protocol (few-shot added when a file has it); otherwise full-shot and the benchmark's
    groups under the protocol."""
    benchmark = get_benchmark(benchmark_name)
    groups = [g for g in PROTOCOL_GROUPS[protocol] if g == 'fullshot' or g in benchmark.probe_sets]
    if (benchmark_name, protocol) == (DEFAULT, 'bcl') and not any(r.get('fewshot') for r in results_list):
        groups.remove('fewshot')
    return groups


def markdown_table(rows, groups, source='fullshot'):
    """rows: [(label, cells)] -> a table of the groups' top-1 and the Many/Medium/Few/Std of `source`
    (groups_source; named in the header when it is not the full-shot probe)."""
    names = ['Many', 'Medium', 'Few', 'Std']
    columns = [GROUP_NAMES[g] for g in groups] + (names if source in ('fullshot', None) else
                                                  [f'{name} ({GROUP_NAMES[source]})' for name in names])
    lines = ['| method | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
    return '\n'.join(lines + [f'| {label} | ' + ' | '.join(cells) + ' |' for label, cells in rows])


def published_rows(methods, groups):
    """Design 7's numbers (CIFAR-100-LT, design 6's protocol) in the table's columns."""
    return [(f'{m} (published)', [f'{dict(zip(("fullshot", "100shot", "50shot"), PUBLISHED[m]))[g]:.1f}'
                                  if g != 'fewshot' else '-' for g in groups] + ['-'] * 4) for m in methods]


def has_published(results):
    return (results.get('dataset', DEFAULT), results.get('protocol', 'bcl')) == (DEFAULT, 'bcl')


def candidate_methods(results):
    """The published rows to compare with: the recorded method, else both of the model's family."""
    if not has_published(results):
        return []
    if results['method'] in PUBLISHED:
        return [results['method']]
    return ['SDCLR', 'BCL-D'] if results['model'] == 'SDCLR' else ['SimCLR', 'BCL-I']


def groups_source(results_list, groups):
    """The probe group whose Many/Medium/Few/Std a table shows, one for all its rows: the full-shot probe's
    (design 6) when a file has one, else the first of `groups` whose single probe list carries them in
    `result[group]['groups']` (ImageNet-LT, Places-LT: 100-shot only, design 9.4), else None."""
    if any(r['fullshot'] for r in results_list):
        return 'fullshot'
    return next((g for g in groups if g != 'fullshot' and any((r.get(g) or {}).get('groups') for r in results_list)),
                None)


def result_cells(results_list, groups, source='fullshot'):
    """The cells of one method over several results files (a subset group's value of a file is its
    mean over the five subsets; a single file shows its subsets' mean ± std instead); Many/Medium/Few/Std
    are `source`'s (groups_source)."""
    full = [r['fullshot'] for r in results_list if r['fullshot']]
    cells = []
    for group in groups:
        if group == 'fullshot':
            cells.append(cell([f['top1'] for f in full]))
            continue
        shots = [r[group] for r in results_list if r.get(group)]
        cells.append(cell(shots[0]['top1']) if len(results_list) == 1 and shots
                     else cell([s['mean'] for s in shots]))
    if source == 'fullshot':
        grouped = full
    else:  # None: no file has Many/Medium/Few
        grouped = [r[source]['groups'] for r in results_list if source and (r.get(source) or {}).get('groups')]
    return cells + [cell([g[k] for g in grouped]) for k in ('many', 'medium', 'few', 'std')]


def trained_note(results):
    """' (pre-trained N epochs[ and S steps])', or '' when the checkpoint did not record it."""
    epoch, step = results.get('epoch'), results.get('progress')
    if epoch is None:
        return ''
    return f' (pre-trained {epoch} epochs' + (f' and {step} steps of epoch {epoch + 1})' if step is not None else ')')


def table_title(dataset, protocol):
    return f'{get_benchmark(dataset).title}, ' + ('design 6 linear probe' if protocol == 'bcl' else
                                                   "SDCLR's linear evaluation (design 9.4)")


def print_results(results):
    full, label = results['fullshot'], results['method']
    if label == 'unknown':
        label = f'unknown ({results["model"]} family)'
    dataset, protocol = results['dataset'], results['protocol']
    epochs = (f'probe epochs {results["probe_epochs"]}' if protocol == 'bcl'
              else f'{SDCLR_FULL_SHOT["epochs"]} / {SDCLR_FEW_SHOT["epochs"]} epochs (full / few-shot)')
    print(f'\ncheckpoint {results["checkpoint"]}{trained_note(results)}\n{table_title(dataset, protocol)}\n'
          f'method {label}, split {results["split"]}, seed {results["seed"]}, {epochs}')
    if full:
        print(f'full-shot  top-1 {full["top1"]:6.2f}  top-5 {full["top5"]:6.2f}\n'
              f'           Many {full["many"]:6.2f}  Medium {full["medium"]:6.2f}  Few {full["few"]:6.2f}  '
              f'Std {full["std"]:6.2f}')
    for group in PROBE_GROUPS:
        if results[group]:
            r = results[group]
            print(f'{GROUP_NAMES[group]:<10} top-1 ' + ' '.join(f'{a:6.2f}' for a in r['top1'])
                  + f'  mean {r["mean"]:.2f} ± {r["std"]:.2f}')
            if 'groups' in r:
                g = r['groups']
                print(f'           Many {g["many"]:6.2f}  Medium {g["medium"]:6.2f}  Few {g["few"]:6.2f}  '
                      f'Std {g["std"]:6.2f}')
    groups = table_groups(dataset, protocol, [results])
    source = groups_source([results], groups)
    print('\n' + markdown_table([(f'{label} (this checkpoint)', result_cells([results], groups, source))]
                                + published_rows(candidate_methods(results), groups), groups, source))


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _per_class_problem(full, num_classes):
    """What is wrong with a full-shot result's per_class / class_counts (plot.py draws them): both
    absent (older results), or one accuracy and one image count per class."""
    if 'per_class' not in full and 'class_counts' not in full:
        return None
    per_class, counts = full.get('per_class'), full.get('class_counts')
    if not (isinstance(per_class, list) and len(per_class) == num_classes and all(map(_is_number, per_class))):
        return f'"fullshot" "per_class" must be a list of {num_classes} numbers'
    if not (isinstance(counts, list) and len(counts) == num_classes
            and all(_int_or_none(c) is not None and c >= 0 for c in counts)):
        return f'"fullshot" "class_counts" must be a list of {num_classes} integers >= 0'
    return None


def _results_problem(results):
    """What is wrong with a parsed results file (None if nothing): every field print_table reads.
    Files of older versions have no dataset and protocol: CIFAR-100-LT with design 6's."""
    if not isinstance(results, dict):
        return 'not a JSON object'
    if results.get('dataset', DEFAULT) not in BENCHMARKS or results.get('protocol', 'bcl') not in PROTOCOL_GROUPS:
        return (f'"dataset" must be one of {", ".join(sorted(BENCHMARKS))} and "protocol" one of '
                f'{", ".join(sorted(PROTOCOL_GROUPS))}')
    sdclr = results.get('protocol') == 'sdclr'
    for key, kind in (('method', str), ('model', str), ('probe_epochs', type(None) if sdclr else int)):
        if not isinstance(results.get(key), kind) or isinstance(results.get(key), bool):
            return f'"{key}" must be a {kind.__name__}, got {results.get(key)!r}'
    for key in ('epoch', 'progress'):  # absent from results of older versions
        if results.get(key) is not None and _int_or_none(results[key]) is None:
            return f'"{key}" must be null or an integer, got {results[key]!r}'
    full = results.get('fullshot', 'missing')
    if full is not None:
        if not isinstance(full, dict) or not all(_is_number(full.get(k)) for k in FULLSHOT_KEYS):
            return f'"fullshot" must be null or hold numbers {", ".join(FULLSHOT_KEYS)}'
        problem = _per_class_problem(full, get_benchmark(results.get('dataset', DEFAULT)).num_classes)
        if problem:
            return problem
    for group in PROBE_GROUPS:
        shots = results.get(group, 'missing' if group != 'fewshot' else None)  # few-shot: newer files only
        if shots is None:
            continue
        if (not isinstance(shots, dict) or not _is_number(shots.get('mean')) or not isinstance(shots.get('top1'), list)
                or not shots['top1'] or not all(_is_number(v) for v in shots['top1'])):
            return f'"{group}" must be null or hold "top1" (a list of numbers) and "mean" (a number)'
        grouped = shots.get('groups')  # one probe list's Many/Medium/Few (design 9.4); newer files only
        if grouped is not None and not (isinstance(grouped, dict) and all(_is_number(grouped.get(k))
                                                                           for k in FULLSHOT_KEYS[2:])):
            return f'"{group}" "groups" must hold numbers {", ".join(FULLSHOT_KEYS[2:])}'
    return None


def read_results(path):
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f'cannot read results file {path} ({e}): pass files written by test.py') from None
    problem = _results_problem(results)
    if problem:
        raise InputError(f'{path} is not a test.py results file ({problem}): pass files written by test.py')
    return results


def print_table(paths):
    """One table per dataset and protocol (results of different benchmarks or protocols are never
    merged): one row per method and probe length (SimCLR, SDCLR, BCL-I, BCL-D, then others; results of
    different --probe_epochs are never merged either), cells mean ± std over the files of a row, then
    design 7's published numbers under CIFAR-100-LT's design-6 table."""
    tables = {}
    for path in paths:
        results = read_results(path)
        label = results['method'] if results['method'] != 'unknown' else f'unknown ({results["model"]} family)'
        table = tables.setdefault((results.get('dataset', DEFAULT), results.get('protocol', 'bcl')), {})
        table.setdefault((label, results['probe_epochs']), []).append(results)
    order = sorted(tables, key=lambda key: (list(BENCHMARKS).index(key[0]), sorted(PROTOCOL_GROUPS).index(key[1])))
    for n, (dataset, protocol) in enumerate(order):
        rows_of = tables[(dataset, protocol)]
        keys = sorted(rows_of, key=lambda key: (METHODS.index(key[0]) if key[0] in METHODS else len(METHODS), key[0],
                                                -(key[1] or 0)))
        groups = table_groups(dataset, protocol, [r for files in rows_of.values() for r in files])
        source = groups_source([r for files in rows_of.values() for r in files], groups)
        rows = []
        for label, epochs in keys:
            files = rows_of[(label, epochs)]
            notes = ([f'n={len(files)}'] if len(files) > 1 else []) + \
                ([f'{epochs} probe epochs'] if epochs not in (PROBE_EPOCHS, None) else [])
            rows.append((f'{label} ({", ".join(notes)})' if notes else label, result_cells(files, groups, source)))
        published = published_rows([m for m in METHODS if any(m == label for label, _ in rows_of)], groups) \
            if (dataset, protocol) == (DEFAULT, 'bcl') else []
        if len(order) > 1:
            print(('\n' if n else '') + f'{table_title(dataset, protocol)}\n')
        print(markdown_table(rows + published, groups, source))


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        if args.table:
            print_table(args.table)
            return None
        output = args.output or default_output(args.checkpoint)
        check_output(output, args.checkpoint)
        results = evaluate(args, output)
        if results is None:  # a rank other than 0 of a torchrun job: its shards are with rank 0, which reports
            return None
        print_results(results)
        write_json(results, output)  # the only write, and atomic: an interrupt before its rename writes nothing
    except InputError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail('interrupted: no results were written', code=130)
    except RuntimeError as e:
        if not loader_worker_death(e):
            raise
        fail(f'a data loader worker died ({loader_worker_death(e)}), most likely killed for lack of memory: lower '
             f'--num_workers (now {args.num_workers}) or free memory; no results were written')
    print(f'\nresults written to {output}')
    return results


if __name__ == '__main__':
    main()
