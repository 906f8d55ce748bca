"""Bring your own data: images plus optional masks (PNG or NPY), labels from a CSV.

Layout::

    root/labels.csv        filename,label            (one row per image)
    root/images/<filename> PNG (grey or RGB) or NPY ((H, W) or (C, H, W))
    root/masks/<filename>  optional; same name (or stem) as the image, non-zero = lesion

Items are ``(image (C, H, W) float32, label int64, mask (H, W) bool)``; without masks
the mask is all False and ``has_masks`` is False.  Images are normalised per channel
(zero mean, unit variance).
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FolderDataset"]

_EXTENSIONS = (".png", ".npy")


def _read_array(path: str) -> np.ndarray:
    if path.lower().endswith(".npy"):
        return np.load(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float32)


class FolderDataset(Dataset):
    """See the module docstring.

    Args:
        root: the folder.
        labels_csv: CSV file name inside ``root`` (columns ``filename``, ``label``).
        image_dir, mask_dir: sub-folders; ``mask_dir=None`` disables masks even if present.
    """

    def __init__(self, root: str, labels_csv: str = "labels.csv", image_dir: str = "images",
                 mask_dir: str | None = "masks"):
        self.root = root
        csv_path = os.path.join(root, labels_csv)
        if not os.path.exists(csv_path):
            raise ValueError(f"label file {csv_path!r} does not exist (columns: filename,label)")
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"filename", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{csv_path!r} lacks column(s) {sorted(missing)}; expected filename,label")
            rows = list(reader)
        if not rows:
            raise ValueError(f"empty dataset: {csv_path!r} lists no images")
        self.items = []
        for row in rows:
            name = row["filename"]
            if not name.lower().endswith(_EXTENSIONS):
                raise ValueError(f"{name!r}: images must be PNG or NPY")
            path = os.path.join(root, image_dir, name)
            if not os.path.exists(path):
                raise ValueError(f"image file {path!r} listed in {labels_csv} does not exist")
            try:
                label = int(row["label"])
            except ValueError:
                raise ValueError(f"label of {name!r} must be an integer, got {row['label']!r}") from None
            self.items.append((path, label, name))
        self.mask_root = os.path.join(root, mask_dir) if mask_dir else None
        self.has_masks = bool(self.mask_root and os.path.isdir(self.mask_root))

    def __len__(self) -> int:
        return len(self.items)

    def _mask_path(self, name: str) -> str:
        stem = os.path.splitext(name)[0]
        for candidate in (name, stem + ".png", stem + ".npy"):
            path = os.path.join(self.mask_root, candidate)
            if os.path.exists(path):
                return path
        raise ValueError(f"mask file for {name!r} is missing in {self.mask_root!r} (looked for {stem}.png/.npy)")

    def __getitem__(self, index: int):
        path, label, name = self.items[index]
        arr = _read_array(path).astype(np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
            arr = np.moveaxis(arr, -1, 0)  # PNG: (H, W, C) -> (C, H, W)
        if arr.ndim != 3:
            raise ValueError(f"{path!r}: expected a (H, W) or (C, H, W) image, got shape {arr.shape}")
        image = torch.from_numpy(arr)
        mean = image.flatten(1).mean(1).view(-1, 1, 1)
        std = image.flatten(1).std(1).clamp(min=1e-6).view(-1, 1, 1)
        image = (image - mean) / std
        if self.has_masks:
            mask = torch.from_numpy(np.asarray(_read_array(self._mask_path(name))) > 0)
            if mask.ndim == 3:
                mask = mask.any(-1) if mask.shape[-1] in (3, 4) else mask.any(0)
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, image {tuple(image.shape[1:])}")
        else:
            mask = torch.zeros(image.shape[1:], dtype=torch.bool)
        return image, torch.tensor(label), mask
