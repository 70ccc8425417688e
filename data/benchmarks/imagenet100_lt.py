"""ImageNet-100-LT (SDCLR, design 9): SDCLR's lists (9.1), recipe (9.2), evaluation (9.4)."""
from data.benchmarks import IMAGE_LIST_RECIPE, ImageListBenchmark

SDCLR = 'https://raw.githubusercontent.com/VITA-Group/SDCLR/f1490fce26e6bb67d2c21b450db5a6e3184e6bc3/split/{name}'
NUM_CLASSES = 100
TRAIN = 'imagenet-100/imageNet_100_LT_train.txt'  # 1,280 down to 6 a class
FULL_TRAIN = 'imagenet-100/ImageNet_100_train.txt'  # the full-shot probe's list
FEW_SHOT = 'imagenet-100/imageNet_100_sub_balance_train_0.01.txt'  # 1%: 12 a class
VAL = 'imagenet-100/ImageNet_100_val.txt'
TEST = 'imagenet-100/ImageNet_100_test.txt'

PUBLISHED = {  # name -> (URL template, pin: SHA-256 or git blob id), design 9.1
    TRAIN: (SDCLR, '0f94d6eef6935578a1e287a35d337cc0fe4c41059b023247d35a4119c93820bb'),
    FULL_TRAIN: (SDCLR, 'git-blob:e5d699dd72aa0a125d42cc81e4dacd1049aa2123'),
    FEW_SHOT: (SDCLR, '3b09fdbdf937ea7b62201b5619be2c54773907191c6c34425751ebdd57a301a9'),
    VAL: (SDCLR, 'e4c423bf2b93f5cf2a2de747bf83dba7763016bdac0203a619f324f890146004'),
    TEST: (SDCLR, '2441627da7561b6d8e45dbcb34db8711ee678808cd88ec9d6d9b8d839a886363'),
}
LINES = {TRAIN: 12205, FEW_SHOT: 1200, VAL: 2000, TEST: 5000}

BENCHMARK = ImageListBenchmark(
    name='imagenet100_lt', title='ImageNet-100-LT', papers='SDCLR', num_classes=NUM_CLASSES, source='ImageNet',
    default_split=TRAIN, probe_lists={'fullshot': FULL_TRAIN, 'fewshot': FEW_SHOT}, test_list=TEST,
    recipe={'both': IMAGE_LIST_RECIPE, 'simclr': {'prune_percent': 0.0},
            'sdclr': {'prune_percent': 0.3, 'temperature': 0.3}},  # design 9.2
    in_training_probe='fewshot', published=PUBLISHED, lines=LINES,
    head_layers={'simclr': 2, 'sdclr': 3},  # the SDCLR repository's ImageNet SDCLR head (models.utils.ProjectionHead)
    protocols=('bcl', 'sdclr'), val_list=VAL,  # design 9.4: SDCLR's protocol selects its fc on the val list
)
