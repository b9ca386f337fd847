"""Training data: labelled face lists, aligned-chip cache, P x K sampler and face augmentations.

* :mod:`~train.data.datasets`: ``FaceList`` sources (identities file, identity folders, LFW people
  and folds, CelebA subset, AT&T) and :func:`~train.data.datasets.face_lists` for named sources;
* :mod:`~train.data.chips`: detect + align once with the SDK's canonical aligner, cached as uint8
  ``.npy`` under ``~/.cache/facesdk/chips``; ``ChipDataset`` joins sources under one label space;
* :mod:`~train.data.sampler`: ``PKSampler``, P identities x K images, deterministic, DDP-aware;
* :mod:`~train.data.augment`: ``FaceAugment`` (flip, crop jitter, colour) on uint8 chips in torch.
"""

from train.data.augment import FaceAugment, chips_to_input
from train.data.chips import AlignedFaces, ChipDataset, align_faces, chip_cache_dir
from train.data.datasets import (
    FaceList,
    face_lists,
    identities_file,
    image_folder,
    lfw_faces,
    lfw_people,
    lfw_people_folds,
    lfw_people_outside_folds,
)
from train.data.sampler import PKSampler

__all__ = [
    "AlignedFaces",
    "ChipDataset",
    "FaceAugment",
    "FaceList",
    "PKSampler",
    "align_faces",
    "chip_cache_dir",
    "chips_to_input",
    "face_lists",
    "identities_file",
    "image_folder",
    "lfw_faces",
    "lfw_people",
    "lfw_people_folds",
    "lfw_people_outside_folds",
]
