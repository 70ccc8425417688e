"""CIFAR-100-LT (BCL's table, design 1 and 7; SDCLR reports it too): the project's first benchmark."""
from data.benchmarks import Benchmark, Protocol, SplitFamily
from data.cifar100 import CIFAR100

BCL = 'https://raw.githubusercontent.com/MediaBrain-SJTU/BCL/a2342f86fa3e2f8c5efc5b98334126133b0b360b/split/{name}'
SDCLR = 'https://raw.githubusercontent.com/VITA-Group/SDCLR/f1490fce26e6bb67d2c21b450db5a6e3184e6bc3/split/{name}'
SUBSETS = 'cifar100_imbSub_with_subsets/'

PUBLISHED = {  # design 1.1 (BCL's files) and 9.1 (SDCLR's S_b)
    'cifar100/cifar100_trainIdxList.npy': (BCL, '482bb2cd15900c6500c77c17212fd1fc73725b821d6dab631941e4960956afda'),
    'cifar100/cifar100_valIdxList.npy': (BCL, 'd0654dcc18b91345da49ba895a499641ff9d11757245ae79759dc45e9b83ec6d'),
    **{f'{SUBSETS}cifar100_split{k}_{role}.npy': (url, sha) for url, role, shas in (
        (BCL, 'D_i', ('109b4ec343997dc34e6b9f85b66f3f0f486d796cc109abadaa3ba645200778e2',
                      '813b59c6741bedc96e8ca0c64beb3457fda2077c97f44d74dc1a93f9501e7679',
                      '7bb5c112bc3e39a189968fdde51a6365e85f0108ec03485de21e272a9084fbbb',
                      '4de1ed95764e23d52e539c53c2e45f1d99820ae49be3a49a6f822fa0cd220d69',
                      '9282893b3f49480603e93424c7ba54918202888ce42c6871e9ec3fa5b8b7e20b')),
        (BCL, 'test_100shot', ('dd1ae1b5ade957a3b54380181a02413468589bf0bedddab49e64f31aea10474f',
                               '927118e8ab9dd13d7120bd10dfac62d4f86b76ff5013ee35f9a5dbebfbd91d79',
                               '27f016592f2be4ad29d66483816bf50d4c3088c7289a0f643edb68c634fee2b9',
                               '605172c374e3eb4a6d0bc4be1f8716ee8add3b6502bec86117104e728172aa4b',
                               '4287082e96b019ce943707ac3a2bfe320ec8ecfb59e4a0319e0ceac39956760a')),
        (BCL, 'test_50shot', ('83cc12a78fc6128a18b6ad9663247059c35efeab7d0552c2a38e42301ef5c404',
                              '8a38a424320a5f2a509fae7390bb30229c14099a3aab7534c392b34aa7d40e6a',
                              '3ceb0af4e531087d02872852c013e7d50069002f0166038ceedefae61b2eef63',
                              '36c3ea8108dc0a510d32414cbb2a9354c029ce56c499cd697e34b2c1184ea306',
                              '866606edafbc606925133afbaa97492613666960318bc7402e00e556d52bb985')),
        (SDCLR, 'S_b', ('8ce44ccbabbed73aef99668f5fb4a26004df454d3ca3633e092aa8fadcee4e82',
                        '27fb63d00fde490abe9152cf2e2d4f36ea890b62b9f45e249416a5d2b0ce36eb',
                        'e7678d95ab8cba483d7cb9d7d56363cc237ccbeea0e5ee2aa7e622c585672020',
                        'fa3b4eed3a909878f3356dc5722f2ae970f8596b5705543d57b5aa73fcc431f1',
                        '18eaa14c445c22bf0023166392148118723c178a143f50ca706c7379c50a3078')))
        for k, sha in enumerate(shas, start=1)},
}

BENCHMARK = Benchmark(
    name='cifar100', title='CIFAR-100-LT', papers='BCL, SDCLR', source=CIFAR100,
    splits=SplitFamily('cifar100/cifar100_trainIdxList.npy', 'cifar100/cifar100_valIdxList.npy', SUBSETS,
                       'cifar100_split{k}_{role}.npy',
                       Protocol(val=50, train=400, imbalance=100, shots=(('test_100shot', 100), ('test_50shot', 50))),
                       PUBLISHED),
    default_split=f'{SUBSETS}cifar100_split1_D_i.npy',
    # design 5 and BCL's defaults (the published commands pass --weight_decay 1e-4 for SDCLR / BCL-D)
    recipe={'both': {'model': 'resnet18', 'rand_k': 1, 'epochs': 2000, 'batch_size': 512, 'lr': 0.5,
                     'weight_decay': 5e-4, 'temperature': 0.2},
            'simclr': {'prune_percent': 0.0}, 'sdclr': {'prune_percent': 0.9}},
    probe_sets={'100shot': 'test_100shot', '50shot': 'test_50shot', 'fewshot': 'S_b'},
    protocols=('bcl', 'sdclr'),
)
