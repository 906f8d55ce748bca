"""BraTS 2018 with the paper's weak-label preprocessing, for users who have the data.

Nothing is downloaded: point ``root`` at the unpacked training data (any folder tree
holding ``<patient>/<patient>_{flair,t1,t1ce,t2,seg}.nii[.gz]``; the patient id is the
part of the segmentation's file name before ``_seg``).

Preprocessing, per patient, as in the authors' public code (``dataio/create_dataset.py``
of the paper's repository) unless said otherwise:

1. **Orientation.**  The four modalities and the segmentation are read with nibabel.
   Their axes are *permuted* (never flipped) to (left-right, anterior-posterior,
   inferior-superior), reading which array axis is which from each file's NIfTI affine
   (``nibabel.aff2axcodes``: the axis whose code is L or R is left-right, and so on).
   BraTS volumes are co-registered to the SRI24 atlas (240 x 240 x 155, 1 mm) and stored
   with the affine ``diag(-1, -1, 1)`` plus an offset (axis codes L, P, S): array axis 0
   is left-right and axis 2 axial, so the permutation is the identity.
   Files of one patient must agree on their axes and their shape.  A slice ``z`` becomes
   the image ``volume[:, :, z].T``: rows run anterior-posterior, *columns left-right*.
   This is the authors' slice: they ``np.rot90(volume, 1, axes=(0, 2))``, which makes
   axis 0 the slice index and keeps the original axis 0 (left-right) as the columns.
2. **Normalisation** (``normalisation``):

   - ``"volume"`` (default): per patient and modality, a z-score over the brain (the
     non-zero voxels); the background stays 0;
   - ``"dataset"``: the authors' scheme: one mean and standard deviation per modality
     for the whole dataset, applied to every pixel (background and zero-filled half
     included, as their ``Normalize`` transform does).  We compute them over all voxels
     (background included) of the *training* patients of the split, so the validation
     patients never inform them; the authors used fixed constants.

3. **Slices.**  Axial slices whose whole-tumour area (``seg > 0``) exceeds
   ``min_tumour_area`` pixels (1000, the authors' ``area > 1000``) are kept.
4. **Left-right split.**  With ``[c0, c1]`` the tumour's column extent and ``W`` the
   width: if the tumour's centre ``(c0 + c1) / 2`` lies left of ``W / 2``, columns
   ``[0, c1]`` form the *tumour* image (label 1) and ``(c1, W)`` the *healthy* image
   (label 0); otherwise ``[c0, W)`` is the tumour image and ``[0, c0)`` the healthy one.
   The other columns are zero-filled, so both keep the slice's size.  (The authors' code
   gives column ``c1`` itself to the healthy side, with its tumour pixels; here the
   tumour image holds the whole tumour.)  Slices whose healthy side would be empty are
   dropped.
5. **Size.**  Images are resized to ``image_size`` (256, as the authors: 240 -> 256):
   bilinear for the image (antialiased when shrinking), bilinear-then-threshold at 0.5
   for the mask.  Nothing is ever cropped; a non-square slice is first zero-padded to a
   square.

The whole-tumour mask goes with the tumour image (the healthy image's mask is empty); it
is for evaluation only.  The train/validation split is by patient: patient ids are
sorted, then shuffled with ``seed``, so it does not depend on the order in which the file
system lists folders.  Preprocessed slices are cached as ``.npy`` files in ``cache_dir``
(default ``root/.convex_attention_cache``; pass another folder when ``root`` is
read-only) and memory-mapped on later runs; a complete cache is read even from a
read-only folder.  A patient's cache entry is keyed by its id, the preprocessing settings
and the resolved path of its folder (two data folders can share one cache folder), and
records the size and modification time (ns) of each of its five files: a patient whose
files changed since is preprocessed again.  Every cache file is written atomically (a
temporary name, then a rename; the metadata last), and on every read the ``.npy`` files'
headers are checked against the recorded count and image size (shape, type and length), so
a damaged cache entry is preprocessed again (or, in a cache folder that cannot be written,
reported in one line naming the fix).

Errors name the file or patient and the fix: an empty or missing root, a missing or
unreadable modality, a modality without its segmentation, volumes of one patient that differ
in shape or axes or lie on other grids (NIfTI affines placing a voxel more than half a voxel
apart), a header declaring more than ``MAX_VOXELS`` voxels, NaN voxels, a segmentation value
that is no label of ``SEG_LABELS``, a patient id found twice, and a cache folder that cannot
be written.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ...io.files import atomic_file, atomic_write_text, temporary_file
from ..config import NORMALISATIONS

__all__ = ["BraTSSlices", "find_patients", "split_patients", "load_patient", "split_slice", "resize_slice",
           "preprocess_patient", "MODALITIES", "NORMALISATIONS"]

MODALITIES = ("flair", "t1", "t1ce", "t2")
#: A segmentation's labels: background, then the tumour's classes (4 in BraTS 2018, 3 since 2023, for the
#: enhancing tumour); every one above 0 is lesion (the whole tumour).
SEG_LABELS = (0, 1, 2, 3, 4)
CACHE_VERSION = 4  # 3: keyed by the source folder, checked against its files; 4: grids checked (ca_rev249)
_AXES = ("LR", "AP", "SI")  # canonical order: left-right, anterior-posterior, inferior-superior
_FIX_ROOT = ("point root (--data-root) at the unpacked BraTS training folder, the one holding the patient "
             "folders (e.g. MICCAI_BraTS_2018_Data_Training with HGG/ and LGG/)")


def find_patients(root: str) -> dict[str, str]:
    """``{patient_id: folder}`` for every ``<patient>_seg.nii[.gz]`` under ``root``, sorted by id.
    A ``<patient>_{flair,t1,t1ce,t2}.nii[.gz]`` without its segmentation beside it is an error
    naming the missing file (such a patient had been left out without a word: ca_rev249)."""
    if not os.path.exists(root):
        raise ValueError(f"BraTS root {root!r} does not exist; {_FIX_ROOT}")
    if not os.path.isdir(root):
        raise ValueError(f"BraTS root {root!r} is a file, not a folder; {_FIX_ROOT}")
    found: dict[str, str] = {}
    volumes: dict[tuple[str, str], list[str]] = {}  # (patient, folder): the modalities found there
    # the root escaped: a folder named "BraTS [copy]" is a path, not a pattern
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "**", "*_*.nii*"), recursive=True)):
        name, folder = os.path.basename(path), os.path.dirname(path)
        kind = next((k for k in ("seg",) + MODALITIES if name.endswith((f"_{k}.nii", f"_{k}.nii.gz"))), None)
        if kind is None:
            continue
        pid = name[: name.rindex(f"_{kind}.nii")]
        if kind != "seg":
            volumes.setdefault((pid, folder), []).append(kind)
            continue
        if pid in found and found[pid] != folder:
            raise ValueError(f"patient {pid!r} appears twice: in {found[pid]!r} and {folder!r}; "
                             f"remove one copy")
        found[pid] = folder
    for (pid, folder), kinds in sorted(volumes.items()):
        if found.get(pid) != folder:
            raise ValueError(f"patient {pid!r}: missing seg volume {_candidates(folder, pid, 'seg')[0]!r} (or .nii) "
                             f"beside its {', '.join(sorted(set(kinds)))}; restore it, or remove the patient's folder "
                             f"{folder!r} (data without segmentations, such as BraTS's validation set, is no training "
                             f"data: {_FIX_ROOT})")
    if not found:
        raise ValueError(f"empty dataset: no <patient>/<patient>_seg.nii[.gz] under {root!r}; {_FIX_ROOT}")
    return dict(sorted(found.items()))


def split_patients(ids, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded split by patient, independent of listing order: ``(train_ids, val_ids)``.
    ``round(val_fraction · n)`` patients are held out, but each side keeps at least one where
    there are two or more (so ``val_fraction=0`` still holds out one)."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    if len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def _orientation(affine: np.ndarray, path: str) -> tuple[int, int, int]:
    """The array axes that run (left-right, anterior-posterior, inferior-superior)."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    pairs = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    axes: list[int | None] = [None, None, None]
    for axis, code in enumerate(codes):
        if code in pairs:
            axes[pairs[code]] = axis
    lr, ap, si = axes
    if lr is None or ap is None or si is None:
        raise ValueError(f"{path!r}: its NIfTI affine gives no orientation (axis codes {codes}); "
                         f"re-export the volume with its affine")
    return lr, ap, si


def _candidates(folder: str, patient: str, name: str) -> list[str]:
    return [os.path.join(folder, f"{patient}_{name}{ext}") for ext in (".nii.gz", ".nii")]


def _source_path(folder: str, patient: str, name: str) -> str | None:
    """The file the ``name`` volume of ``patient`` is read from (``.nii.gz`` first), or None."""
    return next((p for p in _candidates(folder, patient, name) if os.path.exists(p)), None)


def _source_signature(folder: str, patient: str) -> dict:
    """What the cache checks a patient's entry against: the resolved folder and, per volume,
    ``[file name, size, mtime_ns]`` (``None`` for a missing file)."""
    files: dict = {}
    for name in MODALITIES + ("seg",):
        path = _source_path(folder, patient, name)
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        files[name] = None if st is None or path is None else [os.path.basename(path), int(st.st_size),
                                                               int(st.st_mtime_ns)]
    return {"source": os.path.realpath(folder), "files": files}


#: The most voxels a volume may hold (512**3; BraTS's are 240 x 240 x 155, 8.9 million): read from
#: the header before the voxels, since a gzip file of a few kB can declare gigabytes of zeros (a
#: 1.4 kB file declaring 2000**3 int16 voxels took 51 s and 15.5 GB before an error: ca_rev249).
MAX_VOXELS = 512 ** 3


class _NiftiVolume(Protocol):
    """What is read of the image ``nibabel.load`` returns for a NIfTI file (typed by nibabel as a
    ``FileBasedImage``, which declares none of it)."""

    shape: tuple[int, ...]
    affine: np.ndarray

    def get_data_dtype(self) -> np.dtype: ...

    def get_fdata(self, dtype: Any = ...) -> np.ndarray: ...


class _Refused(Exception):
    """A volume refused from its header, before its voxels are read."""


def _volume(folder: str, patient: str, name: str) -> tuple[np.ndarray, tuple, str, np.ndarray]:
    """``(volume permuted to (LR, AP, SI), its orientation, path, affine)``: the orientation is the
    original axes of (LR, AP, SI) and the affine's axis codes, which carry each axis's direction
    too (compared by the axes alone, a segmentation stored mirrored was accepted unflipped, its
    lesion on the healthy side: ca_rev125)."""
    import nibabel as nib

    candidates = _candidates(folder, patient, name)
    path = _source_path(folder, patient, name)
    if path is None:
        raise ValueError(f"patient {patient!r}: missing {name} volume {candidates[0]!r} (or .nii); restore it, "
                         f"or remove the patient's folder {folder!r}")
    try:
        image = cast(_NiftiVolume, nib.load(path))
        shape = tuple(int(n) for n in image.shape)
        if len(shape) != 3:
            raise _Refused(f"{path!r} has shape {shape}, expected a 3-D volume")
        if np.prod(shape, dtype=np.float64) > MAX_VOXELS:
            raise _Refused(f"{path!r} declares {shape} voxels, more than the {MAX_VOXELS} a volume may hold "
                           f"(BraTS volumes are 240 x 240 x 155); re-extract the file")
        complex_voxels = np.iscomplexobj(np.empty(0, dtype=image.get_data_dtype()))
        data = None if complex_voxels else np.asarray(image.get_fdata(dtype=np.float32))
    except _Refused as err:
        raise ValueError(f"patient {patient!r}: {err}") from None
    except Exception as err:  # nibabel raises many kinds on a damaged file
        raise ValueError(f"patient {patient!r}: cannot read {path!r} ({type(err).__name__}: {err}); "
                         f"re-extract the file") from None
    if data is None:  # (read as float32 its imaginary part was dropped, without a word: ca_rev125)
        raise ValueError(f"patient {patient!r}: {path!r} holds complex voxels ({image.get_data_dtype()}); a "
                         f"volume of real numbers is needed")
    if data.ndim != 3:
        raise ValueError(f"patient {patient!r}: {path!r} has shape {data.shape}, expected a 3-D volume")
    if not np.isfinite(data).all():
        raise ValueError(f"patient {patient!r}: {path!r} holds NaN or Inf voxels; re-extract the file")
    axes = _orientation(image.affine, path)
    return np.transpose(data, axes), (axes, tuple(nib.aff2axcodes(image.affine))), path, np.asarray(image.affine)


def _grid_offset(affine: np.ndarray, other: np.ndarray, shape: tuple) -> tuple[float, float]:
    """How far apart the two affines put one voxel of an array of (stored) ``shape``, over the
    grid's corners: ``(mm, voxels)``, the largest distance in mm and the largest shift along one
    of ``affine``'s own axes in its voxels (a shift of 1 mm along a 5 mm axis is 0.2 voxel)."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    moved = (corners @ (np.asarray(other, float) - np.asarray(affine, float)).T)[:, :3]
    try:
        voxels = float(np.abs(np.linalg.solve(np.asarray(affine, float)[:3, :3], moved.T)).max())
    except np.linalg.LinAlgError:  # (a singular affine places no grid)
        voxels = np.inf
    return float(np.linalg.norm(moved, axis=1).max()), voxels


def load_patient(folder: str, patient: str) -> tuple[np.ndarray, np.ndarray]:
    """``(volumes (4, LR, AP, SI) float32 in MODALITIES order, seg (LR, AP, SI) bool)``."""
    loaded = {name: _volume(folder, patient, name) for name in MODALITIES + ("seg",)}
    shapes = {name: v.shape for name, (v, _, _, _) in loaded.items()}
    axes = {name: a for name, (_, a, _, _) in loaded.items()}
    if len(set(axes.values())) > 1:
        raise ValueError(f"patient {patient!r}: the files' NIfTI affines orient the axes differently (axes and "
                         f"directions: {', '.join(f'{n} {a[1]}' for n, a in axes.items())}); re-export them on one "
                         f"grid, or remove the patient's folder {folder!r}")
    if len(set(shapes.values())) > 1:
        raise ValueError(f"patient {patient!r}: volumes differ in shape "
                         f"({', '.join(f'{n} {s}' for n, s in shapes.items())}); every modality and the "
                         f"segmentation must share one grid: re-extract them, or remove the patient's folder "
                         f"{folder!r}")
    # one grid: the same axes and shape were not enough (a segmentation shifted by 5 voxels, or on a
    # 2 mm grid, was read voxel by voxel against the images, its lesion elsewhere: ca_rev249); half a
    # voxel's tolerance, for the rounding of headers written by other tools
    volume, (order, _), first_path, first = loaded[MODALITIES[0]]
    stored = [0, 0, 0]
    for canonical, axis in enumerate(order):
        stored[axis] = volume.shape[canonical]
    for name in MODALITIES[1:] + ("seg",):
        _, _, path, affine = loaded[name]
        # in voxels along each axis: the smallest spacing in mm had refused a 1 mm shift along a 5 mm axis,
        # 0.2 voxel, as "more than half a voxel" (ca_rev254)
        offset, voxels = _grid_offset(first, affine, tuple(stored))
        if not voxels <= 0.5:
            raise ValueError(f"patient {patient!r}: {path!r} lies on another grid than {first_path!r} (their "
                             f"NIfTI affines place one voxel up to {offset:.3g} mm apart, {voxels:.3g} voxel along "
                             f"an axis, more than half a voxel); "
                             f"every modality and the segmentation must share one grid: re-export them, or remove "
                             f"the patient's folder {folder!r}")
    seg, _, seg_path, _ = loaded["seg"]
    # BraTS's labels (4 in 2018, 3 in 2023, for the enhancing tumour): an image saved under the
    # segmentation's name, or a resampled one, read as lesion wherever it was above 0 (ca_rev249's risk)
    strange = np.setdiff1d(np.unique(seg), SEG_LABELS)
    if strange.size:
        raise ValueError(f"patient {patient!r}: {seg_path!r} holds {strange.size} value(s) that are no BraTS label "
                         f"({', '.join(f'{v:.9g}' for v in strange[:3])}{', ...' if strange.size > 3 else ''}; labels "
                         f"are {', '.join(map(str, SEG_LABELS))}); re-extract the segmentation")
    vols = np.stack([loaded[m][0] for m in MODALITIES]).astype(np.float32)
    return vols, seg > 0


def _normalise(volume: np.ndarray) -> np.ndarray:
    """z-score over the non-zero voxels (the brain); the background stays 0."""
    brain = volume != 0
    if not brain.any():
        return volume
    mean, std = volume[brain].mean(), volume[brain].std()
    out = np.zeros_like(volume)
    out[brain] = (volume[brain] - mean) / max(float(std), 1e-6)
    return out


def split_slice(tumour: np.ndarray) -> np.ndarray | None:
    """Step 4 of the module docstring: ``(W,)`` bool, True for the tumour image's columns,
    or None when the healthy side would be empty.  ``tumour``: ``(H, W)`` bool, columns
    left-right."""
    width = tumour.shape[1]
    cols = np.nonzero(tumour.any(0))[0]
    c0, c1 = int(cols.min()), int(cols.max())
    in_tumour = np.zeros(width, dtype=bool)
    if (c0 + c1) / 2 < width / 2:
        in_tumour[: c1 + 1] = True
    else:
        in_tumour[c0:] = True
    return None if in_tumour.all() else in_tumour


def resize_slice(image: np.ndarray, size: int, mask: bool = False) -> np.ndarray:
    """``(C, H, W)`` -> ``(C, size, size)``: zero-pad to a square (never crop), then resize
    (bilinear, antialiased when shrinking; a mask is thresholded at 0.5 after)."""
    import torch.nn.functional as F

    _, H, W = image.shape
    side = max(H, W)
    if H != W:
        top, left = (side - H) // 2, (side - W) // 2
        image = np.pad(image, ((0, 0), (top, side - H - top), (left, side - W - left)))
    if side == size:
        return image >= 0.5 if mask else image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=size < side)[0]
    return (out >= 0.5).numpy() if mask else out.numpy()


def preprocess_patient(folder: str, patient: str, min_tumour_area: int = 1000, image_size: int = 256,
                       normalisation: str = "volume") -> dict:
    """One patient's pieces (module docstring): a dict of ``images (N, 4, S, S) float32``,
    ``labels (N,) int64``, ``masks (N, S, S) bool``, ``slices (N,) int64`` and ``moments``
    ``(4, 3) float64`` (voxel count, sum and sum of squares of each raw modality, for the
    dataset-wide normalisation).  With ``normalisation="dataset"`` the images are raw."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    vols, seg = load_patient(folder, patient)
    flat = vols.reshape(4, -1).astype(np.float64)
    moments = np.stack([np.full(4, flat.shape[1], np.float64), flat.sum(1), (flat ** 2).sum(1)], 1)
    if normalisation == "volume":
        vols = np.stack([_normalise(v) for v in vols])
    S = image_size
    images, labels, masks, slices = [], [], [], []
    for z in range(seg.shape[2]):
        tumour = seg[:, :, z].T  # rows anterior-posterior, columns left-right
        if tumour.sum() <= min_tumour_area:
            continue
        in_tumour = split_slice(tumour)
        if in_tumour is None:
            continue
        piece = np.transpose(vols[:, :, :, z], (0, 2, 1))
        for cols, label, mask in ((in_tumour, 1, tumour), (~in_tumour, 0, np.zeros_like(tumour))):
            images.append(resize_slice(np.where(cols[None, None, :], piece, 0.0).astype(np.float32), S))
            labels.append(label)
            masks.append(resize_slice(mask[None].astype(np.float32), S, mask=True)[0])
            slices.append(z)
    if not images:
        return {"images": np.zeros((0, 4, S, S), np.float32), "labels": np.zeros(0, np.int64),
                "masks": np.zeros((0, S, S), bool), "slices": np.zeros(0, np.int64), "moments": moments}
    return {"images": np.stack(images), "labels": np.array(labels, np.int64), "masks": np.stack(masks),
            "slices": np.array(slices, np.int64), "moments": moments}


def _save_npy(path: str, array: np.ndarray) -> None:
    """``numpy.save`` atomically: into a temporary file of this write's own name, then renamed
    (a crash leaves the old file or none, never half a file; no file of the user's is touched)."""
    with atomic_file(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _npy_problem(path: str, shape: tuple, dtype: np.dtype) -> str:
    """Why the ``.npy`` file at ``path`` is not an array of ``shape`` and ``dtype`` ("" when
    it is): read from its header and its length, without reading the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return f"has an unknown .npy version {version}"
            found, fortran, found_dtype = read_header(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError) as err:
        return f"has no readable .npy header ({err})"
    if tuple(found) != tuple(shape) or found_dtype != dtype or fortran:
        return f"holds {found_dtype} {tuple(found)}, expected {dtype} {tuple(shape)}"
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        return f"is {size} bytes long, expected {expected}"
    return ""


class BraTSSlices(Dataset):
    """Preprocessed BraTS 2018 slices of one split.  Items: ``(image (4, S, S), label, mask (S, S))``.

    Args:
        root: the BraTS training folder.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction, seed: the patient split.
        min_tumour_area: slices with at most this many tumour pixels are dropped (1000).
        image_size: output side ``S`` (256; any other size is a resize, never a crop).
        cache_dir: where preprocessed slices are kept (default ``root/.convex_attention_cache``).
        normalisation: ``"volume"`` (per patient, default) or ``"dataset"`` (the authors':
            one mean and std per modality, from the training patients).

    ``brain_mask(i)`` gives image ``i``'s non-background pixels and ``patient_of(i)`` its
    patient; with ``"dataset"``, ``stats`` is the ``(4, 2)`` array of means and stds used.
    """

    def __init__(self, root: str, split: str = "train", val_fraction: float = 0.2, seed: int = 0,
                 min_tumour_area: int = 1000, image_size: int = 256, cache_dir: str | None = None,
                 normalisation: str = "volume"):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if isinstance(min_tumour_area, bool) or not isinstance(min_tumour_area, int) or min_tumour_area < 0:
            raise ValueError(f"min_tumour_area must be an integer >= 0 (pixels), got {min_tumour_area!r}")
        patients = find_patients(root)
        train, val = split_patients(patients, val_fraction, seed)
        chosen = {"train": train, "val": val, "all": sorted(patients)}[split]
        self.cache_dir = cache_dir or os.path.join(root, ".convex_attention_cache")
        self.normalisation = normalisation
        self.params: dict[str, Any] = {"min_tumour_area": int(min_tumour_area), "image_size": int(image_size),
                                     "normalisation": normalisation, "version": CACHE_VERSION}
        self.patients = chosen
        self._writable = False
        self._folders = patients
        self._prefixes: dict[str, str] = {}
        self.index: list[tuple[str, int]] = []
        self._arrays: dict[str, tuple] = {}
        counts = {pid: self._ensure_cached(pid, patients[pid]) for pid in chosen}
        for pid in chosen:
            self.index.extend((pid, i) for i in range(counts[pid][0]))
        self.stats = None
        if normalisation == "dataset":
            reference = sorted(patients) if split == "all" else train
            if not reference:  # one patient, held out by val_fraction (sum() of nothing is 0: a TypeError below)
                raise ValueError(f"normalisation 'dataset' takes its statistics from the training patients, and "
                                 f"val_fraction {val_fraction} holds out the only patient of {root!r}; use more "
                                 f"patients, a smaller val_fraction, or normalisation 'volume'")
            total = cast(np.ndarray, sum(np.asarray(self._ensure_cached(pid, patients[pid])[1]) for pid in reference))
            mean = total[:, 1] / total[:, 0]
            std = np.sqrt(np.maximum(total[:, 2] / total[:, 0] - mean ** 2, 0.0))
            self.stats = np.stack([mean, np.maximum(std, 1e-6)], 1).astype(np.float32)
        if not self.index:
            raise ValueError(f"empty dataset: no slice of the {split} split has more than {min_tumour_area} "
                             f"tumour pixels (and a non-empty healthy side)")

    def _cache_prefix(self, pid: str, folder: str | None = None) -> str:
        """``cache_dir/<pid>-<key>``: the key hashes the patient, the preprocessing settings and
        the patient's resolved folder (two data folders may share one cache folder)."""
        if pid not in self._prefixes:
            source = os.path.realpath(folder if folder is not None else self._folders[pid])
            key = hashlib.sha1(json.dumps({"patient": pid, "source": source, **self.params},
                                          sort_keys=True).encode()).hexdigest()[:16]
            self._prefixes[pid] = os.path.join(self.cache_dir, f"{pid}-{key}")
        return self._prefixes[pid]

    def _check_writable(self) -> None:
        """Before any preprocessing: the cache folder can be created and written to."""
        if self._writable:
            return
        fix = "pass cache_dir (--cache-dir) pointing to a folder you can write to"
        if os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            raise ValueError(f"cache folder {self.cache_dir!r} is a file; {fix}")
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            with temporary_file(os.path.join(self.cache_dir, ".write-probe")):
                pass  # made and removed again; a file or link of that name is never written through
        except OSError as err:
            raise ValueError(f"cache folder {self.cache_dir!r} is not writable ({err.strerror or err}); {fix}") \
                from None
        self._writable = True

    def _expected(self, count: int) -> dict[str, tuple[tuple, np.dtype]]:
        """The shape and type of each cached array of a patient with ``count`` images."""
        S = self.params["image_size"]
        return {"images": ((count, len(MODALITIES), S, S), np.dtype(np.float32)),
                "labels": ((count,), np.dtype(np.int64)), "masks": ((count, S, S), np.dtype(bool)),
                "slices": ((count,), np.dtype(np.int64))}

    def _cached(self, prefix: str, signature: dict) -> tuple[tuple[int, list] | None, str]:
        """``((count, moments), "")`` of a usable cache entry, else ``(None, why not)``: no
        entry, damaged metadata, source files changed since, or ``.npy`` files that are missing
        or whose headers do not match the recorded count and image size (a cheap check: the
        headers and the files' lengths, never the pixels)."""
        meta = prefix + ".json"
        if not os.path.exists(meta):
            return None, "missing"
        try:
            with open(meta) as f:
                info = json.load(f)
            count, moments = info["count"], info["moments"]
            if type(count) is not int or count < 0 or np.asarray(moments, dtype=np.float64).shape != (4, 3):
                raise ValueError("count or moments")
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None, "damaged (unreadable metadata)"
        if info.get("source") != signature["source"] or info.get("files") != signature["files"]:
            return None, "stale (the patient's files changed since it was written)"
        for name, (shape, dtype) in self._expected(count).items():
            problem = _npy_problem(f"{prefix}.{name}.npy", shape, dtype)
            if problem:
                return None, f"damaged ({name}.npy {problem})"
        return (count, moments), ""

    def _ensure_cached(self, pid: str, folder: str) -> tuple[int, list]:
        """``(number of images, moments (4, 3))`` of patient ``pid``, preprocessing it if its
        cache entry is missing, stale or damaged."""
        prefix = self._cache_prefix(pid, folder)
        meta = prefix + ".json"
        signature = _source_signature(folder, pid)  # before reading the files: a change meanwhile redoes it
        found, why = self._cached(prefix, signature)
        if found is not None:
            return found
        try:
            self._check_writable()
        except ValueError as err:
            if why == "missing":
                raise
            raise ValueError(f"the cache of patient {pid!r} ({prefix}.*) is {why} and cannot be rebuilt: "
                             f"{err}") from None
        out = preprocess_patient(folder, pid, self.params["min_tumour_area"], self.params["image_size"],
                                 self.normalisation)
        self._arrays.pop(pid, None)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(meta)  # this entry's own metadata: without it a half-rewritten entry is never read
            for name in ("images", "labels", "masks", "slices"):
                _save_npy(f"{prefix}.{name}.npy", out[name])
            info = {"count": int(len(out["labels"])), "moments": out["moments"].tolist(), **self.params,
                    **signature}
            # the metadata last: a half-written cache is redone; atomically, through a temporary
            # file of this write's own name (never a file of the user's)
            atomic_write_text(meta, json.dumps(info))
        except OSError as err:
            raise ValueError(f"cannot write the cache of patient {pid!r} to {self.cache_dir!r} "
                             f"({err.strerror or err}); pass cache_dir (--cache-dir) pointing to a folder "
                             f"you can write to") from None
        return info["count"], info["moments"]

    def _load(self, pid: str):
        if pid not in self._arrays:
            prefix = self._cache_prefix(pid)
            arrays = []
            for name in ("images", "labels", "masks"):
                path = f"{prefix}.{name}.npy"
                try:
                    arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
                except (OSError, ValueError) as err:
                    raise ValueError(f"damaged cache file {path!r} ({err}); delete {prefix}.* (or the cache "
                                     f"folder) and run again") from None
            self._arrays[pid] = tuple(arrays)
        return self._arrays[pid]

    def __len__(self) -> int:
        return len(self.index)

    def patient_of(self, index: int) -> str:
        return self.index[index][0]

    def brain_mask(self, index: int) -> torch.Tensor:
        """``(S, S)`` bool: the pixels of image ``index`` that are not background (nor zero-filled)."""
        pid, i = self.index[index]
        return torch.from_numpy(np.array(self._load(pid)[0][i]) != 0).any(0)

    def __getitem__(self, index: int):
        pid, i = self.index[index]
        images, labels, masks = self._load(pid)
        image = np.array(images[i], dtype=np.float32)
        if self.stats is not None:
            image = (image - self.stats[:, 0, None, None]) / self.stats[:, 1, None, None]
        return (torch.from_numpy(image), torch.tensor(int(labels[i])), torch.from_numpy(np.array(masks[i])))
