"""Published image lists (design 9.1): one `RELPATH LABEL` a line, RELPATH relative to --data_folder
(the ImageNet or Places365 root), e.g. `train/n01440764/n01440764_762.JPEG 0`.

An ImageList keeps its paths as one uint8 buffer with int64 offsets, not as Python strings: ImageNet-1k's
1.28 M paths are about 50 MB there, shared copy-on-write by forked loader workers (a list of str objects
is several times that, and every worker's reference counting would copy it page by page).
"""
import os
import posixpath

import numpy as np
from PIL import Image

from utils import InputError


class ImageList:
    """Relative image paths and their labels; memory O(total path bytes) until images are read."""

    def __init__(self, paths, labels):
        """`paths`: (buffer uint8 [total bytes], offsets int64 [N + 1]) or an iterable of str."""
        if isinstance(paths, tuple):
            self.buffer, self.offsets = paths
        else:
            encoded = [p.encode() for p in paths]
            self.offsets = np.cumsum([0] + [len(p) for p in encoded], dtype=np.int64)
            self.buffer = np.frombuffer(b''.join(encoded), dtype=np.uint8).copy()
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.offsets) != len(self.labels) + 1:
            raise ValueError(f'{len(self.offsets) - 1} paths but {len(self.labels)} labels')

    def __len__(self):
        return len(self.labels)

    def relpath(self, i):
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def class_counts(self, num_classes):
        return np.bincount(self.labels, minlength=num_classes)

    def subset(self, indices):
        return ImageList([self.relpath(i) for i in indices], self.labels[np.asarray(indices, dtype=np.int64)])


def read_image_list(path, num_classes):
    """The ImageList of the list file at `path`; a malformed line or a label outside 0..C-1 is a one-line
    error naming the file and the line."""
    with open(path, 'rb') as f:
        data = f.read()
    buffer, offsets, labels = bytearray(), [0], []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip(b'-').isdigit():
            raise InputError(f'{path} line {number}: expected "RELPATH LABEL" (design 9.1), got {line[:80]!r}')
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise InputError(f'{path} line {number}: label {label} is outside 0..{num_classes - 1} '
                             f'({num_classes} classes): pass the --dataset of this list')
        buffer += parts[0]
        offsets.append(len(buffer))
        labels.append(label)
    if not labels:
        raise InputError(f'{path} lists no image: a list holds one "RELPATH LABEL" a line')
    return ImageList((np.frombuffer(bytes(buffer), dtype=np.uint8), np.asarray(offsets, dtype=np.int64)), labels)


def write_image_list(path, image_list):
    """`image_list` as a list file at `path`, one `RELPATH LABEL` a line (read_image_list reads it back)."""
    with open(path, 'w') as f:
        f.writelines(f'{image_list.relpath(i)} {image_list.labels[i]}\n' for i in range(len(image_list)))


def check_image_files(data_folder, image_list, list_name):
    """Before epoch 1: every file of `image_list` lies inside `data_folder` and exists. Each folder is
    listed once (os.scandir) instead of a stat per file: 100,000 files in 1,000 folders take 0.3 s on
    this project's 2-core machine."""
    root = os.path.abspath(data_folder or '.')
    listed, missing, escaping = {}, [], []
    for i in range(len(image_list)):
        rel = image_list.relpath(i)
        norm = posixpath.normpath(rel)
        if posixpath.isabs(norm) or norm == '..' or norm.startswith('../'):
            escaping.append(rel)
            continue
        folder, name = posixpath.split(norm)
        if folder not in listed:
            try:
                listed[folder] = {entry.name for entry in os.scandir(os.path.join(root, folder))}
            except OSError:
                listed[folder] = set()
        if name not in listed[folder]:
            missing.append(rel)
    if escaping:
        raise InputError(f'{list_name} names {len(escaping)} path(s) outside --data_folder (e.g. {escaping[0]!r}): '
                         'a list names files relative to the data folder')
    if missing:
        raise InputError(f'{len(missing)} of the {len(image_list)} images of {list_name} are missing under {root} '
                         f'(e.g. {", ".join(missing[:3])}): pass the --data_folder these paths are relative to')


def load_rgb(path):
    """The image at `path` as published: opened with PIL and converted to RGB."""
    with open(path, 'rb') as f:
        return Image.open(f).convert('RGB')
