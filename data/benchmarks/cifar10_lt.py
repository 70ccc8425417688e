"""CIFAR-10-LT (SDCLR, design 9): SDCLR's split family, recipe (9.2) and evaluation (9.4)."""
from data.benchmarks import Benchmark, Protocol, SplitFamily
from data.cifar100 import CIFAR10

SDCLR = 'https://raw.githubusercontent.com/VITA-Group/SDCLR/f1490fce26e6bb67d2c21b450db5a6e3184e6bc3/split/{name}'
SUBSETS = 'cifar10_imbSub_with_subsets/'

PUBLISHED = {  # design 9.1
    'cifar10/trainIdxList.npy': (SDCLR, '86637b0277a0e19b84866cc236093aaf38c1694d97a72b8c0bbb272eb3ab5926'),
    'cifar10/valIdxList.npy': (SDCLR, 'c386a19bc0e1c7c2e70c8b4e2b54edcfeef5e310b7aade402d163e6bae076825'),
    **{f'{SUBSETS}split{k}_{role}.npy': (SDCLR, sha) for role, shas in (
        ('D_i', ('cad730937a5015a32482e0e04df3400de4c153a16fd6f36e74f7b2c9b87e3232',
                 'dfdabe40ca9a403e4089a98315d9605b4ff12a53b1c79e86fed2b35785c149fa',
                 'a61ab24357043482e0fca31b805d6d07146a1cd07441682cd3a9c609bd8de7f7',
                 '6dd2befff7f5423d70eafe65b1cb21a936d9a4c56e2911169f29e4a2a3908a86',
                 '314488d5f93d221b4c38c3418bad1bea43614645d242dc3e437f910fec9cad8c')),
        ('S_b', ('9b88cb91aaf60279b0b3024a52d455222d5e8b4fe78e283907d00968a8855a0b',
                 '9588b6cc1ff2de2e31edc1f33f4cb52e98d3e8a2a61380dbfd163593ecfce781',
                 'b0ef49b31ccb32344187f37f3528d19a2ae16c2eabe7b8cd7fea8960cc7df79e',
                 '11cb0e7eb75721a44cb72c94453ed3af7c9b1b250b5daa3928c4f96284c59d01',
                 'b7ac94838bb476b6a903db9ac13932a61ef0594e53019d198b6cd769c15ba5e4')))
        for k, sha in enumerate(shas, start=1)},
}

BENCHMARK = Benchmark(
    name='cifar10', title='CIFAR-10-LT', papers='SDCLR', source=CIFAR10,
    # 500 val and 4,500 train a class; D_i from the 4,500 (imbalance 100: 4,500 down to 45, 11,165 in all);
    # S_b: 45 a class of D_i
    splits=SplitFamily('cifar10/trainIdxList.npy', 'cifar10/valIdxList.npy', SUBSETS, 'split{k}_{role}.npy',
                       Protocol(val=500, train=4500, imbalance=100), PUBLISHED),
    default_split=f'{SUBSETS}split1_D_i.npy',
    recipe={'both': {'model': 'resnet18', 'rand_k': 1, 'epochs': 2000, 'batch_size': 512, 'lr': 0.5,
                     'weight_decay': 1e-4, 'temperature': 0.2},
            'simclr': {'prune_percent': 0.0}, 'sdclr': {'prune_percent': 0.9}},  # design 9.2
    probe_sets={'fewshot': 'S_b'},
    protocols=('bcl', 'sdclr'),
)
