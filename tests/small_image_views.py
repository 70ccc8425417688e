"""Tests only: a training script run as it is, with the image-list views at SIZE px instead of 224.

    python tests/small_image_views.py train_sdclr.py RUN --dataset imagenet100_lt ...

ResNet-50 at 224 px costs seconds a step on 2 CPU cores (float64: more); what the distributed and
resume tests check (shares, global statistics, gathers, restored state) does not depend on the
view size, so they train at SIZE px. Only the recipe's `size` changes (the crop boxes, flips,
colour, blur and RandAugment draws stay design 9.3's); no command-line option exists for it.
"""
import dataclasses
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64  # layer4's output is 2 x 2 here, 7 x 7 at 224


def small_recipe():
    """Design 9.3's training views at SIZE px."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from data.view_params import IMAGENET
    return dataclasses.replace(IMAGENET, size=SIZE)


def use_small_views():
    """Make every TwoViewImageList (MemoBoostedImageList too) of this process render SIZE-px views."""
    recipe = small_recipe()
    from data import image_list_datasets
    image_list_datasets.TwoViewImageList.recipe = recipe


if __name__ == '__main__':
    use_small_views()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
