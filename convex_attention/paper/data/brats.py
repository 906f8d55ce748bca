"""BraTS 2018 with the paper's weak-label preprocessing, for users who have the data.

Nothing is downloaded: point ``root`` at the unpacked training data (any folder tree
holding ``<patient>/<patient>_{flair,t1,t1ce,t2,seg}.nii[.gz]``).

Preprocessing, per patient:

1. the four modalities are read with nibabel and normalised per modality (z-score over
   the brain, i.e. the non-zero voxels; the background stays 0);
2. axial slices (the last volume axis) whose whole-tumour area (``seg > 0``) exceeds
   ``min_tumour_area`` pixels (1000) are kept;
3. each kept slice is split at the tumour's column extent ``[c0, c1]`` (columns = the
   second in-plane axis): the wider tumour-free side (``[0, c0)`` or ``(c1, W)``) becomes
   the *healthy* image (label 0), the rest, holding the whole tumour, the *tumour* image
   (label 1); the columns that do not belong to a piece are zero-filled, so both keep the
   slice's size; slices whose tumour spans every column are dropped;
4. images are zero-padded (or centre-cropped) to ``image_size`` (256: the encoder halves
   its input four times).

The whole-tumour mask (``seg > 0``) goes with the tumour image (the healthy image's
mask is empty); it is for evaluation only.  The train/validation split is by patient:
patient ids are sorted, then shuffled with ``seed``, so it does not depend on the order
in which the file system lists folders.  Preprocessed slices are cached as ``.npy`` files
in ``cache_dir`` and memory-mapped on later runs.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["BraTSSlices", "find_patients", "split_patients", "MODALITIES"]

MODALITIES = ("flair", "t1", "t1ce", "t2")
CACHE_VERSION = 1


def find_patients(root: str) -> dict[str, str]:
    """``{patient_id: folder}`` for every folder under ``root`` that holds a segmentation."""
    if not os.path.isdir(root):
        raise ValueError(f"BraTS root {root!r} does not exist")
    found = {}
    for seg in glob.glob(os.path.join(root, "**", "*_seg.nii*"), recursive=True):
        folder = os.path.dirname(seg)
        found[os.path.basename(folder)] = folder
    if not found:
        raise ValueError(f"empty dataset: no <patient>/<patient>_seg.nii[.gz] under {root!r}")
    return dict(sorted(found.items()))


def split_patients(ids, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded split by patient, independent of listing order: ``(train_ids, val_ids)``."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    if len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def _volume(folder: str, patient: str, name: str) -> np.ndarray:
    import nibabel as nib

    for ext in (".nii.gz", ".nii"):
        path = os.path.join(folder, f"{patient}_{name}{ext}")
        if os.path.exists(path):
            return np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    raise ValueError(f"patient {patient!r}: missing {name} volume in {folder!r}")


def _normalise(volume: np.ndarray) -> np.ndarray:
    brain = volume != 0
    if not brain.any():
        return volume
    mean, std = volume[brain].mean(), volume[brain].std()
    out = np.zeros_like(volume)
    out[brain] = (volume[brain] - mean) / max(float(std), 1e-6)
    return out


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad or centre-crop the last two axes to ``size``."""
    out = image
    for axis in (-2, -1):
        n = out.shape[axis]
        if n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - n - before)
            out = np.pad(out, pad)
        elif n > size:
            start = (n - size) // 2
            out = np.take(out, range(start, start + size), axis=axis)
    return out


def preprocess_patient(folder: str, patient: str, min_tumour_area: int = 1000, image_size: int = 256):
    """``(images (N, 4, S, S) float32, labels (N,), masks (N, S, S) bool, slices (N,))``."""
    vols = np.stack([_normalise(_volume(folder, patient, m)) for m in MODALITIES])  # (4, X, Y, Z)
    seg = _volume(folder, patient, "seg") > 0
    images, labels, masks, slices = [], [], [], []
    for z in range(seg.shape[-1]):
        tumour = seg[:, :, z]
        if tumour.sum() <= min_tumour_area:
            continue
        cols = np.nonzero(tumour.any(0))[0]
        c0, c1 = int(cols.min()), int(cols.max())
        width = tumour.shape[1]
        left, right = c0, width - c1 - 1
        if max(left, right) == 0:
            continue
        healthy_cols = np.arange(0, c0) if left >= right else np.arange(c1 + 1, width)
        in_healthy = np.zeros(width, dtype=bool)
        in_healthy[healthy_cols] = True
        piece = vols[:, :, :, z]
        healthy = np.where(in_healthy[None, None, :], piece, 0.0)
        sick = np.where(~in_healthy[None, None, :], piece, 0.0)
        for img, label, mask in ((sick, 1, tumour), (healthy, 0, np.zeros_like(tumour))):
            images.append(_fit(img.astype(np.float32), image_size))
            labels.append(label)
            masks.append(_fit(mask, image_size))
            slices.append(z)
    S = image_size
    if not images:
        return (np.zeros((0, 4, S, S), np.float32), np.zeros(0, np.int64), np.zeros((0, S, S), bool),
                np.zeros(0, np.int64))
    return np.stack(images), np.array(labels, np.int64), np.stack(masks), np.array(slices, np.int64)


class BraTSSlices(Dataset):
    """Preprocessed BraTS 2018 slices of one split.  Items: ``(image (4, S, S), label, mask (S, S))``.

    Args:
        root: the BraTS training folder.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction, seed: the patient split.
        min_tumour_area: slices with at most this many tumour pixels are dropped (1000).
        image_size: output side (256).
        cache_dir: where preprocessed slices are kept (default ``root/.convex_attention_cache``).
    """

    def __init__(self, root: str, split: str = "train", val_fraction: float = 0.2, seed: int = 0,
                 min_tumour_area: int = 1000, image_size: int = 256, cache_dir: str | None = None):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        patients = find_patients(root)
        train, val = split_patients(patients, val_fraction, seed)
        chosen = {"train": train, "val": val, "all": sorted(patients)}[split]
        self.cache_dir = cache_dir or os.path.join(root, ".convex_attention_cache")
        self.params = {"min_tumour_area": int(min_tumour_area), "image_size": int(image_size),
                       "version": CACHE_VERSION}
        self.patients = chosen
        self.index: list[tuple[str, int]] = []
        self._arrays: dict[str, tuple] = {}
        for pid in chosen:
            n = self._ensure_cached(pid, patients[pid])
            self.index.extend((pid, i) for i in range(n))
        if not self.index:
            raise ValueError(f"empty dataset: no slice of the {split} split has more than {min_tumour_area} "
                             f"tumour pixels")

    def _cache_prefix(self, pid: str) -> str:
        key = hashlib.sha1(json.dumps({"patient": pid, **self.params}, sort_keys=True).encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, f"{pid}-{key}")

    def _ensure_cached(self, pid: str, folder: str) -> int:
        prefix = self._cache_prefix(pid)
        meta = prefix + ".json"
        if os.path.exists(meta):
            with open(meta) as f:
                return json.load(f)["count"]
        images, labels, masks, slices = preprocess_patient(folder, pid, self.params["min_tumour_area"],
                                                           self.params["image_size"])
        os.makedirs(self.cache_dir, exist_ok=True)
        for name, arr in (("images", images), ("labels", labels), ("masks", masks), ("slices", slices)):
            np.save(f"{prefix}.{name}.npy", arr)
        with open(meta + ".tmp", "w") as f:
            json.dump({"count": int(len(labels)), **self.params}, f)
        os.replace(meta + ".tmp", meta)  # the metadata last: a half-written cache is redone
        return int(len(labels))

    def _load(self, pid: str):
        if pid not in self._arrays:
            prefix = self._cache_prefix(pid)
            self._arrays[pid] = tuple(np.load(f"{prefix}.{name}.npy", mmap_mode="r")
                                      for name in ("images", "labels", "masks"))
        return self._arrays[pid]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int):
        pid, i = self.index[index]
        images, labels, masks = self._load(pid)
        return (torch.from_numpy(np.array(images[i])), torch.tensor(int(labels[i])),
                torch.from_numpy(np.array(masks[i])))
