import csv
import os

import numpy as np
import pytest
import torch

from convex_attention.paper.data import (
    BraTSSlices,
    FolderDataset,
    InMemory,
    SyntheticLesions,
    build_datasets,
    labels_only,
)
from convex_attention.paper.data.brats import find_patients, split_patients


def test_synthetic_is_deterministic_and_labelled():
    a = SyntheticLesions(20, image_size=64, difficulty=0.5, seed=3)
    b = SyntheticLesions(20, image_size=64, difficulty=0.5, seed=3)
    for i in (0, 7, 19):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
    labels = torch.stack([a[i][1] for i in range(20)])
    assert 0 < labels.sum() < 20
    for i in range(20):
        img, label, mask = a[i]
        assert img.shape == (4, 64, 64) and img.dtype == torch.float32 and mask.dtype == torch.bool
        assert bool(mask.any()) == bool(label)  # masks only on lesion images
    assert not torch.equal(a[0][0], SyntheticLesions(20, image_size=64, seed=4)[0][0])


def test_lesions_are_visible_in_flair_and_difficulty_lowers_contrast():
    def contrast(difficulty):
        ds = SyntheticLesions(40, image_size=64, difficulty=difficulty, seed=0, lesion_fraction=1.0)
        vals = []
        for img, _, mask in ds:
            if mask.sum() > 10:
                vals.append(float(img[0][mask].mean() - img[0][~mask & (img[0] != 0)].mean()))
        return np.mean(vals)

    easy, hard = contrast(0.0), contrast(1.0)
    assert easy > hard > 0


def test_labels_only_hides_masks_and_in_memory_matches():
    ds = SyntheticLesions(6, image_size=32, seed=1)
    view = labels_only(ds)
    assert len(view[0]) == 2
    cached = InMemory(ds)
    for i in range(6):
        assert all(torch.equal(x, y) for x, y in zip(cached[i], ds[i]))


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="at least one image"):
        SyntheticLesions(0)
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticLesions(5, difficulty=2.0)


# ---------------------------------------------------------------- BraTS, on a fake folder

def _write_fake_brats(root, patients, shape=(48, 48, 6), tumour_slices=(2, 3), seed=0):
    import nibabel as nib

    rng = np.random.default_rng(seed)
    for pid in patients:
        folder = os.path.join(root, "HGG", pid)
        os.makedirs(folder)
        brain = np.zeros(shape, np.float32)
        brain[4:44, 4:44, :] = 1
        for m in ("flair", "t1", "t1ce", "t2"):
            vol = (rng.normal(100, 20, shape) * brain).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), os.path.join(folder, f"{pid}_{m}.nii.gz"))
        seg = np.zeros(shape, np.int16)
        for z in tumour_slices:
            seg[10:30, 26:40, z] = 2  # 20 x 14 = 280 pixels, columns 26..39
        seg[10:12, 26:28, 5] = 1  # a small tumour (4 px), dropped by the area rule
        nib.save(nib.Nifti1Image(seg, np.eye(4)), os.path.join(folder, f"{pid}_seg.nii.gz"))


def test_brats_loader_reproduces_the_preprocessing(tmp_path):
    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1", "Brats18_B_2", "Brats18_C_3"])
    ds = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 * 2 * 2  # 3 patients x 2 kept slices x (tumour half, healthy half)
    labels = [int(ds[i][1]) for i in range(len(ds))]
    assert labels.count(1) == labels.count(0) == 6
    for i in range(len(ds)):
        img, label, mask = ds[i]
        assert img.shape == (4, 48, 48) and mask.shape == (48, 48)
        if label == 1:
            assert mask.sum() == 280 and bool((img[:, :, 26:40] != 0).any())
            assert (img[:, :, :26] == 0).all()  # the healthy side is zero-filled
        else:
            assert not mask.any()
            assert (img[:, :, 26:] == 0).all() and bool((img[:, :, 4:26] != 0).any())
    # per-modality normalisation over the brain of the volume
    img = ds[1][0]
    assert abs(float(img[0][img[0] != 0].mean())) < 0.5


def test_brats_split_is_by_patient_seeded_and_order_independent(tmp_path, monkeypatch):
    ids = [f"Brats18_P_{i}" for i in range(10)]
    train, val = split_patients(ids, 0.2, seed=1)
    assert set(train).isdisjoint(val) and len(val) == 2 and sorted(train + val) == sorted(ids)
    assert split_patients(list(reversed(ids)), 0.2, seed=1) == (train, val)
    assert split_patients(ids, 0.2, seed=2) != (train, val)
    root = str(tmp_path / "brats")
    _write_fake_brats(root, ids[:4])
    import glob

    real_glob = glob.glob
    monkeypatch.setattr(glob, "glob", lambda *a, **k: list(reversed(real_glob(*a, **k))))
    assert list(find_patients(root)) == sorted(ids[:4])
    tr = BraTSSlices(root, "train", 0.25, seed=0, min_tumour_area=100, image_size=48, cache_dir=str(tmp_path / "c"))
    va = BraTSSlices(root, "val", 0.25, seed=0, min_tumour_area=100, image_size=48, cache_dir=str(tmp_path / "c"))
    assert set(tr.patients).isdisjoint(va.patients) and len(va.patients) == 1


def test_brats_cache_is_reused(tmp_path, monkeypatch):
    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1"])
    cache = str(tmp_path / "cache")
    first = BraTSSlices(root, "all", min_tumour_area=100, image_size=64, cache_dir=cache)
    import nibabel

    monkeypatch.setattr(nibabel, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
    second = BraTSSlices(root, "all", min_tumour_area=100, image_size=64, cache_dir=cache)
    assert len(first) == len(second) == 4
    assert torch.equal(first[0][0], second[0][0]) and first[0][0].shape == (4, 64, 64)  # zero-padded 48 -> 64


def test_brats_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        BraTSSlices(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty dataset"):
        BraTSSlices(str(tmp_path / "empty"))
    root = str(tmp_path / "small")
    _write_fake_brats(root, ["Brats18_A_1"])
    with pytest.raises(ValueError, match="empty dataset"):  # default 1000-pixel rule drops every slice
        BraTSSlices(root, "all", image_size=48, cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------- folder dataset

def _write_folder(root, n=3, masks=True, fmt="png"):
    from PIL import Image

    os.makedirs(os.path.join(root, "images"))
    if masks:
        os.makedirs(os.path.join(root, "masks"))
    rows = []
    for i in range(n):
        name = f"img{i}.{fmt}"
        arr = (np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)
        if fmt == "png":
            Image.fromarray(arr).save(os.path.join(root, "images", name))
        else:
            np.save(os.path.join(root, "images", name), np.stack([arr, arr]).astype(np.float32))
        if masks:
            m = np.zeros((16, 16), np.uint8)
            m[4:8, 4:8] = 255 * (i % 2)
            Image.fromarray(m).save(os.path.join(root, "masks", f"img{i}.png"))
        rows.append({"filename": name, "label": i % 2})
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label"])
        w.writeheader()
        w.writerows(rows)


def test_folder_dataset_png_and_npy(tmp_path):
    _write_folder(str(tmp_path / "png"))
    ds = FolderDataset(str(tmp_path / "png"))
    img, label, mask = ds[1]
    assert img.shape == (1, 16, 16) and int(label) == 1 and int(mask.sum()) == 16 and ds.has_masks
    _write_folder(str(tmp_path / "npy"), masks=False, fmt="npy")
    ds = FolderDataset(str(tmp_path / "npy"))
    img, label, mask = ds[0]
    assert img.shape == (2, 16, 16) and not mask.any() and not ds.has_masks


def test_folder_dataset_errors(tmp_path):
    _write_folder(str(tmp_path / "a"))
    os.remove(tmp_path / "a" / "masks" / "img2.png")
    ds = FolderDataset(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="mask file for 'img2.png' is missing"):
        ds[2]
    os.makedirs(tmp_path / "b")
    (tmp_path / "b" / "labels.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match="empty dataset"):
        FolderDataset(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="does not exist"):
        FolderDataset(str(tmp_path / "c"))


def test_build_datasets_sources(tmp_path):
    train, val = build_datasets("synthetic", image_size=32, n_train=4, n_val=2, seed=5)
    assert len(train) == 4 and len(val) == 2 and not torch.equal(train[0][0], val[0][0])
    with pytest.raises(ValueError, match="needs --data-root"):
        build_datasets("brats")
    with pytest.raises(ValueError, match="unknown data source"):
        build_datasets("imagenet", root="x")
