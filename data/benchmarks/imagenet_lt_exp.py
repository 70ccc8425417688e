"""ImageNet-LT-exp (SDCLR, design 9): SDCLR's exponential long tail over ImageNet-1k (9.1), recipe (9.2),
evaluation (9.4: full-shot on all of ImageNet-1k, few-shot on its 1% list)."""
from data.benchmarks import IMAGE_LIST_RECIPE, ImageListBenchmark
from data.benchmarks.imagenet_lt import TEST

SDCLR = 'https://raw.githubusercontent.com/VITA-Group/SDCLR/f1490fce26e6bb67d2c21b450db5a6e3184e6bc3/split/{name}'
NUM_CLASSES = 1000
TRAIN = 'ImageNet_LT/imageNet_LT_exp_train.txt'
FULL_TRAIN = 'ImageNet_LT/ImageNet_train.txt'  # ImageNet-1k's train set
FEW_SHOT = 'ImageNet_LT/imageNet_sub_balance_train_0.01.txt'  # 1%: 12 a class
VAL = 'ImageNet_LT/ImageNet_LT_val.txt'

PUBLISHED = {
    TRAIN: (SDCLR, 'git-blob:690594bbb3961378319bb137b0ff657866130549'),
    FULL_TRAIN: (SDCLR, 'git-blob:fa3a2102b1e7e41907097d6b6c1cf89182227102'),
    FEW_SHOT: (SDCLR, 'bbda6ce75d35db9290b56f3c78149a059e454bdd5d2859c3945f6c7e847edca1'),
    VAL: (SDCLR, '9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e'),
}
LINES = {FEW_SHOT: 12000, VAL: 20000}

BENCHMARK = ImageListBenchmark(
    name='imagenet_lt_exp', title='ImageNet-LT-exp', papers='SDCLR', num_classes=NUM_CLASSES, source='ImageNet',
    default_split=TRAIN, probe_lists={'fullshot': FULL_TRAIN, 'fewshot': FEW_SHOT}, test_list=TEST,
    # design 9.2: SDCLR published SimCLR only here; SDCLR takes ImageNet-100-LT's prune 0.3
    recipe={'both': IMAGE_LIST_RECIPE, 'simclr': {'prune_percent': 0.0}, 'sdclr': {'prune_percent': 0.3}},
    in_training_probe='fewshot', published=PUBLISHED, lines=LINES,
    head_layers={'simclr': 2, 'sdclr': 3},  # the SDCLR repository's heads
    protocols=('bcl', 'sdclr'), val_list=VAL,  # design 9.4: SDCLR's protocol selects its fc on the val list
)
