"""Data sources for the experiment: synthetic lesions (default, offline), BraTS 2018,
and a folder of your own images.  No data is ever downloaded."""
from __future__ import annotations

import os
from collections.abc import Sized
from typing import cast

import torch
from torch.utils.data import Dataset

from ..config import DATA_SOURCES, MIMIC_SOURCES, SYNTHETIC_GENERATORS
from .brats import BraTSSlices
from .folder import FolderDataset
from .synthetic import SyntheticLesions, labels_only, synthetic_dataset

__all__ = ["SyntheticLesions", "BraTSSlices", "FolderDataset", "labels_only", "build_datasets", "datasets_of",
           "InMemory", "DATA_SOURCES", "SYNTHETIC_GENERATORS", "MIMIC_SOURCES"]

# The sources (DATA_SOURCES, SYNTHETIC_GENERATORS, MIMIC_SOURCES) are declared with the
# settings that choose them (convex_attention.paper.config).


class InMemory(Dataset):
    """All items of a dataset materialised once (synthetic images are otherwise rendered
    again in every epoch), with the decisive masks where the dataset knows them
    (:meth:`decisive_mask`)."""

    def __init__(self, dataset: Dataset):
        self.decisive: torch.Tensor | None
        n = len(cast(Sized, dataset))  # (every dataset here has a length)
        if hasattr(dataset, "render"):  # one render gives the item and its decisive mask
            rendered = [dataset.render(i) for i in range(n)]
            items = [(r["image"], r["label"], r["mask"]) for r in rendered]
            self.decisive = torch.stack([r["decisive"] for r in rendered])
        else:
            items = [dataset[i] for i in range(n)]
            self.decisive = None
        self.images = torch.stack([it[0] for it in items])
        self.labels = torch.stack([torch.as_tensor(it[1]) for it in items])
        self.masks = torch.stack([it[2] for it in items])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], self.masks[index]

    def decisive_mask(self, index: int):
        """The pixels of the structure that decides the label (ValueError where the data do
        not say which structure decides)."""
        if self.decisive is None:
            raise ValueError("these data do not say which structure decides the label")
        return self.decisive[index]


def build_datasets(source: str = "synthetic", root: str | None = None, image_size: int = 128, channels: int = 4,
                   n_train: int = 2000, n_val: int = 500, difficulty: float = 0.5, seed: int = 0,
                   brats_options: dict | None = None) -> tuple[Dataset, Dataset]:
    """``(train, val)`` datasets of ``(image, label, mask)`` items.

    ``synthetic``: train and validation images come from different seeds (disjoint).
    ``brats``: split by patient (``seed``), with ``brats_options``: more keyword arguments
    of :class:`BraTSSlices` (``val_fraction``, ``normalisation``, ``cache_dir``,
    ``min_tumour_area``; the loader's defaults for those not given).  ``folder``:
    ``root/train`` and ``root/val``, each a :class:`FolderDataset`; their images must share
    one shape, and no image may be in both (the same pixels, however stored, or the same
    picture at another scale or offset per channel; blank images, constant in every channel,
    excepted): ValueError otherwise, before any work.
    """
    if source in SYNTHETIC_GENERATORS:  # rim lesions among mimics (default), the previous blobs, the brightest rule
        kind = SYNTHETIC_GENERATORS[source]
        return (synthetic_dataset(kind, n_train, image_size, channels, difficulty, seed=seed),
                synthetic_dataset(kind, n_val, image_size, channels, difficulty, seed=seed + 10_000))
    if root is None:
        raise ValueError(f"data source {source!r} needs --data-root")
    if source == "brats":
        options = {"seed": seed, "image_size": image_size, **(brats_options or {})}
        return BraTSSlices(root, "train", **options), BraTSSlices(root, "val", **options)
    if source == "folder":
        train, val = FolderDataset(os.path.join(root, "train")), FolderDataset(os.path.join(root, "val"))
        if train.image_shape != val.image_shape:  # both scanned: every image of a set shares one shape
            # (scanned, each list of images non-empty: their first image set image_shape)
            assert train.image_shape is not None and val.image_shape is not None
            shown = ["x".join(map(str, shape)) for shape in (train.image_shape, val.image_shape)]
            raise ValueError(f"the training images ({train.root!r}) are {shown[0]} (channels x height x width) but the "
                             f"validation images ({val.root!r}) are {shown[1]}: both sets must share one size and "
                             f"channel count; resize or convert the images to one shape")
        shared = val.images_shared_with(train)
        if shared:  # best.pt is picked by the validation AUC: scored on images it trained on, it means nothing
            first_val, first_train = shared[0]
            raise ValueError(f"{len(shared)} validation image(s) in {val.root!r} are also training images in "
                             f"{train.root!r} (the same pixels, or the same picture at another scale or offset), "
                             f"the first {first_val!r} (in training: {first_train!r}); a validation set must not "
                             f"share images with the training set: "
                             f"move them to one of the two")
        return train, val
    raise ValueError(f"unknown data source {source!r}; choose one of {', '.join(DATA_SOURCES)}")


def datasets_of(config) -> tuple[Dataset, Dataset]:
    """``(train, val)`` of a :class:`~convex_attention.paper.config.TrainConfig`'s data settings
    (what ``train`` trains on and what ``explain`` scores a checkpoint's validation images of)."""
    return build_datasets(config.data, config.data_root, config.model.image_size, config.model.in_channels,
                          config.n_train, config.n_val, config.difficulty,
                          config.data_seed_used,
                          brats_options=config.brats_options())
