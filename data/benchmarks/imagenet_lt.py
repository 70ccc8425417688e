"""ImageNet-LT (Liu et al. 2019; BCL's table, design 9): GH's lists (9.1), recipe (9.2), 100-shot probe (9.4)."""
from data.benchmarks import IMAGE_LIST_RECIPE, ImageListBenchmark

GH = ('https://raw.githubusercontent.com/MediaBrain-SJTU/Geometric-Harmonization/'
      '9f7057ce38438c53a8b4bff92b02e0cbb5f09e62/split/{name}')
NUM_CLASSES = 1000
TRAIN = 'ImageNet_LT/ImageNet_LT_train.txt'  # about 115.8k, 1,280 down to 5 a class
HUNDRED_SHOT = 'ImageNet_LT/ImageNet_split1_test_100shot.txt'
TEST = 'ImageNet_LT/ImageNet_LT_test.txt'

PUBLISHED = {
    TRAIN: (GH, 'git-blob:a063f095fcd475db4cf8b0658c4b73955535bbf9'),
    HUNDRED_SHOT: (GH, '6ec2c0d1d9b72d282dae4da6ec59175fc07ed601fa21e9428e74a5a47003138a'),
    TEST: (GH, 'd1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5'),
}
LINES = {HUNDRED_SHOT: 100000, TEST: 50000}

BENCHMARK = ImageListBenchmark(
    name='imagenet_lt', title='ImageNet-LT', papers='BCL', num_classes=NUM_CLASSES, source='ImageNet',
    default_split=TRAIN, probe_lists={'100shot': HUNDRED_SHOT}, test_list=TEST,
    recipe={'both': IMAGE_LIST_RECIPE, 'simclr': {'prune_percent': 0.0}, 'sdclr': {'prune_percent': 0.1}},  # 9.2 (GH)
    in_training_probe='100shot', published=PUBLISHED, lines=LINES,
)
