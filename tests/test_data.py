import csv
import math
import os
from pathlib import Path

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
from convex_attention.paper.data.brats import (
    find_patients,
    preprocess_patient,
    resize_slice,
    split_patients,
    split_slice,
)
from convex_attention.paper.data.synthetic import (
    MIMIC_TYPES,
    SyntheticRimLesions,
    min_lesion_area,
    render_rim_image,
    synthetic_dataset,
)


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


@pytest.mark.slow  # draws synthetic sets at several difficulties (~0.5 s)
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


# ---------------------------------------------------------------- rim lesions among mimics (the default)

def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it."""
    p = np.pad(region, 1)
    return region & ~(p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


def test_rim_is_deterministic_labelled_and_masks_only_lesions():
    a = SyntheticRimLesions(16, image_size=48, seed=3)
    b = SyntheticRimLesions(16, image_size=48, seed=3)
    for i in (0, 7, 15):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
    assert not torch.equal(a[0][0], SyntheticRimLesions(16, image_size=48, seed=4)[0][0])
    labels = []
    for i in range(16):
        img, label, mask = a[i]
        assert img.shape == (4, 48, 48) and img.dtype == torch.float32 and mask.dtype == torch.bool
        assert label.dtype == torch.int64 and bool(torch.isfinite(img).all())
        r = a.render(i)
        assert torch.equal(r["image"], img) and torch.equal(r["mask"], mask)
        lesions = [j for j, k in enumerate(r["kinds"]) if k == "lesion"]
        assert len(lesions) == int(label)  # one lesion in a lesion image, none in a normal one
        expected = (r["structure"] == lesions[0]) if lesions else torch.zeros_like(mask)
        assert torch.equal(mask, expected)  # the mask marks the lesion only, never a mimic
        labels.append(int(label))
    assert 0 < sum(labels) < 16
    assert synthetic_dataset("rim", 2, 48).__class__ is SyntheticRimLesions
    assert synthetic_dataset("blobs", 2, 48).__class__ is SyntheticLesions


def test_rim_sizes_follow_the_papers_area_rule():
    assert (min_lesion_area(240), min_lesion_area(128), min_lesion_area(48)) == (1000, 285, 40)
    for S, d in ((48, 0.0), (96, 1.0)):
        ds = SyntheticRimLesions(12, image_size=S, difficulty=d, seed=1, lesion_fraction=1.0)
        for i in range(len(ds)):
            r = ds.render(i)
            assert r["dropped"] == 0
            for j, area in enumerate(r["areas"]):
                assert area >= min_lesion_area(S)
                assert int((r["structure"] == j).sum()) == area  # exact areas, no overlap
            assert int(r["mask"].sum()) >= min_lesion_area(S)


@pytest.mark.slow  # draws a synthetic set large enough for its rates (~0.4 s)
def test_rim_both_classes_carry_the_same_structures():
    ds = SyntheticRimLesions(30, image_size=64, seed=2)
    for i in range(len(ds)):
        r = ds.render(i)
        assert len(r["kinds"]) == 4 and r["dropped"] == 0  # 1 + mimic_rate (3), lesion image or not
        assert set(r["kinds"]) <= set(MIMIC_TYPES) | {"lesion"}
    only_split = SyntheticRimLesions(10, image_size=64, seed=2, mimic_types=("split",))
    assert {k for i in range(10) for k in only_split.render(i)["kinds"]} <= {"split", "lesion"}
    counts = {len(SyntheticRimLesions(20, 64, seed=2, mimic_rate=2.5).render(i)["kinds"]) for i in range(20)}
    assert counts == {3, 4}  # 1 + 2 + Bernoulli(0.5)
    none = SyntheticRimLesions(6, 64, seed=2, mimic_rate=0.0)
    assert all(len(none.render(i)["kinds"]) == 1 for i in range(6))  # a normal image holds one mimic


def test_rim_label_rests_on_the_arrangement():
    """Lesions: core enclosed by rim; inverted mimics: the reverse; split: both touch the outline."""
    ds = SyntheticRimLesions(10, image_size=96, seed=5)
    seen = set()
    for i in range(len(ds)):
        r = ds.render(i)
        structure, compartment = r["structure"].numpy(), r["compartment"].numpy()
        assert _boundary(structure >= 0).sum() == sum(_boundary(structure == j).sum() for j in range(len(r["kinds"])))
        for j, kind in enumerate(r["kinds"]):
            region = structure == j
            edge = compartment[_boundary(region)]
            inner = compartment[region & ~_boundary(region)]
            assert {1, 2} <= set(compartment[region].tolist())  # both compartments, in every kind
            if kind == "lesion":
                assert (edge == 2).all() and (inner == 1).any()  # the rim encloses the core
            elif kind == "inverted":
                assert (edge == 1).all() and (inner == 2).any()
            elif kind == "split":
                assert {1, 2} <= set(edge.tolist())
            seen.add(kind)
    assert seen == {"lesion", *MIMIC_TYPES}


def test_rim_lesion_intensities_vary_and_difficulty_lowers_contrast():
    def lesion_stats(difficulty):
        ds = SyntheticRimLesions(16, image_size=64, difficulty=difficulty, seed=0, lesion_fraction=1.0)
        rims, ratios, contrast = [], [], []
        for i in range(len(ds)):
            r = ds.render(i)
            img, comp, mask = r["image"], r["compartment"], r["mask"]
            rim, core = mask & (comp == 2), mask & (comp == 1)
            tissue = (r["structure"] < 0) & (img[2] != 0)
            rims.append(float(img[2][rim].mean()))
            ratios.append(float(img[0][core].mean() / img[3][core].mean()))
            contrast.append(float(img[2][rim].mean() - img[2][tissue].median()))
        return np.array(rims), np.array(ratios), float(np.mean(contrast))

    rims, ratios, easy = lesion_stats(0.0)
    assert rims.std() / rims.mean() > 0.05  # amplitudes vary from lesion to lesion
    assert ratios.std() / abs(ratios.mean()) > 0.05  # and so does the channel signature
    hard = lesion_stats(1.0)[2]
    assert easy > hard > 0


def test_rim_bad_arguments():
    for kwargs, match in ((dict(n=0), "at least one image"), (dict(difficulty=1.5), "difficulty"),
                          (dict(image_size=24), "image_size"), (dict(mimic_rate=-1.0), "mimic_rate"),
                          (dict(mimic_rate=float("nan")), "mimic_rate"), (dict(mimic_types=()), "mimic_types"),
                          (dict(mimic_types=("ring",)), "mimic_types"), (dict(channels=0), "channels"),
                          (dict(channels=True), "channels"), (dict(channels=np.True_), "channels"),
                          (dict(lesion_fraction=2.0), "lesion_fraction")):
        with pytest.raises(ValueError, match=match):
            SyntheticRimLesions(**{"n": 4, **kwargs})
    with pytest.raises(IndexError):
        SyntheticRimLesions(4, 48)[4]
    with pytest.raises(ValueError, match="unknown synthetic generator"):
        synthetic_dataset("spots", 4)
    assert render_rim_image(0, 0, 48, channels=6)[0].shape == (6, 48, 48)


@pytest.mark.slow  # draws a synthetic set large enough for its rates (~1 s)
def test_brightest_the_lesion_decides_only_when_it_is_the_brightest():
    from convex_attention.paper.data.synthetic import BRIGHTEST, SyntheticBrightestLesions, synthetic_dataset

    ds = SyntheticBrightestLesions(40, image_size=64, difficulty=0.3, seed=4)
    assert synthetic_dataset("brightest", 2, 64).__class__ is SyntheticBrightestLesions and ds.mimic_rate == 5.0
    strength = 1 - 0.55 * 0.3
    labels, offsets = [], []
    for i in range(len(ds)):
        r = ds.render(i)
        kinds, amps = r["kinds"], r["amplitudes"]
        # one lesion in every image: presence says nothing
        assert kinds.count("lesion") == 1 and len(amps) == len(kinds)
        lesion = kinds.index("lesion")
        brightest = max(range(len(amps)), key=amps.__getitem__)
        assert r["label"] == int(brightest == lesion)
        # the decisive structure sits u = 1 above the shared offset, the others at most 0.8
        assert amps[brightest] == pytest.approx(strength * (BRIGHTEST["base"] + r["offset"] + 1.0))
        assert all(a <= strength * (BRIGHTEST["base"] + r["offset"] + 0.8) + 1e-9 for j, a in enumerate(amps)
                   if j != brightest)
        mask = r["mask"]
        # marks the lesion in lesion images only
        assert torch.equal(mask, (r["structure"] == lesion) & bool(r["label"]))
        assert r["specks"] == BRIGHTEST["specks"]
        labels.append(r["label"])
        offsets.append(r["offset"])
    assert 0.3 < sum(labels) / len(labels) < 0.7 and max(offsets) - min(offsets) > 1.0
    item = ds[3]
    assert torch.equal(item[0], ds[3][0]) and item[0].dtype == torch.float32 and torch.isfinite(item[0]).all()
    with pytest.raises(ValueError, match="label_rule"):
        render_rim_image(0, 0, 64, label_rule="largest")


def test_rim_images_are_unchanged_by_the_brightest_rule():
    """The default benchmark renders what it rendered before the "brightest" rule shared its code
    (values taken from the module before that change)."""
    img, label, mask = SyntheticRimLesions(8, image_size=48, seed=7)[0]
    assert int(label) == 1 and int(mask.sum()) == 60
    assert float(img.double().abs().sum()) == pytest.approx(3871.25214592, abs=1e-3)
    assert img[2, 24, 20:24].tolist() == pytest.approx([-0.2387718, -0.20841557, 0.48519233, 0.21085125], abs=1e-5)


def test_blobs_generator_is_unchanged():
    """The previous generator stays available under its name and renders what it rendered."""
    img, label, mask = SyntheticLesions(8, image_size=32, seed=7)[0]
    assert int(label) == 1 and int(mask.sum()) == 13
    assert float(img.double().abs().sum()) == pytest.approx(1674.41195585, abs=1e-3)
    assert img[0, 16, 10:14].tolist() == pytest.approx([-0.58911288, -0.65152371, -0.13997692, 0.19069003], abs=1e-5)


def test_rim_argument_checks_hold_at_their_bounds():
    """Each documented range is enforced at its edge, not only far outside it."""
    for kwargs, match in ((dict(image_size=31), "image_size"), (dict(image_size=48.0), "image_size"),
                          (dict(channels=2.0), "channels"), (dict(difficulty=-0.1), "difficulty"),
                          (dict(lesion_fraction=-0.1), "lesion_fraction"), (dict(mimic_rate=8.5), "mimic_rate"),
                          (dict(mimic_rate=-0.5), "mimic_rate"), (dict(n=2.5), "at least one image")):
        with pytest.raises(ValueError, match=match):
            SyntheticRimLesions(**{"n": 4, "image_size": 48, **kwargs})
    for ok in (dict(image_size=32), dict(difficulty=0.0), dict(difficulty=1.0), dict(lesion_fraction=0.0),
               dict(mimic_rate=8.0)):
        SyntheticRimLesions(**{"n": 4, "image_size": 48, **ok})
    # a dataset of n images has images 0 .. n-1 only: a negative index is no image of it
    for ds in (SyntheticRimLesions(4, 48), SyntheticLesions(4, 32)):
        with pytest.raises(IndexError):
            ds[-1]
    with pytest.raises(ValueError, match="image_size"):
        SyntheticLesions(4, image_size=8)


def test_rim_mimic_types_name_a_set_of_kinds():
    """One name, or a name given twice, picks the same kinds as the plain subset."""
    plain = SyntheticRimLesions(6, 48, seed=1, mimic_types=("split",))
    for other in (SyntheticRimLesions(6, 48, seed=1, mimic_types="split"),
                  SyntheticRimLesions(6, 48, seed=1, mimic_types=("split", "split"))):
        assert other.mimic_types == ("split",)
        assert all(torch.equal(other[i][0], plain[i][0]) for i in range(3))
    twice = SyntheticRimLesions(8, 48, seed=1, mimic_types=("split", "split", "mottled"))
    once = SyntheticRimLesions(8, 48, seed=1, mimic_types=("split", "mottled"))
    assert all(once.render(i)["kinds"] == twice.render(i)["kinds"] for i in range(8))


def test_rim_structure_count_and_sizes_follow_mimic_rate_and_difficulty():
    """N = 1 + floor(mimic_rate) (+1 with probability frac(mimic_rate)); areas drawn from
    A_min * U[1, 2 - 0.8 * difficulty]."""
    counts = {len(SyntheticRimLesions(16, 48, seed=3, mimic_rate=1.75).render(i)["kinds"]) for i in range(16)}
    assert counts == {2, 3}
    a_min = min_lesion_area(48)
    for d in (0.0, 1.0):
        ds = SyntheticRimLesions(12, image_size=48, difficulty=d, seed=1)
        areas = [a for i in range(len(ds)) for a in ds.render(i)["areas"]]
        assert min(areas) >= a_min and max(areas) <= math.ceil(a_min * (2.0 - 0.8 * d))
        if d == 0.0:
            assert max(areas) > math.ceil(a_min * 1.2)  # easy structures reach beyond the hard range


def test_rim_noise_grows_with_difficulty():
    """Noise ``0.03 + 0.12 d``: the tissue's pixel-to-pixel differences grow with difficulty."""
    def roughness(difficulty):
        ds = SyntheticRimLesions(6, image_size=48, difficulty=difficulty, seed=0)
        out = []
        for i in range(len(ds)):
            r = ds.render(i)
            img, tissue = r["image"], (r["structure"] < 0) & (r["image"][0] != 0)
            pairs = tissue[:, 1:] & tissue[:, :-1]
            out.append(float((img[:, :, 1:] - img[:, :, :-1])[:, pairs].abs().median()))
        return np.mean(out)

    easy, middle, hard = roughness(0.0), roughness(0.5), roughness(1.0)
    assert hard > 2 * easy and easy < middle < hard


def test_rim_mottled_mimics_are_not_enclosed():
    """Mottled mimics interleave the compartments: both touch the tissue, unlike a lesion."""
    ds = SyntheticRimLesions(8, image_size=64, seed=5, mimic_types=("mottled",))
    seen = 0
    for i in range(len(ds)):
        r = ds.render(i)
        structure, compartment = r["structure"].numpy(), r["compartment"].numpy()
        for j, kind in enumerate(r["kinds"]):
            if kind == "mottled":
                assert {1, 2} <= set(compartment[_boundary(structure == j)].tolist())
                seen += 1
    assert seen > 10


@pytest.mark.slow  # draws synthetic sets for each edge case (~0.4 s)
def test_brightest_rule_edge_cases_and_normalisation():
    from convex_attention.paper.data.synthetic import BRIGHTEST, SyntheticBrightestLesions, render_rim_image

    # a lesion alone is the brightest structure: label 1, its mask set (the dataset refuses a
    # mimic_rate below 1, where that is the common case: the generator function takes it)
    for i in range(6):
        r = render_rim_image(1, i, image_size=48, mimic_rate=0.0, lesion_fraction=0.0, details=True,
                             label_rule="brightest")
        assert r["kinds"] == ["lesion"] and r["label"] == 1 and torch.equal(r["mask"], r["structure"] == 0)
    with pytest.raises(ValueError, match="mimic_rate must be at least 1"):
        SyntheticBrightestLesions(6, image_size=48, seed=1, mimic_rate=0.5)
    # mimic_types reach the brightest generator too
    split = SyntheticBrightestLesions(4, image_size=48, seed=1, mimic_types=("split",))
    assert all(set(split.render(i)["kinds"]) == {"lesion", "split"} for i in range(4))
    ds = SyntheticBrightestLesions(16, image_size=48, difficulty=0.3, seed=1)
    strength, (lo, hi) = 1 - 0.55 * 0.3, BRIGHTEST["lesion_in_normal"]
    normal = 0
    for i in range(len(ds)):
        r = ds.render(i)
        img = r["image"]
        if not r["label"]:  # the lesion of a normal image: u ~ U[lesion_in_normal]
            u = r["amplitudes"][r["kinds"].index("lesion")] / strength - BRIGHTEST["base"] - r["offset"]
            assert lo - 1e-9 <= u <= hi + 1e-9
            normal += 1
        # robust normalisation over the head: median 0, IQR / 1.349 = 1 per channel
        head = img[:, img.abs().sum(0) != 0]
        q = torch.quantile(head, torch.tensor([0.25, 0.5, 0.75]), dim=1)
        assert q[1].abs().max() < 1e-3 and ((q[2] - q[0]) / 1.349 - 1).abs().max() < 1e-3
        # additive per-pixel noise of std 1.0 raw units, far above the tissue's spread (IQR / 1.349 = 1 here)
        core = (r["structure"] == 0) & (r["compartment"] == 1)
        assert float(img[:, core].std(1).min()) > 1.0
    assert normal > 3


def test_brightest_specks_rank_with_the_decisive_structure_per_pixel():
    """The specks are as bright as the decisive structure whatever the image's offset: in every
    image, tissue pixels outside the structures reach the decisive structure's median brightness."""
    from convex_attention.paper.data.synthetic import BRIGHTEST, SyntheticBrightestLesions

    ds = SyntheticBrightestLesions(16, image_size=48, difficulty=0.3, seed=1)
    speck_area = max(3, int(min_lesion_area(48) * BRIGHTEST["speck_area"]))
    offsets = []
    for i in range(len(ds)):
        r = ds.render(i)
        img = r["image"]
        tissue = (img.abs().sum(0) != 0) & (r["structure"] < 0)
        score = img[0] + img[3]  # both signatures are bright in ch. 0 and ch. 3
        assert int((score[tissue] >= score[r["decisive"]].median()).sum()) >= 2 * speck_area
        offsets.append(r["offset"])
    assert max(offsets) > 1.5  # large offsets included


def test_blobs_lesion_fraction_sets_the_share_of_lesion_images():
    for fraction in (0.0, 1.0):
        ds = SyntheticLesions(8, image_size=32, seed=2, lesion_fraction=fraction)
        assert all(int(ds[i][1]) == int(fraction) and bool(ds[i][2].any()) == bool(fraction) for i in range(8))


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
    # the tumour covers array axis 0 (left-right) 10..29 and axis 1 (anterior-posterior) 26..39;
    # images have left-right columns: the tumour spans columns 10..29, left of the middle, so
    # the tumour image holds columns 0..29 and the healthy image columns 30..47
    for i in range(len(ds)):
        img, label, mask = ds[i]
        assert img.shape == (4, 48, 48) and mask.shape == (48, 48)
        if label == 1:
            assert mask.sum() == 280 and bool(mask[26:40, 10:30].all())
            assert bool((img[:, :, 4:30] != 0).any())
            assert (img[:, :, 30:] == 0).all()  # the healthy side is zero-filled
        else:
            assert not mask.any()
            assert (img[:, :, :30] == 0).all() and bool((img[:, :, 30:44] != 0).any())
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


def test_the_brats_cache_touches_no_file_of_the_users(tmp_path):
    """Before: its metadata went through META.tmp, overwriting and renaming away a file of that name."""
    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1"])
    cache = tmp_path / "cache"
    BraTSSlices(root, "all", min_tumour_area=100, image_size=64, cache_dir=str(cache))
    metas = [name for name in os.listdir(cache) if name.endswith(".json")]
    (cache / (metas[0] + ".tmp")).write_text("the user's")
    for name in metas:
        os.remove(cache / name)  # the cache is redone
    BraTSSlices(root, "all", min_tumour_area=100, image_size=64, cache_dir=str(cache))
    assert (cache / (metas[0] + ".tmp")).read_text() == "the user's"
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp") and n != metas[0] + ".tmp"]



def test_brats_cache_is_redone_when_the_patients_files_change(tmp_path, monkeypatch):
    """Before: the cache key was the patient id and the settings only, so a patient whose
    files were replaced (re-extracted, a corrected segmentation) kept its old slices."""
    import shutil

    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1"], tumour_slices=(2, 3))
    cache = str(tmp_path / "cache")
    first = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    assert len(first) == 4
    shutil.rmtree(os.path.join(root, "HGG"))
    _write_fake_brats(root, ["Brats18_A_1"], tumour_slices=(0, 1, 2, 3), seed=7)
    again = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    fresh = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(tmp_path / "fresh"))
    assert len(again) == len(fresh) == 8
    assert all(torch.equal(again[i][0], fresh[i][0]) for i in range(8))
    # one file touched (same bytes, a new modification time) is enough
    seg = os.path.join(root, "HGG", "Brats18_A_1", "Brats18_A_1_seg.nii.gz")
    st = os.stat(seg)
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    from convex_attention.paper.data import brats

    calls = []
    real = brats.preprocess_patient
    monkeypatch.setattr(brats, "preprocess_patient", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert len(BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=cache)) == 8
    assert len(calls) == 1
    BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    assert len(calls) == 1  # unchanged since: read from the cache


def test_two_brats_folders_can_share_one_cache_folder(tmp_path):
    """Before: a patient id found in two data folders got the first folder's slices from the
    shared cache."""
    cache = str(tmp_path / "cache")
    _write_fake_brats(str(tmp_path / "a"), ["Brats18_A_1"], seed=1)
    _write_fake_brats(str(tmp_path / "b"), ["Brats18_A_1"], seed=2, tumour_slices=(0, 1, 2, 3))
    a = BraTSSlices(str(tmp_path / "a"), "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    b = BraTSSlices(str(tmp_path / "b"), "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    alone = BraTSSlices(str(tmp_path / "b"), "all", min_tumour_area=100, image_size=48, cache_dir=str(tmp_path / "c"))
    assert len(a) == 4 and len(b) == len(alone) == 8 and torch.equal(b[0][0], alone[0][0])
    a_again = BraTSSlices(str(tmp_path / "a"), "all", min_tumour_area=100, image_size=48, cache_dir=cache)
    assert len(a_again) == 4 and torch.equal(a_again[0][0], a[0][0])


@pytest.mark.parametrize("damage", ["truncated", "missing", "other_shape", "garbage"])
def test_a_damaged_brats_cache_is_rebuilt_or_reported_in_one_line(tmp_path, monkeypatch, damage):
    """Before: a cache entry whose metadata was intact was trusted: a truncated or missing
    .npy file was found only when an image was read, in the middle of a run."""
    from convex_attention.paper.data import brats

    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1"])
    cache = tmp_path / "cache"
    good = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))
    expected = [good[i][0] for i in range(len(good))]
    (images,) = [p for p in cache.iterdir() if p.name.endswith(".images.npy")]

    def spoil():
        if damage == "truncated":
            images.write_bytes(images.read_bytes()[:-100])
        elif damage == "missing":
            images.unlink()
        elif damage == "other_shape":
            np.save(images, np.zeros((3, 4, 48, 48), np.float32))
        else:
            images.write_bytes(b"not an array")

    spoil()
    again = BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))  # rebuilt
    assert len(again) == 4 and all(torch.equal(again[i][0], expected[i]) for i in range(4))
    # a cache folder that cannot be written: one line naming the entry, what is wrong and the fix
    spoil()
    monkeypatch.setattr(brats.os, "makedirs", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(ValueError, match=r"the cache of patient 'Brats18_A_1' \(.*\) is damaged \(images\.npy .*\) "
                                         r"and cannot be rebuilt: .*--cache-dir") as err:
        BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))
    assert "\n" not in str(err.value)


def test_the_brats_cache_is_written_atomically(tmp_path, monkeypatch):
    """Before: the .npy files were written in place: a write that failed half way left a
    half-written file under the cache's own name."""
    from convex_attention.paper.data import brats

    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1"])
    cache = tmp_path / "cache"
    BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    for meta in cache.glob("*.json"):
        meta.unlink()  # the entry is redone
    real_save = np.save

    def save_half(file, arr, *args, **kwargs):
        if arr.dtype == bool:  # the masks: write part of the file, then fail (a full disk)
            (file.write if hasattr(file, "write") else open(file, "wb").write)(b"\x93NUMPY")
            raise OSError(28, "No space left on device")
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(brats.np, "save", save_half)
    with pytest.raises(ValueError, match="cannot write the cache of patient 'Brats18_A_1'.*No space left"):
        BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))
    after = {p.name: p.read_bytes() for p in cache.iterdir()}
    masks = next(n for n in before if n.endswith(".masks.npy"))
    assert after[masks] == before[masks]  # never half a file under the cache's own name
    assert not [n for n in after if n.endswith(".tmp")]
    assert not [n for n in after if n.endswith(".json")]  # the entry is not complete: it is redone next time
    monkeypatch.setattr(brats.np, "save", real_save)
    assert len(BraTSSlices(root, "all", min_tumour_area=100, image_size=48, cache_dir=str(cache))) == 4

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


def _write_patient(root, pid, vols, seg, signs=(1, 1, 1), perm=(0, 1, 2), group="HGG"):
    """Save canonical ``(LR, AP, SI)`` arrays as NIfTI files whose array axes are ``perm`` of
    the canonical ones (stored axis i = canonical axis perm[i]) with the matching affine;
    ``signs`` (+1: index grows towards R, A, S) flips the axis directions in the affine only."""
    import nibabel as nib

    folder = os.path.join(root, group, pid)
    os.makedirs(folder, exist_ok=True)
    base = np.diag(list(signs) + [1]).astype(float)
    affine = np.eye(4)
    affine[:3, :3] = base[:3, list(perm)]
    for name, arr in {**vols, "seg": seg}.items():
        stored = np.ascontiguousarray(np.transpose(arr, perm))
        nib.save(nib.Nifti1Image(stored.astype(np.int16 if name == "seg" else np.float32), affine),
                 os.path.join(folder, f"{pid}_{name}.nii.gz"))
    return folder


def _anatomy(shape=(40, 40, 4), seed=0):
    """Canonical (LR, AP, SI) volumes: a brain box whose FLAIR grows with the left-right index
    and T1 with the anterior-posterior index (so a piece shows which axis it was cut along)."""
    rng = np.random.default_rng(seed)
    LR, AP, _ = shape
    brain = np.zeros(shape, bool)
    brain[2:LR - 2, 3:AP - 3, :] = True
    lr = np.arange(LR, dtype=np.float32)[:, None, None]
    ap = np.arange(AP, dtype=np.float32)[None, :, None]
    vols = {"flair": (100 + lr + 0 * ap) * brain, "t1": (100 + ap + 0 * lr) * brain,
            "t1ce": rng.normal(100, 10, shape) * brain, "t2": rng.normal(200, 10, shape) * brain}
    return {k: np.broadcast_to(v, shape).astype(np.float32) for k, v in vols.items()}, np.zeros(shape, np.int16)


def _authors_pieces(vols, seg, z):
    """The authors' preprocessing of slice ``z`` (their create_dataset.py, rot90 and split):
    ``(tumour image, healthy image, tumour mask)`` on raw intensities."""
    x = np.stack([np.rot90(vols[m], 1, axes=(0, 2)) for m in ("flair", "t1", "t1ce", "t2")])
    mask = np.rot90(seg > 0, 1, axes=(0, 2)).astype(np.uint8)
    i = seg.shape[2] - 1 - z
    cols = np.where(mask[i].sum(axis=0))[0]
    x_min, x_max, W = cols.min(), cols.max(), mask.shape[2]
    left, right = np.zeros_like(x[:, i]), np.zeros_like(x[:, i])
    cut = x_max if (x_min + x_max) / 2 < W / 2 else x_min
    left[:, :, :cut], right[:, :, cut:] = x[:, i, :, :cut], x[:, i, :, cut:]
    tumour_left = (x_min + x_max) / 2 < W / 2
    return (left, right, mask[i]) if tumour_left else (right, left, mask[i])


def test_brats_slices_are_the_authors_rot90_and_split():
    vols, seg = _anatomy()
    seg[5:15, 10:30, 1] = 1  # left of the middle (left-right index < 20)
    seg[25:36, 8:20, 2] = 2  # right of it
    seg[0:40, 10:12, 3] = 4  # spans every column: no healthy side, dropped
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        folder = _write_patient(root, "P", vols, seg, signs=(-1, -1, 1))  # BraTS: affine diag(-1, -1, 1)
        out = preprocess_patient(folder, "P", min_tumour_area=50, image_size=40, normalisation="dataset")
    assert out["slices"].tolist() == [1, 1, 2, 2] and out["labels"].tolist() == [1, 0, 1, 0]
    for k, z in ((0, 1), (2, 2)):
        theirs_tumour, theirs_healthy, their_mask = _authors_pieces(vols, seg, z)
        tumour, healthy, mask = out["images"][k], out["images"][k + 1], out["masks"][k]
        assert np.array_equal(mask, their_mask > 0) and not out["masks"][k + 1].any()
        cols = np.nonzero(mask.any(0))[0]
        if z == 1:  # tumour on the left: the authors give column x_max to the healthy side; here the tumour keeps it
            x_max = cols.max()
            assert np.array_equal(tumour[:, :, :x_max], theirs_tumour[:, :, :x_max])
            assert np.array_equal(healthy[:, :, x_max + 1:], theirs_healthy[:, :, x_max + 1:])
            assert (healthy[:, :, :x_max + 1] == 0).all() and (tumour[:, :, x_max + 1:] == 0).all()
        else:
            assert np.array_equal(tumour, theirs_tumour) and np.array_equal(healthy, theirs_healthy)
    moments = out["moments"]
    for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
        assert moments[c].tolist() == pytest.approx([vols[m].size, vols[m].sum(), (vols[m].astype(float) ** 2).sum()],
                                                    rel=1e-6)


def test_brats_splits_left_right_whatever_the_array_layout(tmp_path):
    """A lesion in the left hemisphere ends up in the left piece, along the left-right axis the
    affine names, however the volume's axes are stored."""
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1:3] = 1  # left-right index 4..15: left of the middle only
    pieces = {}
    for name, perm in (("canonical", (0, 1, 2)), ("permuted", (2, 1, 0)), ("rolled", (1, 2, 0))):
        root = str(tmp_path / name)
        _write_patient(root, "P", vols, seg, perm=perm)
        ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / f"c-{name}"),
                         normalisation="dataset")
        pieces[name] = [ds[i] for i in range(len(ds))]
        assert len(ds) == 4
        for i, (img, label, mask) in enumerate(pieces[name]):
            brain = ds.brain_mask(i)
            # raw FLAIR is 100 + the left-right index: read it back in every brain pixel
            lr = torch.full(img.shape[1:], float("nan"))
            lr[brain] = img[0][brain] * float(ds.stats[0, 1]) + float(ds.stats[0, 0]) - 100
            if label == 1:
                assert bool(mask.any()) and int(mask.any(0).nonzero().max()) == 15
                assert float(lr[brain].max()) == pytest.approx(15, abs=1e-3)  # the left piece: left-right 0..15
            else:
                assert not mask.any() and float(lr[brain].min()) == pytest.approx(16, abs=1e-3)  # the right piece
            # columns run left-right: each column holds one left-right index
            col_means = lr.nanmean(0)
            finite = ~torch.isnan(col_means)
            assert bool(finite.any()) and torch.allclose(col_means[finite], torch.arange(40.0)[finite], atol=1e-3)
    for name in ("permuted", "rolled"):
        for (a, la, ma), (b, lb, mb) in zip(pieces["canonical"], pieces[name]):
            assert torch.allclose(a, b, atol=1e-5) and la == lb and torch.equal(ma, mb)


def test_brats_split_slice_rule():
    t = np.zeros((6, 10), bool)
    t[2, 1:4] = True  # centre 2 < 5: columns 0..3 are the tumour image
    assert split_slice(t).tolist() == [True] * 4 + [False] * 6
    t[:] = False
    t[2, 5:8] = True  # centre 6 >= 5: columns 5.. are the tumour image
    assert split_slice(t).tolist() == [False] * 5 + [True] * 5
    t[:] = False
    t[2, 3:7] = True  # centre 4.5 < 5
    assert split_slice(t).tolist() == [True] * 7 + [False] * 3
    t[:] = False
    t[2, 1:10] = True  # centre 5 >= 5: columns 1.. are the tumour image
    assert split_slice(t).tolist() == [False] + [True] * 9
    t[2, 0] = True  # centre 4.5 < 5 and the tumour reaches the far edge: no healthy side
    assert split_slice(t) is None


def test_brats_resizes_and_never_crops(tmp_path):
    vols, seg = _anatomy((48, 40, 3))  # non-square slices: 40 rows (anterior-posterior) x 48 columns
    seg[0:8, 10:30, 1] = 1  # at the left edge: a centre crop to 32 would cut it away
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    for size in (32, 256):
        ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=size, cache_dir=str(tmp_path / f"c{size}"))
        (img, label, mask), label0 = ds[0], ds[1][1]
        assert img.shape == (4, size, size) and int(label) == 1 and int(label0) == 0
        scale = size / 48  # padded to 48 x 48, then resized
        assert int(mask.sum()) == pytest.approx(160 * scale ** 2, rel=0.15)
        brain = ds.brain_mask(0) | ds.brain_mask(1)
        rows, cols = brain.any(1).nonzero(), brain.any(0).nonzero()
        # the whole brain box (rows 3..36 of 40, padded by 4; columns 2..45 of 48) is still there
        assert int(rows.min()) <= round(7 * scale) and int(rows.max()) >= int(40 * scale) - 1
        assert int(cols.min()) <= round(2 * scale) and int(cols.max()) >= int(45 * scale)
    square = np.ones((2, 40, 40), np.float32)
    assert resize_slice(square, 256).shape == (2, 256, 256) and np.allclose(resize_slice(square, 256), 1)
    assert np.allclose(resize_slice(square, 20), 1)
    m = np.zeros((1, 40, 40), np.float32)
    m[0, 10:20, 10:20] = 1
    assert resize_slice(m, 80, mask=True).dtype == bool and int(resize_slice(m, 80, mask=True).sum()) == 400


def test_brats_normalisation_volume_and_dataset(tmp_path):
    root = str(tmp_path / "b")
    raw = {}
    for k, pid in enumerate(["Brats18_A_1", "Brats18_B_2", "Brats18_C_3", "Brats18_D_4"]):
        vols, seg = _anatomy(seed=k)
        vols = {m: v * (1 + k) for m, v in vols.items()}  # patients differ in scale
        seg[4:16, 12:30, 1] = 1
        _write_patient(root, pid, vols, seg)
        raw[pid] = vols
    kw = dict(val_fraction=0.25, seed=0, min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"))
    train = BraTSSlices(root, "train", normalisation="dataset", **kw)
    val = BraTSSlices(root, "val", normalisation="dataset", **kw)
    assert np.array_equal(train.stats, val.stats)  # the validation set uses the training patients' statistics
    for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
        voxels = np.concatenate([raw[p][m].ravel() for p in train.patients]).astype(np.float64)
        assert train.stats[c].tolist() == pytest.approx([voxels.mean(), voxels.std()], rel=1e-5)
    img = val[0][0]
    background = -train.stats[:, 0] / train.stats[:, 1]  # every pixel is normalised, background included
    assert torch.allclose(img[:, 0, 0], torch.from_numpy(background), atol=1e-5)
    per_volume = BraTSSlices(root, "val", normalisation="volume", **kw)
    img = per_volume[0][0]
    assert (img[:, 0, 0] == 0).all()
    assert not np.array_equal(per_volume[0][0].numpy(), val[0][0].numpy())
    with pytest.raises(ValueError, match="normalisation"):
        BraTSSlices(root, "val", normalisation="global", **kw)


def test_brats_data_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"empty dataset: .*'.*empty'.*--data-root"):
        BraTSSlices(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        BraTSSlices(str(tmp_path / "file"))

    def patient(name, **edit):
        vols, seg = _anatomy()
        seg[4:16, 12:30, 1] = 1
        root = str(tmp_path / name)
        folder = _write_patient(root, "Brats18_X_1", vols, seg)
        return root, folder

    root, folder = patient("missing")
    os.remove(os.path.join(folder, "Brats18_X_1_t1ce.nii.gz"))
    missing = r"patient 'Brats18_X_1': missing t1ce volume .*Brats18_X_1_t1ce\.nii\.gz.*restore"
    with pytest.raises(ValueError, match=missing):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c1"))

    import nibabel as nib

    root, folder = patient("shapes")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 5), np.float32), np.eye(4)),
             os.path.join(folder, "Brats18_X_1_t2.nii.gz"))
    with pytest.raises(ValueError, match=r"patient 'Brats18_X_1': volumes differ in shape .*t2 \(40, 40, 5\)"):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c2"))

    root, folder = patient("axes")
    swapped = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 4), np.float32), swapped), os.path.join(folder, "Brats18_X_1_t2.nii.gz"))
    with pytest.raises(ValueError, match=r"patient 'Brats18_X_1': the files' NIfTI affines orient the axes "
                                         r"differently"):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c3"))

    root, folder = patient("nan")
    bad = np.full((40, 40, 4), np.nan, np.float32)
    nib.save(nib.Nifti1Image(bad, np.eye(4)), os.path.join(folder, "Brats18_X_1_flair.nii.gz"))
    with pytest.raises(ValueError, match=r"Brats18_X_1_flair\.nii\.gz' holds NaN"):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c4"))

    root, folder = patient("garbage")
    with open(os.path.join(folder, "Brats18_X_1_t1.nii.gz"), "wb") as f:
        f.write(b"not a nifti file")
    with pytest.raises(ValueError, match=r"cannot read .*Brats18_X_1_t1\.nii\.gz.*re-extract"):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c5"))

    root, _ = patient("twice")
    vols, seg = _anatomy()
    _write_patient(root, "Brats18_X_1", vols, seg, group="LGG")
    with pytest.raises(ValueError, match="appears twice"):
        BraTSSlices(root, "all", cache_dir=str(tmp_path / "c6"))


def test_brats_cache_probe_never_writes_through_a_link(tmp_path, monkeypatch):
    """Before: the cache's write probe opened '.write-probe-<pid>' for writing, so a link put
    there truncated the file it pointed to (a review); it is an exclusive temporary file now."""
    import itertools

    from convex_attention.io import files

    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root, cache = str(tmp_path / "b"), tmp_path / "c"
    _write_patient(root, "Brats18_X_1", vols, seg)
    cache.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    monkeypatch.setattr(files, "_TMP_COUNTER", itertools.count(0))
    for name in (f".write-probe-{os.getpid()}", f".write-probe.{os.getpid()}-0.tmp"):
        os.symlink(victim, cache / name)
    assert len(BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(cache))) == 2
    assert victim.read_text() == "the user's"


def test_brats_read_only_cache(tmp_path, monkeypatch):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root = str(tmp_path / "b")
    _write_patient(root, "Brats18_X_1", vols, seg)
    from convex_attention.paper.data import brats

    real_makedirs = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(root):
            raise PermissionError(13, "Permission denied", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(brats.os, "makedirs", read_only)
    with pytest.raises(ValueError, match=r"cache folder '.*convex_attention_cache' is not writable .*--cache-dir"):
        BraTSSlices(root, "all", min_tumour_area=50, image_size=40)  # the default cache sits in the data folder
    moved = str(tmp_path / "elsewhere")
    ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=moved)  # the fix works
    assert len(ds) == 2
    # a complete cache is read without writing anything, even from a read-only folder
    monkeypatch.setattr(brats.os, "makedirs", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "no")))
    monkeypatch.setattr(brats, "preprocess_patient", lambda *a, **k: (_ for _ in ()).throw(AssertionError("redone")))
    again = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=moved)
    assert torch.equal(again[0][0], ds[0][0])
    a_file = os.path.join(moved, sorted(os.listdir(moved))[0])
    with pytest.raises(ValueError, match="is a file"):
        BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=a_file)


# ---------------------------------------------------------------- folder dataset

def _write_folder(root, n=3, masks=True, fmt="png", seed=0):
    """A FolderDataset of ``n`` random 16x16 images (image i drawn with seed ``seed + i``: a validation folder
    takes another ``seed``, since a set sharing an image with the training set is refused)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"))
    if masks:
        os.makedirs(os.path.join(root, "masks"))
    rows = []
    for i in range(n):
        name = f"img{i}.{fmt}"
        arr = (np.random.default_rng(seed + i).random((16, 16)) * 255).astype(np.uint8)
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
    ds = FolderDataset(str(tmp_path / "a"), scan=False)  # without the scan, found when the item is read
    with pytest.raises(ValueError, match="mask file for 'img2.png' is missing"):
        ds[2]
    os.makedirs(tmp_path / "b")
    (tmp_path / "b" / "labels.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match="empty dataset"):
        FolderDataset(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="does not exist"):
        FolderDataset(str(tmp_path / "c"))



def test_folder_masks_are_checked_when_the_dataset_is_built(tmp_path):
    """Before: masks were checked only when an item was read, so a missing or misshapen mask
    of a training image stopped train in the middle of its first epoch."""
    from PIL import Image

    _write_folder(str(tmp_path / "missing"))
    os.remove(tmp_path / "missing" / "masks" / "img2.png")
    with pytest.raises(ValueError, match=r"mask file for 'img2.png' is missing in .*masks.*add it"):
        FolderDataset(str(tmp_path / "missing"))
    _write_folder(str(tmp_path / "shape"))
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "shape" / "masks" / "img1.png")
    with pytest.raises(ValueError, match=r"mask of 'img1.png' .* has shape \(8, 16\), the image \(16, 16\)"):
        FolderDataset(str(tmp_path / "shape"))
    _write_folder(str(tmp_path / "npy_mask"))
    os.remove(tmp_path / "npy_mask" / "masks" / "img1.png")
    np.save(tmp_path / "npy_mask" / "masks" / "img1.npy", np.ones((16, 16), bool))  # found by its stem
    assert bool(FolderDataset(str(tmp_path / "npy_mask"))[1][2].all())


def test_training_reads_no_mask_of_a_folder(tmp_path, monkeypatch):
    """labels_only, what training and evaluation read, never opens a mask file."""
    from convex_attention.paper.data import folder

    _write_folder(str(tmp_path / "a"))
    ds = FolderDataset(str(tmp_path / "a"))
    full = ds[1]
    real = folder._read_array
    monkeypatch.setattr(folder, "_read_array", lambda path: (_ for _ in ()).throw(AssertionError(path))
                        if os.sep + "masks" + os.sep in path else real(path))
    image, label = labels_only(ds)[1]
    assert torch.equal(image, full[0]) and int(label) == int(full[1]) == 1


def test_folder_train_and_val_images_must_share_one_shape(tmp_path):
    """Before: 16x16 training and 32x32 validation images were accepted; training stopped with
    a traceback when the first epoch's validation began."""
    from PIL import Image

    _write_folder(str(tmp_path / "r" / "train"))
    _write_folder(str(tmp_path / "r" / "val"), seed=100)
    for i in range(3):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "r" / "val" / "images" / f"img{i}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "r" / "val" / "masks" / f"img{i}.png")
    with pytest.raises(ValueError, match=r"training images .*train'\) are 1x16x16 .* validation images .*val'\) "
                                         r"are 1x32x32: both sets must share one size"):
        build_datasets("folder", root=str(tmp_path / "r"))
    _write_folder(str(tmp_path / "ok" / "train"))
    _write_folder(str(tmp_path / "ok" / "val"), seed=100)
    train, val = build_datasets("folder", root=str(tmp_path / "ok"))
    assert train.image_shape == val.image_shape == (1, 16, 16)


def test_a_validation_image_saved_again_in_another_format_is_found_and_a_blank_image_is_allowed(tmp_path):
    """The training set's img1.png saved as val/images/copy.npy (the same pixels, float32 (1, 16, 16)) is refused,
    naming both files and the count; a constant image (a blank slice) in both sets is not counted; a set built
    without the scan cannot be compared."""
    from PIL import Image

    root = tmp_path / "r"
    _write_folder(str(root / "train"))
    _write_folder(str(root / "val"), seed=100)
    pixels = np.asarray(Image.open(root / "train" / "images" / "img1.png"), np.float32)[None]
    np.save(root / "val" / "images" / "copy.npy", pixels)
    blank = np.zeros((16, 16), np.uint8)
    for folder in ("train", "val"):
        Image.fromarray(blank).save(root / folder / "images" / "blank.png")
        Image.fromarray(blank).save(root / folder / "masks" / "blank.png")
        with open(root / folder / "labels.csv", "a") as f:
            f.write("blank.png,0\n")
    with open(root / "val" / "labels.csv", "a") as f:
        f.write("copy.npy,1\n")
    np.save(root / "val" / "masks" / "copy.npy", np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match=r"^1 validation image\(s\) .* the first 'copy.npy' \(in training: "
                                         r"'img1.png'\)"):
        build_datasets("folder", root=str(root))
    train = FolderDataset(str(root / "train"))
    assert FolderDataset(str(root / "val")).images_shared_with(train) == [("copy.npy", "img1.png")]
    with pytest.raises(ValueError, match="scan=True"):
        FolderDataset(str(root / "val"), scan=False).images_shared_with(train)


# ---------------------------------------------------------------- folder dataset, edge cases (mutation testing)

class _RunsCodeWhenUnpickled:
    """An object whose unpickling creates the file ``marker``: a .npy holding it must be refused unread."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _one_image_folder(root, name, write):
    """``root`` with ``labels.csv`` listing one image ``name`` (label 0), written by ``write(path)``."""
    os.makedirs(os.path.join(root, "images"))
    write(os.path.join(root, "images", name))
    (root / "labels.csv").write_text(f"filename,label\n{name},0\n")
    return str(root)


def _npy(arr):
    return lambda path: np.save(path, arr)


def _truncated_png(path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2])


def _truncated_npy(path):
    """A .npy cut inside its header: numpy raises ValueError, as for an object array, but nothing
    here is a Python object."""
    _npy(np.ones((16, 16), np.float32))(path)
    Path(path).write_bytes(Path(path).read_bytes()[:100])


@pytest.mark.parametrize("name, write, message", [
    ("a.npy", _npy(np.array(["abc", "def"])), "not real numbers"),
    ("a.npy", _npy(np.ones((4, 4), np.complex64)), "not real numbers"),
    ("a.npy", _npy(np.array([[1.0, np.nan], [0.0, 1.0]], np.float32)), "NaN or Inf.*nan_to_num"),
    ("a.npy", _npy(np.array([[1.0, np.inf], [0.0, 1.0]])), "NaN or Inf"),
    ("a.npy", _npy(np.zeros((0, 16), np.float32)), r"expected a \(H, W\) or \(C, H, W\) image, got shape"),
    ("a.npy", _npy(np.ones(16, np.float32)), r"expected a \(H, W\) or \(C, H, W\) image, got shape"),
    ("a.npy", _npy(np.ones((1, 2, 8, 8), np.float32)), r"expected a \(H, W\) or \(C, H, W\) image, got shape"),
    ("a.png", _truncated_png, "not a readable PNG image.*convert it"),
    ("a.png", lambda path: Path(path).write_text("not an image"), "not a readable PNG image.*convert it"),
    ("a.npy", lambda path: Path(path).write_text(""), "cannot be read as a .npy array.*numpy.save"),
    ("a.npy", _truncated_npy, r"cannot be read as a .npy array \((?!.*Python objects).*numpy.save"),
    # no NumPy header: numpy says it would read the file as a pickle, but nothing here is an object
    ("a.npy", lambda path: Path(path).write_text("x,y\n1,2\n"), "not a .npy file: it lacks the NumPy header"),
    ("a.npy", lambda path: (_npy(np.ones((4, 4), np.float32))(path),
                            Path(path).write_bytes(b"X" + Path(path).read_bytes()[1:])), "lacks the NumPy header"),
])
def test_folder_an_unreadable_image_is_refused_when_the_dataset_is_built_naming_the_file(tmp_path, name, write,
                                                                                          message):
    root = _one_image_folder(tmp_path / "r", name, write)
    with pytest.raises(ValueError, match=rf"{name}'.*{message}"):
        FolderDataset(root)
    FolderDataset(root, scan=False)  # without the scan, found when the item is read
    with pytest.raises(ValueError, match=rf"{name}'.*{message}"):
        FolderDataset(root, scan=False)[0]


def test_folder_a_npy_holding_python_objects_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "code_ran"
    root = _one_image_folder(tmp_path / "r", "a.npy",
                             _npy(np.array([_RunsCodeWhenUnpickled(str(marker))], dtype=object)))
    with pytest.raises(ValueError, match=r"a.npy'.*Python objects are never loaded.*numpy.save"):
        FolderDataset(root)
    assert not marker.exists()


def _rows_folder(root, rows, names=None):
    """A folder of 16x16 grey PNGs named in ``names`` (default: those in ``rows``), listed by the
    label file text ``rows`` (after its header)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"))
    for name in names if names is not None else [line.split(",")[0].strip() for line in rows]:
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(os.path.join(root, "images", name), format="PNG")
    (root / "labels.csv").write_text("filename,label\n" + "".join(line + "\n" for line in rows))
    return str(root)


@pytest.mark.parametrize("rows, names, message", [
    (["a.png,0", "b.png,x"], None, r"label of 'b.png' must be an integer, got 'x' \(labels.csv line 3\)"),
    (["a.png,-1"], None, r"label of 'a.png' is -1 \(labels.csv line 2\); labels must be 0 .. 1 for 2 classes"),
    (["a.png,2"], None, r"label of 'a.png' is 2 .*labels must be 0 .. 1 for 2 classes"),
    (["a.png,0", "a.png,1"], None, r"'a.png' is listed twice in labels.csv \(line 3: the file of an earlier line\)"),
    # one file under two names (before: taken as two images)
    (["a.png,0", "./a.png,1"], ["a.png"], r"'./a.png' is listed twice in labels.csv \(line 3"),
    (["a.png,0", "b.png,1"], ["a.png"], r"image file '.*b.png' listed in labels.csv does not exist"),
    (["a.jpg,0"], ["a.jpg"], r"'a.jpg' \(labels.csv line 2\): images must be PNG or NPY"),
])
def test_folder_label_file_errors_name_the_line_and_the_fix(tmp_path, rows, names, message):
    root = _rows_folder(tmp_path / "r", rows, names)
    with pytest.raises(ValueError, match=message):
        FolderDataset(root, scan=False)


def test_folder_labels_must_lie_below_num_classes(tmp_path):
    root = _rows_folder(tmp_path / "r", ["a.png,0", "b.png,2"])
    with pytest.raises(ValueError, match="labels must be 0 .. 1 for 2 classes"):
        FolderDataset(root)  # two classes unless told
    assert [int(FolderDataset(root, num_classes=3)[i][1]) for i in range(2)] == [0, 2]


def test_folder_label_file_that_is_not_a_csv_of_filename_and_label_is_refused(tmp_path):
    root = _rows_folder(tmp_path / "cols", [], names=["a.png"])
    (tmp_path / "cols" / "labels.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(ValueError, match=r"labels.csv' lacks column\(s\) \['filename', 'label'\]"):
        FolderDataset(root)
    (tmp_path / "cols" / "labels.csv").write_bytes(b"filename,label\n\xff\xfe.png,0\n")
    with pytest.raises(ValueError, match=r"labels.csv' is not a readable CSV file .*filename,label"):
        FolderDataset(root)


def test_folder_items_follow_the_label_file_in_its_order_with_any_case_of_extension(tmp_path):
    from PIL import Image

    root = tmp_path / "r"
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    names = ["Z.PNG", "b.NPY", "a.png"]
    for i, name in enumerate(names):
        image = np.full((16, 16), i, np.uint8)
        image[0, 0] = 9
        mask = np.zeros((16, 16), np.uint8)
        mask[:i + 1] = 1
        for folder, arr in (("images", image), ("masks", mask)):  # the mask: the image's very name
            if name.lower().endswith(".npy"):
                with open(root / folder / name, "wb") as f:  # as named: np.save would append ".npy"
                    np.save(f, arr)
            else:
                Image.fromarray(arr).save(root / folder / name, format="PNG")
    # labels 1, 2, 1 of three classes: every mask marks a lesion, and label 0 (the normal class) has none
    (root / "labels.csv").write_text("filename,label\n" + "".join(f"{n},{1 + i % 2}\n" for i, n in enumerate(names)))
    ds = FolderDataset(str(root), num_classes=3)
    assert [int(ds[i][1]) for i in range(3)] == [1, 2, 1]
    assert [int(ds[i][2].sum()) for i in range(3)] == [16, 32, 48]


def test_folder_a_palette_png_image_is_read_by_its_colours_and_a_palette_mask_by_its_indices(tmp_path):
    """A palette PNG stores indices into its colour table, in no order of brightness: read as
    stored, a grey ramp came back as indices 15, 15, 15, 14, ... (brightness reversed)."""
    from PIL import Image

    root = tmp_path / "r"
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    ramp = (np.arange(256).reshape(16, 16)).astype(np.uint8)
    rgb = Image.fromarray(np.stack([ramp, ramp // 2, 255 - ramp], -1))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "images" / "a.png")
    expected = np.moveaxis(np.asarray(Image.open(root / "images" / "a.png").convert("RGB"), np.float32), -1, 0)
    mask = Image.fromarray(np.where(ramp < 128, 0, 1).astype(np.uint8), mode="L").convert("P")
    mask.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 (the background) drawn white
    mask.save(root / "masks" / "a.png")
    (root / "labels.csv").write_text("filename,label\na.png,1\n")
    image, _, read_mask = FolderDataset(str(root))[0]
    want = torch.from_numpy(expected)
    want = (want - want.flatten(1).mean(1).view(-1, 1, 1)) / want.flatten(1).std(1).view(-1, 1, 1)
    torch.testing.assert_close(image, want)
    assert torch.equal(read_mask, torch.from_numpy(ramp >= 128))


def test_folder_a_label_file_with_a_byte_order_mark_is_read(tmp_path):
    """A spreadsheet's UTF-8 export starts with a byte-order mark, which made the first column
    '\ufefffilename' and the file 'lacks column(s) ['filename']'."""
    _write_folder(str(tmp_path / "a"), n=2)
    path = tmp_path / "a" / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [int(FolderDataset(str(tmp_path / "a"))[i][1]) for i in range(2)] == [0, 1]


def _write_mask(path, mask):
    from PIL import Image

    if path.endswith(".npy"):
        np.save(path, mask)
    else:
        Image.fromarray(mask).save(path)


@pytest.mark.parametrize("mask_name, layout", [
    ("img0.png", "rgb"),  # an RGB PNG mask: lesion where any channel is non-zero
    ("img0.png", "grey"),  # a PNG mask of a .npy image: found by its stem
    ("img0.npy", "hwc"),  # an (H, W, C) array
    ("img0.npy", "chw"),
])
def test_folder_masks_of_every_layout_are_read_as_the_images_height_and_width(tmp_path, mask_name, layout):
    root = tmp_path / "r"
    _write_folder(str(root), n=1, masks=False, fmt="npy")
    (root / "labels.csv").write_text("filename,label\nimg0.npy,1\n")  # a lesion image
    os.makedirs(root / "masks")
    lesion = np.zeros((16, 16), bool)
    lesion[2:5, 3:9] = True
    mask = {"grey": lesion.astype(np.uint8) * 255,
            "rgb": np.stack([np.zeros_like(lesion), lesion, np.zeros_like(lesion)], -1).astype(np.uint8) * 255,
            "hwc": np.stack([lesion, np.zeros_like(lesion), np.zeros_like(lesion)], -1),
            "chw": np.stack([np.zeros_like(lesion), lesion, np.zeros_like(lesion)])}[layout]
    _write_mask(str(root / "masks" / mask_name), mask)
    out = FolderDataset(str(root))[0][2]
    assert out.dtype == torch.bool and torch.equal(out, torch.from_numpy(lesion))


def test_folder_without_a_masks_folder_every_mask_is_empty(tmp_path):
    _write_folder(str(tmp_path / "off"))
    os.remove(tmp_path / "off" / "masks" / "img1.png")  # mask_dir=None: the masks are not read at all
    ds = FolderDataset(str(tmp_path / "off"), mask_dir=None)
    mask = ds[1][2]
    assert not ds.has_masks and mask.dtype == torch.bool and mask.shape == (16, 16) and not mask.any()
    _write_folder(str(tmp_path / "file"), masks=False)
    (tmp_path / "file" / "masks").write_text("a file, not a folder of masks")
    ds = FolderDataset(str(tmp_path / "file"))
    assert not ds.has_masks and not ds[1][2].any()


@pytest.mark.parametrize("layout, shape", [
    ("rgb_png", (3, 16, 8)), ("grey_alpha_png", (2, 16, 4)), ("hwc_npy", (4, 16, 8)), ("chw_npy", (3, 16, 4)),
])
def test_folder_images_are_read_channels_first(tmp_path, layout, shape):
    from PIL import Image

    c, h, w = shape
    chw = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    if layout.endswith("png"):
        name, mode = "a.png", {3: "RGB", 2: "LA"}[c]
        write = lambda path: Image.fromarray(np.moveaxis(chw, 0, -1), mode=mode).save(path)  # noqa: E731
    else:
        name = "a.npy"
        write = _npy(np.moveaxis(chw, 0, -1) if layout == "hwc_npy" else chw)
    ds = FolderDataset(_one_image_folder(tmp_path / "r", name, write))
    image = ds[0][0]
    assert ds.image_shape == shape and image.shape == shape and image.dtype == torch.float32
    expected = torch.from_numpy(chw.astype(np.float32))
    expected = (expected - expected.mean((1, 2), keepdim=True)) / expected.flatten(1).std(1).view(-1, 1, 1)
    assert torch.allclose(image, expected, atol=1e-5)


def test_folder_images_are_normalised_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.stack([rng.random((16, 16)) * 100 + 50, rng.random((16, 16)) * 0.5 - 3,
                    np.full((16, 16), 7.0)]).astype(np.float32)  # a constant channel: zeros, not NaN
    image, label = FolderDataset(_one_image_folder(tmp_path / "r", "a.npy", _npy(arr))).image_label(0)
    assert image.dtype == torch.float32 and label.dtype == torch.int64 and int(label) == 0
    assert torch.allclose(image[:2].flatten(1).mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(image[:2].flatten(1).std(1), torch.ones(2), atol=1e-4)
    assert torch.equal(image[2], torch.zeros(16, 16))


@pytest.mark.parametrize("other", [np.zeros((2, 16, 8), np.float32), np.zeros((3, 16, 16), np.float32)])
def test_folder_images_of_another_size_or_channel_count_are_refused_naming_both_files(tmp_path, other):
    root = tmp_path / "r"
    _write_folder(str(root), masks=False, fmt="npy")  # (2, 16, 16) each
    np.save(root / "images" / "img2.npy", other)
    c, h, w = other.shape
    with pytest.raises(ValueError, match=rf"img2.npy' is {c}x{h}x{w} .* but '.*img0.npy' is 2x16x16: every image "
                                         r"must have one size and channel count"):
        FolderDataset(str(root))

def test_build_datasets_sources(tmp_path):
    train, val = build_datasets("synthetic", image_size=32, n_train=4, n_val=2, seed=5)
    assert len(train) == 4 and len(val) == 2 and not torch.equal(train[0][0], val[0][0])
    assert isinstance(train, SyntheticRimLesions) and isinstance(val, SyntheticRimLesions)  # the new default
    old, _ = build_datasets("synthetic-blobs", image_size=32, n_train=4, n_val=2, seed=5)
    assert isinstance(old, SyntheticLesions) and torch.equal(old[1][0], SyntheticLesions(4, 32, seed=5)[1][0])
    with pytest.raises(ValueError, match="needs --data-root"):
        build_datasets("brats")
    with pytest.raises(ValueError, match="unknown data source"):
        build_datasets("imagenet", root="x")


@pytest.mark.slow  # draws a synthetic set of every kind (~0.7 s)
def test_the_decisive_mask_marks_the_structure_that_decides_the_label():
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    bright = SyntheticBrightestLesions(12, image_size=48, difficulty=0.3, seed=5)  # both labels (5 and 7 of them)
    seen, decisive = set(), []
    for i in range(len(bright)):
        r = bright.render(i)
        brightest = max(range(len(r["kinds"])), key=r["amplitudes"].__getitem__)
        # the brightest structure, whatever it is: the lesion when the label is 1, a mimic when it is 0
        assert torch.equal(r["decisive"], r["structure"] == brightest) and r["decisive"].any()
        assert (r["kinds"][brightest] == "lesion") == bool(r["label"])
        if r["label"]:
            assert torch.equal(r["decisive"], r["mask"])
        else:
            assert not (r["decisive"] & (r["structure"] == r["kinds"].index("lesion"))).any()
        assert torch.equal(bright.decisive_mask(i), r["decisive"])
        decisive.append(r["decisive"])
        seen.add(int(r["label"]))
    assert seen == {0, 1}
    # under the presence rule the lesion decides: the decisive mask is the lesion mask (empty without a lesion)
    rim = SyntheticRimLesions(16, image_size=48, seed=2)
    for i in range(len(rim)):
        assert torch.equal(rim.decisive_mask(i), rim[i][2])
    # materialised splits keep them; data that do not say which structure decides refuse to guess
    kept = InMemory(bright)
    assert all(torch.equal(kept.decisive_mask(i), decisive[i]) for i in range(len(bright)))  # (no second rendering)
    assert all(torch.equal(kept[i][0], bright[i][0]) for i in range(3))
    with pytest.raises(ValueError, match="do not say which structure decides"):
        InMemory(SyntheticLesions(4, image_size=32)).decisive_mask(0)


def test_a_training_configuration_gives_brats_its_settings(tmp_path):
    """``train``'s BraTS settings reach the loader (they once existed for ``data check`` only),
    and are refused for other data (they would be ignored)."""
    from convex_attention.paper.config import ConfigError, TrainConfig
    from convex_attention.paper.data import datasets_of

    root = str(tmp_path / "brats")
    _write_fake_brats(root, ["Brats18_A_1", "Brats18_B_2", "Brats18_C_3", "Brats18_D_4"])
    config = TrainConfig.build(data="brats", data_root=root, image_size=48, normalisation="dataset",
                               cache_dir=str(tmp_path / "cache"), min_tumour_area=100, val_fraction=0.25).validate()
    train, val = datasets_of(config)
    assert train.normalisation == val.normalisation == "dataset" and train.stats is not None
    assert train.cache_dir == str(tmp_path / "cache") and os.path.isdir(tmp_path / "cache")
    assert train.params["min_tumour_area"] == 100 and len(val.patients) == 1 and len(train.patients) == 3
    assert config.data_config()["normalisation"] == "dataset"  # it decides the validation images
    plain = TrainConfig.build(data="brats", data_root=root, image_size=48).validate()
    with pytest.raises(ValueError, match="more than 1000 tumour pixels"):  # the paper's rule, the default
        datasets_of(plain)
    plain_train, _ = datasets_of(plain.override(min_tumour_area=100))
    assert plain_train.normalisation == "volume" and plain_train.stats is None
    assert plain_train.cache_dir == os.path.join(root, ".convex_attention_cache")
    for name, value in (("normalisation", "dataset"), ("cache_dir", "c"), ("min_tumour_area", 10),
                        ("val_fraction", 0.5)):
        with pytest.raises(ConfigError, match=f"{name} applies to data 'brats' only"):
            TrainConfig.build(**{name: value}).validate()


def test_the_data_configuration_holds_what_the_source_reads():
    """What ``explain`` compares between checkpoints: a setting the source ignores must not
    make two checkpoints of the same images differ (BraTS ignored n_val and difficulty)."""
    from convex_attention.paper.config import TrainConfig

    brats = TrainConfig.build(data="brats", data_root="r")
    assert brats.data_config() == brats.override(n_val=7, difficulty=0.1, cache_dir="elsewhere").data_config()
    for change in ({"normalisation": "dataset"}, {"val_fraction": 0.3}, {"min_tumour_area": 5}, {"data_seed": 3}):
        assert brats.override(**change).data_config() != brats.data_config(), change
    folder = TrainConfig.build(data="folder", data_root="r")
    assert folder.data_config() == folder.override(data_seed=3, n_val=7, difficulty=0.1).data_config()
    synthetic = TrainConfig.build()
    for change in ({"n_val": 7}, {"difficulty": 0.1}, {"data_seed": 3}):
        assert synthetic.override(**change).data_config() != synthetic.data_config(), change


# ----------------------------------------------------------------------------- data check --out

def _canned_checks(monkeypatch, seen=None, out=None):
    """``data check`` on canned data and results (every check passes); ``seen`` collects the
    lock record of ``out`` while the checks run."""
    import json

    from convex_attention.cli import data as data_cli
    from convex_attention.paper.validity import CheckResult

    def checks(*args, **kwargs):
        if seen is not None:
            seen.append(json.loads((out / "results.lock").read_text()))
        return [CheckResult("location_free", "t", "held-out balanced accuracy", 0.5, 0.6),
                CheckResult("pixel_map", "t", "held-out pixel AP", 0.1, 0.3)]

    monkeypatch.setattr(data_cli, "_datasets", lambda args: (list(range(20)), list(range(20)), "canned"))
    monkeypatch.setattr("convex_attention.paper.validity.run_checks", checks)


def test_data_check_never_replaces_an_earlier_data_check_json_without_overwrite(tmp_path, capsys, monkeypatch):
    """Before: `data check --out DIR` replaced DIR/data_check.json without a word (found by a
    hostile review)."""
    from helpers import run_cli

    import convex_attention.paper.validity as validity

    out = tmp_path / "dc"
    out.mkdir()
    (out / "data_check.json").write_text('{"my": "precious"}')
    monkeypatch.setattr(validity, "run_checks", lambda *a, **k: pytest.fail("work started before the check"))
    code, _, err = run_cli(["data", "check", "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "data_check.json" in err and "--overwrite" in err
    assert (out / "data_check.json").read_text() == '{"my": "precious"}'
    code, _, err = run_cli(["data", "check", "--overwrite"], capsys)  # nothing to replace without --out
    assert code == 2 and "--overwrite applies with --out only" in err, err
    _canned_checks(monkeypatch)
    code, _, err = run_cli(["data", "check", "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert '"accepted": true' in (out / "data_check.json").read_text()


def test_data_check_writes_under_the_out_folders_lock(tmp_path, capsys, monkeypatch):
    """Before: data check took no lock: two runs into one --out raced on data_check.json."""
    from helpers import run_cli
    from test_lock import hold_lock

    out = tmp_path / "dc"
    seen: list = []
    _canned_checks(monkeypatch, seen, out)
    code, _, err = run_cli(["data", "check", "--out", str(out)], capsys)
    assert code == 0, err
    assert [(s["pid"], s["command"]) for s in seen] == [(os.getpid(), "data check")]
    assert not (out / "results.lock").exists()
    (out / "data_check.json").unlink()
    holder = hold_lock(out, 60)
    try:
        code, _, err = run_cli(["data", "check", "--out", str(out), "--overwrite"], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"is in use by pid {holder.pid}" in err and len(seen) == 1
    assert not (out / "data_check.json").exists()


# ---------------------------------------------------------------- BraTS, edge cases (mutation testing)

def test_brats_arguments_are_checked_before_any_work(tmp_path):
    missing = str(tmp_path / "nothing")  # never read: the arguments are refused first
    for kwargs, message in (({"split": "test"}, "split must be"), ({"normalisation": "global"}, "normalisation"),
                            ({"image_size": 15}, "image_size"), ({"image_size": 32.0}, "image_size"),
                            ({"val_fraction": 1.0}, "val_fraction"), ({"val_fraction": -0.1}, "val_fraction")):
        with pytest.raises(ValueError, match=message):
            BraTSSlices(missing, **kwargs)
    with pytest.raises(ValueError, match="normalisation"):
        preprocess_patient(missing, "P", normalisation="global")


def test_brats_split_sizes_follow_the_fraction_and_leave_both_sides_non_empty():
    for n in range(2, 30):
        ids = [f"P{i:02d}" for i in range(n)]
        for fraction in (0.05, 0.1, 0.2, 0.25, 0.3, 0.9):
            train, val = split_patients(ids, fraction, seed=3)
            assert sorted(train + val) == ids and set(train).isdisjoint(val)
            assert 1 <= len(val) <= n - 1  # neither side is ever empty
            if 1 < fraction * n < n - 1:  # the nearest whole number of patients
                assert abs(len(val) - fraction * n) <= 0.5, (n, fraction, len(val))


def test_brats_find_patients_reads_only_segmentations_and_sorts_by_id(tmp_path):
    for rel in ("LGG/Brats18_A_2/Brats18_A_2_seg.nii.gz", "HGG/Brats18_B_1/Brats18_B_1_seg.nii",
                "HGG/Brats18_B_1/notes_seg.nii.txt", "HGG/Brats18_B_1/Brats18_B_1_seg.nii.gz.orig"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_patients(str(tmp_path))
    assert list(found) == ["Brats18_A_2", "Brats18_B_1"]  # by id, not by folder (HGG before LGG)
    assert found["Brats18_B_1"] == str(tmp_path / "HGG" / "Brats18_B_1")


def test_brats_volume_errors_orientation_dimensions_and_inf(tmp_path):
    import nibabel as nib

    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    cases = {"no_axis": (np.zeros((40, 40, 4), np.float32), np.diag([1.0, 1.0, 0.0, 1.0]), "gives no orientation"),
             "four_d": (np.zeros((40, 40, 4, 2), np.float32), np.eye(4), r"expected a 3-D volume"),
             "inf": (np.full((40, 40, 4), np.inf, np.float32), np.eye(4), r"holds NaN or Inf")}
    for name, (data, affine, message) in cases.items():
        folder = _write_patient(str(tmp_path / name), "P", vols, seg)
        image = nib.Nifti1Image(data, None)
        image.set_sform(affine, code=1)  # (a singular affine cannot go through the qform)
        nib.save(image, os.path.join(folder, "P_t2.nii.gz"))
        with pytest.raises(ValueError, match=message) as err:
            preprocess_patient(folder, "P", min_tumour_area=50, image_size=40)
        assert "P_t2.nii.gz" in str(err.value) and "\n" not in str(err.value)


def _count_preprocessing(monkeypatch):
    """The patient ids ``preprocess_patient`` is called for, in order."""
    from convex_attention.paper.data import brats

    calls = []
    real = brats.preprocess_patient
    monkeypatch.setattr(brats, "preprocess_patient", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    return calls


def test_brats_cache_entries_are_reused_through_links_between_folders_and_when_empty(tmp_path, monkeypatch):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    _write_patient(str(tmp_path / "a"), "P1", vols, seg)
    _write_patient(str(tmp_path / "a"), "P2", vols, np.zeros_like(seg))  # no slice kept: an empty entry
    other, _ = _anatomy(seed=5)
    _write_patient(str(tmp_path / "b"), "P1", other, seg)
    os.symlink(tmp_path / "a", tmp_path / "link")
    cache = tmp_path / "cache"
    kw = dict(min_tumour_area=50, image_size=40, cache_dir=str(cache))
    calls = _count_preprocessing(monkeypatch)
    a = BraTSSlices(str(tmp_path / "a"), "all", **kw)
    b = BraTSSlices(str(tmp_path / "b"), "all", **kw)
    assert calls == ["P1", "P2", "P1"] and len(a) == len(b) == 2
    for root in ("link", "a", "b", "link"):  # the same resolved folders: every entry is read back
        again = BraTSSlices(str(tmp_path / root), "all", **kw)
        assert torch.equal(again[0][0], (b if root == "b" else a)[0][0])
    assert calls == ["P1", "P2", "P1"]
    names = os.listdir(cache)  # five files per entry, nothing else left behind
    assert len(names) == 3 * 5 and all(n.endswith((".npy", ".json")) for n in names)


def test_brats_cache_is_redone_when_a_files_size_changes_at_the_same_time(tmp_path, monkeypatch):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root = str(tmp_path / "b")
    folder = _write_patient(root, "P", vols, seg)
    kw = dict(min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "cache"))
    assert len(BraTSSlices(root, "all", **kw)) == 2
    path = os.path.join(folder, "P_seg.nii.gz")
    before = os.stat(path)
    import nibabel as nib

    seg[4:16, 12:30, 2] = 1  # a corrected segmentation, restored to the old modification time
    nib.save(nib.Nifti1Image(seg, np.eye(4)), path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size != before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    calls = _count_preprocessing(monkeypatch)
    assert len(BraTSSlices(root, "all", **kw)) == 4 and calls == ["P"]


@pytest.mark.parametrize("damage", ["not_json", "a_list", "no_count", "float_count", "moments_shape",
                                    "npy_version_3", "images_reshaped", "masks_uint8"])
def test_a_brats_cache_entry_with_damaged_metadata_or_headers_is_rebuilt(tmp_path, monkeypatch, damage):
    import json

    vols, seg = _anatomy()
    seg[4:16, 12:30, 1:3] = 1
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    cache = tmp_path / "cache"
    kw = dict(min_tumour_area=50, image_size=40, cache_dir=str(cache), normalisation="dataset")
    good = BraTSSlices(root, "all", **kw)
    expected = [good[i] for i in range(len(good))]
    (meta,) = cache.glob("*.json")
    info = json.loads(meta.read_text())
    prefix = str(meta)[: -len(".json")]
    images = np.load(prefix + ".images.npy")
    if damage == "not_json":
        meta.write_text("{")
    elif damage == "a_list":
        meta.write_text("[]")
    elif damage in ("no_count", "float_count", "moments_shape"):
        if damage == "no_count":
            del info["count"]
        elif damage == "float_count":
            info["count"] = float(info["count"])
        else:
            info["moments"] = info["moments"][:2]
        meta.write_text(json.dumps(info))
    elif damage == "npy_version_3":
        with open(prefix + ".images.npy", "wb") as f:
            np.lib.format.write_array(f, images, version=(3, 0))
    elif damage == "images_reshaped":  # the same bytes, another shape
        np.save(prefix + ".images.npy", images.reshape(-1, *images.shape[2:]))
    else:
        np.save(prefix + ".masks.npy", np.load(prefix + ".masks.npy").astype(np.uint8))
    calls = _count_preprocessing(monkeypatch)
    again = BraTSSlices(root, "all", **kw)
    assert calls == ["P"] and np.array_equal(again.stats, good.stats) and len(again) == len(expected)
    for (img, label, mask), (img0, label0, mask0) in zip((again[i] for i in range(len(again))), expected):
        assert torch.equal(img, img0) and torch.equal(label, label0) and torch.equal(mask, mask0)


def test_a_brats_cache_file_damaged_after_loading_is_reported_in_one_line(tmp_path):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    cache = tmp_path / "cache"
    ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(cache))
    (images,) = cache.glob("*.images.npy")
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"damaged cache file .*images\.npy.*delete .* run again") as err:
        ds[0]
    assert "\n" not in str(err.value)


def test_brats_volume_normalisation_is_a_z_score_over_the_non_zero_voxels(tmp_path):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1:3] = 1
    brain = vols["flair"] != 0
    vols["t1ce"] = vols["t1ce"] - 100 * brain  # intensities of both signs: the brain is the non-zero voxels
    vols["t2"] = 7.0 * brain  # a constant modality: no spread to divide by
    folder = _write_patient(str(tmp_path / "b"), "P", vols, seg)
    raw = preprocess_patient(folder, "P", min_tumour_area=50, image_size=40, normalisation="dataset")
    out = preprocess_patient(folder, "P", min_tumour_area=50, image_size=40, normalisation="volume")
    assert np.isfinite(out["images"]).all() and out["slices"].tolist() == raw["slices"].tolist()
    for c, m in enumerate(("flair", "t1", "t1ce")):
        voxels = vols[m][vols[m] != 0].astype(np.float64)
        shown = raw["images"][:, c] != 0
        expected = (raw["images"][:, c][shown] - voxels.mean()) / voxels.std()
        assert np.allclose(out["images"][:, c][shown], expected, atol=1e-4)
        assert (out["images"][:, c][~shown] == 0).all()
    assert (out["images"][:, 3] == 0).all()  # constant over the brain: 0 there, and 0 outside


def test_brats_dataset_normalisation_of_an_empty_modality_stays_finite(tmp_path):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    vols["t1ce"] = np.zeros_like(vols["t1ce"])  # a zero-filled modality: no spread at all
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"),
                     normalisation="dataset")
    assert ds.stats[2, 0] == 0 and ds.stats[2, 1] > 0
    assert all(bool(torch.isfinite(ds[i][0]).all()) and bool((ds[i][0][2] == 0).all()) for i in range(len(ds)))


def test_brats_brain_mask_is_any_modality_non_zero(tmp_path):
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    vols["flair"][:, :10] = 0  # FLAIR misses part of the brain that T1 still shows
    vols["t2"][20:, :] = 0  # and T2 misses another part
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"),
                     normalisation="dataset")
    assert len(ds) == 2
    brain = (np.stack([vols[m][:, :, 1] for m in ("flair", "t1", "t1ce", "t2")]) != 0).any(0).T
    together = ds.brain_mask(0) | ds.brain_mask(1)  # the tumour and the healthy piece of slice 1
    assert not bool((ds.brain_mask(0) & ds.brain_mask(1)).any())
    assert np.array_equal(together.numpy(), brain)


def test_brats_slices_need_more_than_min_tumour_area_pixels():
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    area = int((seg[:, :, 1] > 0).sum())
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        folder = _write_patient(root, "P", vols, seg)
        at = preprocess_patient(folder, "P", min_tumour_area=area, image_size=40)
        below = preprocess_patient(folder, "P", min_tumour_area=area - 1, image_size=40)
    assert at["slices"].tolist() == [] and at["images"].shape == (0, 4, 40, 40)
    assert below["slices"].tolist() == [1, 1]


def test_brats_resize_is_antialiased_when_shrinking_and_keeps_the_geometry():
    stripes = np.zeros((1, 40, 40), np.float32)
    stripes[:, :, ::4] = 1  # one column in four: its mean is 0.25
    small = resize_slice(stripes, 10)
    assert small.shape == (1, 10, 10) and np.allclose(small[:, :, 1:-1], 0.25, atol=0.02)  # no aliasing
    square = np.zeros((1, 40, 40), np.float32)
    square[0, 10:20, 12:22] = 1
    doubled = np.zeros((80, 80), bool)
    doubled[20:40, 24:44] = True  # twice the size, at twice the position
    assert np.array_equal(resize_slice(square, 80, mask=True)[0], doubled)


def test_brats_root_may_hold_glob_characters(tmp_path):
    """The root was globbed unescaped: "BraTS [copy]" found no patient (found by mutation testing)."""
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root = str(tmp_path / "BraTS [copy]")
    folder = _write_patient(root, "P", vols, seg)
    assert find_patients(root) == {"P": folder}


def test_brats_refuses_a_negative_min_tumour_area(tmp_path):
    """It kept slices without tumour, and split_slice failed with numpy's 'zero-size array' error."""
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    root = str(tmp_path / "b")
    _write_patient(root, "P", vols, seg)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"min_tumour_area must be an integer >= 0 \(pixels\)"):
            BraTSSlices(root, "all", min_tumour_area=bad, image_size=40, cache_dir=str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "c")  # refused before any work


def test_rev38_a_grey_palette_png_beside_grey_images_is_read_as_grey(tmp_path):
    from PIL import Image

    root = tmp_path / "r"
    os.makedirs(root / "images")
    ramp = np.arange(256).reshape(16, 16).astype(np.uint8)
    Image.fromarray(ramp, mode="L").save(root / "images" / "a.png")
    Image.fromarray(255 - ramp, mode="L").convert("P").save(root / "images" / "b.png")  # a grey palette
    (root / "labels.csv").write_text("filename,label\na.png,0\nb.png,1\n")
    ds = FolderDataset(str(root), mask_dir=None)
    a, b = ds[0][0], ds[1][0]
    assert a.shape == b.shape == (1, 16, 16)
    assert torch.allclose(a, -b, atol=1e-5)  # the reversed ramp, normalised


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_rev43_a_mask_with_an_alpha_channel_is_read_by_its_colour_not_its_alpha(tmp_path, mode):
    """docs/user_guide.md: masks/<filename>, non-zero = lesion.  An image editor's export of a
    painted mask often keeps an opaque alpha channel (255 everywhere): it says nothing of the
    lesion, and counted as a value every pixel was lesion (every explanation metric then scored
    against the whole image)."""
    from PIL import Image

    root = tmp_path / "r"
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8), "L").save(root / "images" / "a.png")
    lesion = np.zeros((8, 8), np.uint8)
    lesion[2:4, 2:5] = 255
    opaque = np.full_like(lesion, 255)
    bands = [lesion, opaque] if mode == "LA" else [lesion, np.zeros_like(lesion), np.zeros_like(lesion), opaque]
    Image.fromarray(np.stack(bands, -1), mode).save(root / "masks" / "a.png")
    (root / "labels.csv").write_text("filename,label\na.png,1\n")
    read_mask = FolderDataset(str(root))[0][2]
    assert torch.equal(read_mask, torch.from_numpy(lesion > 0))


# ----------------------------------------------------------------------------- review 42

def test_rev42_data_check_refuses_a_data_check_json_that_is_a_folder_before_any_work(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    import convex_attention.paper.validity as validity

    out = tmp_path / "dc"
    (out / "data_check.json").mkdir(parents=True)
    (out / "data_check.json" / "mine.txt").write_text("the user's")
    monkeypatch.setattr(validity, "run_checks", lambda *a, **k: pytest.fail("work started before the check"))
    code, _, err = run_cli(["data", "check", "--out", str(out), "--overwrite", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "data_check.json" in err and "folder" in err
    assert (out / "data_check.json" / "mine.txt").read_text() == "the user's"


@pytest.mark.parametrize("why", ["missing data", "locked"])
def test_rev42_a_refused_data_check_leaves_no_out_folder(why, tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    out = tmp_path / "deep" / "out"
    if why == "missing data":
        argv = ["data", "check", "--data", "brats", "--data-root", str(tmp_path / "nonexist"), "--out", str(out)]
        code, _, err = run_cli(argv, capsys)
    else:
        from convex_attention.io.lock import ResultsLocked

        def locked(*args, **kwargs):  # another live run holds the folder
            raise ResultsLocked("results folder is in use by pid 1 (bench)")

        monkeypatch.setattr("convex_attention.io.lock.results_lock", locked)  # holding_out imports it when it runs
        code, _, err = run_cli(["data", "check", "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "deep").exists()


# ---------------------------------------------------------------- ca_rev72: review of the data layer

def test_the_lesion_core_is_enclosed_from_56_on_and_the_docstring_says_where_it_is_not():
    """ca_rev72: at 32² about half the lesions' cores touch the tissue (a rim thinner than a
    pixel); the lesion's core share is kept equal to the mimics' (its pixel values must say
    nothing), so the module says from which size the enclosure holds."""
    from convex_attention.paper.data import synthetic

    checked = 0
    for cls in (SyntheticRimLesions, synthetic.SyntheticBrightestLesions):
        ds = cls(8, image_size=56, difficulty=1.0, seed=3)
        for i in range(len(ds)):
            r = ds.render(i)
            if "lesion" not in r["kinds"]:
                continue
            structure, compartment = r["structure"].numpy(), r["compartment"].numpy()
            edge = compartment[_boundary(structure == r["kinds"].index("lesion"))]
            assert (edge == 2).all(), f"{cls.__name__} image {i}: core pixels on the lesion's outline"
            checked += 1
    assert checked >= 8
    assert "from 56² on" in " ".join(synthetic.__doc__.split())


def test_ca_rev72_blobs_lesion_image_has_lesion_pixels_at_the_smallest_allowed_size():
    image, label, mask = SyntheticLesions(30, image_size=16, difficulty=1.0, seed=0)[23]
    assert int(label) == 1
    assert mask.any(), "a lesion image (label 1) whose mask marks no lesion pixel"


@pytest.mark.parametrize("kwargs", [dict(lesion_fraction=1.5), dict(lesion_fraction=-0.5), dict(channels=0)])
def test_ca_rev72_blobs_bad_arguments_are_refused_when_the_dataset_is_built(kwargs):
    with pytest.raises(ValueError, match="lesion_fraction|channels"):
        SyntheticLesions(4, image_size=32, **kwargs)


def test_ca_rev72_brightest_label_share_follows_lesion_fraction_or_mimic_rate_below_one_is_refused():
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    try:
        ds = SyntheticBrightestLesions(100, image_size=32, mimic_rate=0.5, lesion_fraction=0.5, seed=0)
    except ValueError:
        return  # refusing a rate that leaves normal images without a mimic is a fix too
    share = float(np.mean([int(ds[i][1]) for i in range(len(ds))]))
    assert abs(share - 0.5) < 0.12, f"lesion_fraction 0.5 gave {share:.2f} label-1 images"


def test_ca_rev72_brightest_documents_the_structures_it_drops_at_the_experiments_size():
    """ca_rev72: the docstring said 'mimic_rate defaults to 5: six structures'; at 64² most
    images hold 5 (a structure that finds no room is dropped).  It now says so, with counts."""
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    ds = SyntheticBrightestLesions(3, image_size=64, difficulty=0.3, seed=0)  # the committed run's size
    rendered = [ds.render(i) for i in range(len(ds))]
    assert all(len(r["kinds"]) + r["dropped"] == 6 for r in rendered)
    doc = " ".join((SyntheticBrightestLesions.__doc__ or "").split())
    assert "up to six" in doc and "dropped" in doc


def test_ca_rev72_folder_mask_non_zero_means_lesion_also_for_negative_values(tmp_path):
    root = tmp_path / "r"
    _one_image_folder(root, "a.npy", _npy(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)))
    os.makedirs(root / "masks")
    mask = np.zeros((8, 8), np.int8)
    mask[2:4, 2:4] = -1  # e.g. 255 saved as int8; the docstring: 'non-zero = lesion'
    np.save(str(root / "masks" / "a.npy"), mask)
    (root / "labels.csv").write_text("filename,label\na.npy,1\n")  # a lesion image
    assert int(FolderDataset(str(root))[0][2].sum()) == 4


def test_ca_rev72_folder_a_one_pixel_image_stays_finite(tmp_path):
    root = _one_image_folder(tmp_path / "r", "a.npy", _npy(np.array([[5.0]], np.float32)))
    image, _, _ = FolderDataset(root)[0]
    assert torch.isfinite(image).all(), image


def test_ca_rev72_folder_a_finite_image_of_large_values_stays_finite(tmp_path):
    arr = np.full((4, 4), 3e38, np.float32)
    arr[0, 0] = -3e38  # finite: accepted by the scan
    root = _one_image_folder(tmp_path / "r", "a.npy", _npy(arr))
    image, _, _ = FolderDataset(root)[0]
    assert torch.isfinite(image).all(), image


def test_ca_rev74_brightest_refuses_a_numpy_mimic_rate_below_one():
    """The refusal checks isinstance(mimic_rate, (int, float)): np.float32(0.5) and np.int64(0)
    are neither, pass, and the parent stores float(mimic_rate) = 0.5 / 0.0, the case refused."""
    import numpy as np

    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    for rate in (np.float32(0.5), np.int64(0)):
        with pytest.raises(ValueError, match="mimic_rate must be at least 1"):
            SyntheticBrightestLesions(4, 32, mimic_rate=rate)


# ----------------------------------------------------------------------------- review ca_rev76

@pytest.mark.parametrize("kind", ["numpy 0-d array", "torch scalar", "bool"])
def test_ca_rev76_brightest_refuses_every_mimic_rate_below_one(kind):
    """The refusal tests isinstance(mimic_rate, numbers.Real) and skips bools: np.array(0.5),
    torch.tensor(0.5) and False pass it, and the parent stores float(mimic_rate) = 0.5 / 0.0."""
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    rate = {"numpy 0-d array": np.array(0.5), "torch scalar": torch.tensor(0.5), "bool": False}[kind]
    with pytest.raises(ValueError, match="mimic_rate must be at least 1"):
        SyntheticBrightestLesions(4, 32, mimic_rate=rate)


@pytest.mark.parametrize("cls", [SyntheticRimLesions, "brightest"])
def test_a_bool_mimic_rate_is_refused(cls):
    """ca_rev78's near-miss: True read as 1.0 (False was refused by the brightest rule alone)."""
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    cls = SyntheticBrightestLesions if cls == "brightest" else cls
    for rate in (True, False):
        with pytest.raises(ValueError, match="mimic_rate"):
            cls(2, image_size=32, mimic_rate=rate)


# ----------------------------------------------------------------------------- ca_rev80 (strict xfail: known defects)

@pytest.mark.parametrize("cls", [SyntheticRimLesions, "brightest"])
def test_ca_rev80_numpy_bools_and_bool_fractions_are_refused(cls):
    """396d306 refuses isinstance(mimic_rate, bool) only: np.True_ (not a Python bool) passes
    math.isfinite and the range and is used as 1.0; _check_rim_options' difficulty and
    lesion_fraction take True as 1.0 (the hardest setting, all images lesioned) unrefused."""
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    cls = SyntheticBrightestLesions if cls == "brightest" else cls
    for kw in ({"mimic_rate": np.True_}, {"difficulty": True}, {"lesion_fraction": True}):
        with pytest.raises((TypeError, ValueError)):
            cls(2, image_size=32, **kw)


# ---- ca_rev125 (strict xfail: review of bd11512)

def _ca_rev125_png16(path, arr):
    """Write ``arr`` ``(H, W, C)`` uint16 (C = 1, 2, 3 or 4) as a 16-bit PNG (the layout a scanner's or
    microscope's export has), without a library that could read it back differently."""
    import struct
    import zlib

    H, W, C = arr.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(arr[r]).astype(">u2").tobytes() for r in range(H))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 16, {1: 0, 2: 4, 3: 2, 4: 6}[C], 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                           + chunk(b"IEND", b""))


def test_ca_rev125_a_16_bit_rgb_png_image_is_read_at_its_values_or_refused(tmp_path):
    """Run: a folder whose one image is a 16-bit RGB PNG with values 0..199 (a 16-bit export of
    dim data); FolderDataset read it.  Expected: its values (as a 16-bit grey PNG's are read) or
    a one-line refusal.  Observed: Pillow opens 16-bit colour PNGs as 8-bit "RGB", keeping each
    value's high byte: every pixel read 0.0, silently (any 16-bit RGB image loses its low byte)."""
    from convex_attention.paper.data.folder import _read_array

    arr = np.random.default_rng(0).integers(0, 200, (16, 16, 3)).astype(np.uint16)
    root = _one_image_folder(tmp_path / "f", "a.png", lambda path: _ca_rev125_png16(path, arr))
    try:
        FolderDataset(root)
        read = _read_array(os.path.join(root, "images", "a.png"))
    except ValueError:
        return  # refused: as good as read right
    assert np.array_equal(read, np.moveaxis(arr, -1, 0).astype(np.float32)), float(read.max())


def test_ca_rev125_a_16_bit_rgb_png_mask_keeps_its_lesion_or_is_refused(tmp_path):
    """Run: a folder (labels.csv: a.npy,1) whose mask masks/a.png is a 16-bit RGB PNG, 1 on a
    4x4 lesion and 0 elsewhere; FolderDataset(root)[0].  Expected: a mask of 16 lesion pixels, or a
    one-line refusal.  Observed: the mask is read as its high bytes (0 everywhere): an empty mask,
    accepted without a word (explain would skip the image as one without a lesion)."""
    root = _one_image_folder(tmp_path / "f", "a.npy", _npy(np.random.default_rng(0).random((3, 16, 16))))
    (tmp_path / "f" / "labels.csv").write_text("filename,label\na.npy,1\n")
    os.makedirs(tmp_path / "f" / "masks")
    mask = np.zeros((16, 16, 3), np.uint16)
    mask[4:8, 4:8] = 1
    _ca_rev125_png16(tmp_path / "f" / "masks" / "a.png", mask)
    try:
        item = FolderDataset(root)[0]
    except ValueError:
        return
    assert int(item[2].sum()) == 16


def test_ca_rev125_a_png_name_holding_postscript_never_runs_ghostscript(tmp_path, monkeypatch):
    """Run: images/a.png holding an EPS file (PostScript, a program) and FolderDataset(root), with
    Ghostscript's call recorded (EpsImagePlugin.gs_binary set to "gs", subprocess.check_call
    replaced).  Expected: the file refused as not a PNG, no program run (nothing loaded from disk
    runs code).  Observed: Image.open is called without formats=["PNG"], so Pillow's EPS plugin
    ran ['gs', ..., '-f', '<root>/images/a.png'] (JPEG, TIFF, BMP and GIF files named .png are
    likewise decoded and accepted)."""
    from PIL import EpsImagePlugin

    calls = []

    def record(cmd, **kwargs):
        calls.append(cmd)
        raise OSError("ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")
    monkeypatch.setattr(EpsImagePlugin.subprocess, "check_call", record)
    eps = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n"
    root = _one_image_folder(tmp_path / "f", "a.png", lambda path: Path(path).write_text(eps))
    with pytest.raises(ValueError):
        FolderDataset(root)
    assert calls == []


def test_ca_rev125_a_png_over_pillows_pixel_limit_is_refused_in_one_line(tmp_path):
    """Run: images/a.png a valid 1-bit PNG of 14000 x 13000 pixels (22 kB; over Pillow's
    decompression-bomb limit of 178,956,970 pixels); FolderDataset(root).  Expected: ValueError
    naming the file (train: one line, exit 2).  Observed: PIL.Image.DecompressionBombError, which
    _read_array does not catch: `train --data folder` ends in a 38-line traceback, exit 1."""
    import struct
    import zlib

    def write(path, W=14000, H=13000):
        comp = zlib.compressobj()
        row = b"\x00" * (1 + (W + 7) // 8)
        data = b"".join(comp.compress(row) for _ in range(H)) + comp.flush()

        def chunk(kind, payload):
            return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
                ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 1, 0, 0, 0, 0))
                               + chunk(b"IDAT", data) + chunk(b"IEND", b""))

    root = _one_image_folder(tmp_path / "f", "a.png", write)
    with pytest.raises(ValueError, match="a.png"):
        FolderDataset(root)


@pytest.mark.parametrize("how", ["copy", "link"])
def test_ca_rev125_an_image_in_both_the_training_and_the_validation_folder_is_refused(tmp_path, how):
    """Run: root/train from _write_folder and root/val the same files (a copy of the folder, or
    val/images/* links to train/images/*); build_datasets("folder", root).  Expected: ValueError
    naming the shared image (validation AUC picks best.pt: scored on training images it is
    meaningless).  Observed: accepted; `train --data folder` on such a root trains and reports
    its validation AUC without a word (FolderDataset checks duplicates within one labels.csv
    only)."""
    import shutil

    _write_folder(str(tmp_path / "r" / "train"))
    shutil.copytree(tmp_path / "r" / "train", tmp_path / "r" / "val")
    if how == "link":
        for name in os.listdir(tmp_path / "r" / "val" / "images"):
            os.remove(tmp_path / "r" / "val" / "images" / name)
            os.symlink(tmp_path / "r" / "train" / "images" / name, tmp_path / "r" / "val" / "images" / name)
    with pytest.raises(ValueError, match="img0"):
        build_datasets("folder", root=str(tmp_path / "r"))


def test_ca_rev125_a_segmentation_whose_affine_mirrors_the_images_is_aligned_or_refused(tmp_path):
    """Run: a patient written as BraTS stores it (affine diag(-1, -1, 1): L, P, S), its lesion at
    left-right index 4..15, then its segmentation re-saved by nibabel.as_closest_canonical (R, A, S:
    the same anatomy, its array flipped on both in-plane axes); BraTSSlices(root, "all").
    Expected: the segmentation read in the images' orientation (mask columns 4..15) or a refusal
    (the docstring: "files of one patient must agree on their axes").  Observed: accepted; only
    the permutation of the axes is compared, never their direction, so the mask lies at
    columns 24..35, the mirror image: the tumour image (label 1) is the healthy hemisphere."""
    import nibabel as nib

    vols, seg = _anatomy()
    seg[4:16, 12:30, 1:3] = 1
    root = str(tmp_path / "b")
    folder = _write_patient(root, "P", vols, seg, signs=(-1, -1, 1))
    path = os.path.join(folder, "P_seg.nii.gz")
    canonical = nib.as_closest_canonical(nib.load(path))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    nib.save(nib.Nifti1Image(np.asarray(canonical.dataobj).astype(np.int16), canonical.affine), path)
    try:
        ds = BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"))
    except ValueError:
        return
    image, label, mask = ds[0]
    cols = mask.any(0).nonzero().flatten()
    assert int(label) == 1 and (int(cols.min()), int(cols.max())) == (4, 15)


def test_ca_rev125_a_complex_nifti_volume_is_refused(tmp_path):
    """Run: a patient whose T2 volume is complex64 (2+3j in the brain); BraTSSlices(root, "all").
    Expected: ValueError naming the file, as the folder source refuses complex NPY ("not real
    numbers").  Observed: accepted; get_fdata(dtype=float32) drops the imaginary part (a
    ComplexWarning at most) and the slices are built from the real part."""
    import warnings

    import nibabel as nib

    vols, seg = _anatomy()
    seg[4:16, 12:30, 1:3] = 1
    root = str(tmp_path / "b")
    folder = _write_patient(root, "P", vols, seg)
    t2 = (vols["t2"] != 0) * np.complex64(2 + 3j)
    nib.save(nib.Nifti1Image(t2.astype(np.complex64), np.eye(4)), os.path.join(folder, "P_t2.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        with pytest.raises(ValueError, match="P_t2"):
            BraTSSlices(root, "all", min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"))


def test_ca_rev125_a_label_0_image_with_a_lesion_mask_is_refused(tmp_path):
    """Run: _write_folder (img1 labelled 1 with a 4x4 lesion mask) with labels.csv's labels
    swapped (img0 1, img1 0, img2 1: rows out of step with the masks); FolderDataset(root).
    Expected: ValueError naming img1.png (a mask marks lesion pixels, label 0 is the normal
    class; explain takes label 1 with a non-empty mask as its lesion images).  Observed:
    accepted; explain would then skip img1 and find no lesion in img0/img2 without a word."""
    root = str(tmp_path / "f")
    _write_folder(root)
    (tmp_path / "f" / "labels.csv").write_text("filename,label\nimg0.png,1\nimg1.png,0\nimg2.png,1\n")
    with pytest.raises(ValueError, match="img1.png"):
        FolderDataset(root)


# ---- ca_rev128 (strict xfail: review of 5bbdc7a)


def test_ca_rev128_every_validation_copy_of_a_training_image_is_named(tmp_path):
    from PIL import Image

    from convex_attention.paper.data import build_datasets

    root = tmp_path / "r"
    _write_folder(str(root / "train"))
    _write_folder(str(root / "val"), seed=100)
    pixels = np.asarray(Image.open(root / "train" / "images" / "img1.png"), np.float32)[None]
    for name in ("copy.npy", "again.npy"):
        np.save(root / "val" / "images" / name, pixels)
        np.save(root / "val" / "masks" / name, np.zeros((16, 16), np.float32))
    with open(root / "val" / "labels.csv", "a") as f:
        f.write("copy.npy,1\nagain.npy,1\n")
    train = FolderDataset(str(root / "train"))
    assert sorted(FolderDataset(str(root / "val")).images_shared_with(train)) == [("again.npy", "img1.png"),
                                                                                 ("copy.npy", "img1.png")]
    with pytest.raises(ValueError, match=r"^2 validation image\(s\)"):
        build_datasets("folder", root=str(root))


def _assert_a_png_saved_as_npy_over_255_is_refused(root, train_seed: int, val_seed: int, image: int, label: int):
    """Training image ``image`` (a PNG of _write_folder at ``train_seed``) saved again into the
    validation folder as ``copy.npy``, its pixels / 255 in float32, with its mask and ``label``:
    one input to the model (z-scored per image and channel), so build_datasets refuses it."""
    from PIL import Image

    _write_folder(str(root / "train"), seed=train_seed)
    _write_folder(str(root / "val"), seed=val_seed)
    pixels = np.asarray(Image.open(root / "train" / "images" / f"img{image}.png"), np.float32)
    np.save(root / "val" / "images" / "copy.npy", pixels / np.float32(255.0))
    Image.open(root / "train" / "masks" / f"img{image}.png").save(root / "val" / "masks" / "copy.png")
    with open(root / "val" / "labels.csv", "a") as f:
        f.write(f"copy.npy,{label}\n")
    train, val = FolderDataset(str(root / "train")), FolderDataset(str(root / "val"))
    # oracle: what the model is fed (image_label: z-scored per channel) is the same image, to float32 rounding
    assert float((train.image_label(image)[0] - val.image_label(3)[0]).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="copy.npy"):
        build_datasets("folder", root=str(root))


# ---- ca_rev143 (strict xfail: review of ea9699c)

def test_ca_rev143_a_training_image_saved_again_rescaled_is_refused_in_the_validation_set(tmp_path):
    """Run: root/train from _write_folder (PNG, 0..255) and root/val another folder plus copy.npy, the
    pixels of train/images/img1.png divided by 255 (the usual PNG -> NPY in [0, 1] conversion), with
    img1's mask; build_datasets("folder", root).  Expected: ValueError naming copy.npy (the model's
    inputs are z-scored per image and channel, so the two files are one input).  Observed: accepted;
    images_shared_with digests the raw values, and the normalised tensors differ by 1.2e-7 at most."""
    _assert_a_png_saved_as_npy_over_255_is_refused(tmp_path / "r", train_seed=0, val_seed=100, image=1, label=1)


# ---- ca_rev145 (strict xfail: review of 0ef415e)

def test_ca_rev145_blank_slices_of_other_channel_levels_are_not_called_one_image(tmp_path):
    """Run: root/train and root/val from _write_folder (2-channel NPY), plus train/blank.npy (channel 0 all 0,
    channel 1 all 1) and val/blank.npy (channel 0 all 3, channel 1 all 0), both label 0; build_datasets("folder").
    Expected: accepted, as at ea9699c (distinct pixels; both are blank slices, which "may occur in any set" and
    which the model sees as all zeros).  Observed: ValueError "1 validation image(s) ... are also training
    images": every image constant per channel (min != max across channels) digests alike as the model sees it."""
    root = tmp_path / "r"
    _write_folder(str(root / "train"), masks=False, fmt="npy")
    _write_folder(str(root / "val"), masks=False, fmt="npy", seed=100)
    levels = {"train": (0.0, 1.0), "val": (3.0, 0.0)}
    for folder, (a, b) in levels.items():
        np.save(root / folder / "images" / "blank.npy", np.stack([np.full((16, 16), a), np.full((16, 16), b)])
                .astype(np.float32))
        with open(root / folder / "labels.csv", "a") as f:
            f.write("blank.npy,0\n")
    train, val = FolderDataset(str(root / "train")), FolderDataset(str(root / "val"))
    assert not train.image_label(3)[0].any() and not val.image_label(3)[0].any()  # oracle: a blank input each
    build_datasets("folder", root=str(root))


def test_ca_rev145_a_rescaled_copy_is_found_whatever_the_rounding_of_its_normalised_values(tmp_path):
    """Run: as ca_rev143's test, with the training image drawn at seed 119 (_write_folder's img0): val/copy.npy
    is train/images/img0.png's pixels / 255 in float32.  Expected: ValueError naming copy.npy (user_guide:
    'the same picture at another scale ... compared at 1e-3 of a standard deviation').  Observed: accepted:
    the two normalised images differ by 6.9e-8 at most, but one value is 0.5434999815 x 1e3 in one and
    0.5435000160 x 1e3 in the other, and np.rint sends them to 543 and 544 (about 0.3 % of 16x16 grey
    images do this, measured over seeds 0..2999: 119, 272, 492, ...)."""
    _assert_a_png_saved_as_npy_over_255_is_refused(tmp_path / "r", train_seed=119, val_seed=1000, image=0, label=0)


def test_a_float_image_saved_again_at_another_scale_and_offset_is_found(tmp_path):
    """A float image stored again as 0.5 x + 3 (in float32) is one input after the normalisation,
    and is found: digests of values rounded to a grid missed a copy with one value at a boundary
    (0.3 % of 16x16 images, nearly every large one), digests of the pixels' order one whose
    rounding tied two values (every 256x256 float image tried: ca_rev145)."""
    root = tmp_path / "r"
    _write_folder(str(root / "train"), masks=False, fmt="npy")
    _write_folder(str(root / "val"), masks=False, fmt="npy", seed=100)
    picture = np.random.default_rng(3).random((2, 16, 16)).astype(np.float32)
    np.save(root / "train" / "images" / "big.npy", picture)
    np.save(root / "val" / "images" / "big_again.npy", (picture * np.float32(0.5) + np.float32(3.0)))
    for folder, name in (("train", "big.npy"), ("val", "big_again.npy")):
        with open(root / folder / "labels.csv", "a") as f:
            f.write(f"{name},0\n")
    with pytest.raises(ValueError, match="big_again.npy"):
        build_datasets("folder", root=str(root))


# ---- ca_rev148 (strict xfail: review of 5a70ee6)

def test_ca_rev148_sets_of_other_channel_counts_share_no_image(tmp_path):
    """Run: _write_folder's grey PNG set (1x16x16) and its 2-channel NPY set (2x16x16, seed 100), both scanned;
    grey.images_shared_with(two).  Expected: [] as at 0ef415e (no image of one set is an input of the other's
    shape; _same_picture checks the shapes for this).  Observed: RuntimeError "X1 and X2 must have the same
    number of columns. X1: 16 X2: 32" from torch.cdist: the 4x4 sketches hold C·16 values (and min(4, H)·min(4, W)
    per channel: a 2x3 image's 6 against 16 fails alike)."""
    _write_folder(str(tmp_path / "grey"), masks=False)
    _write_folder(str(tmp_path / "two"), masks=False, fmt="npy", seed=100)
    grey, two = FolderDataset(str(tmp_path / "grey")), FolderDataset(str(tmp_path / "two"))
    assert grey.image_shape == (1, 16, 16) and two.image_shape == (2, 16, 16)  # holds today
    assert grey.images_shared_with(two) == []
    assert two.images_shared_with(grey) == []


# ---- ca_rev177 (strict xfail, a documented limit: review of b20d240)

@pytest.mark.xfail(strict=True, reason="ca_rev177, documented limit: two synthetic seeds in data check's --seed "
                                       "range draw the same images (torch keeps 32 bits of the key); the keys "
                                       "stay, or every committed run's data would be redrawn (docs/experiment.md)")
def test_ca_rev177_two_seeds_of_the_seed_range_do_not_draw_the_same_images():
    """Run: SyntheticRimLesions(2, 32, seed=s) with s = 1_000_003^-1 mod 2**32 = 2021759595 (within
    data check's --seed range, 0 .. 2**32 - 1) against seed 0.  Expected: another seed, other images
    (the seeds separate sets; protocol.py guards its splits against this very collision: _STREAMS).
    Observed: seed s's image 0 is seed 0's image 1, bit for bit (synthetic.py: manual_seed(seed *
    1_000_003 + index), and torch's CPU generator keeps the key's low 32 bits), so `data check --seed
    2021759595` re-draws all but one image of `--seed 0`'s training and held-out sets."""
    from convex_attention.io.settings import SEED
    from convex_attention.paper.config import IMAGES_PER_SEED

    shifted = pow(IMAGES_PER_SEED, -1, 2 ** 32)
    assert SEED.parse(str(shifted)) == shifted  # a seed data check takes
    a, b = SyntheticRimLesions(2, 32, seed=shifted)[0], SyntheticRimLesions(2, 32, seed=0)[1]
    assert not torch.equal(a[0], b[0])


def test_data_checks_two_sets_share_no_image_and_training_sets_below_4294_never_meet():
    """What docs/experiment.md promises beside ca_rev177's documented limit: data check's training
    set (seed s) and held-out set (seed s + 10000) meet for no s and no size up to a seed's block,
    by the generators' keys modulo 2**32; nor do two runs' training sets where both seeds are below
    4294 (their held-out sets can: ca_rev183)."""
    from convex_attention.paper.config import IMAGES_PER_SEED
    from convex_attention.paper.protocol import keys_meet, seed_keys

    n = IMAGES_PER_SEED
    for s in (0, 1, 4293, 2021759595, 2 ** 32 - 10001):
        assert not keys_meet(seed_keys(s, n), seed_keys(s + 10000, n)), s
    assert not keys_meet(seed_keys(0, n), seed_keys(4293, n)) and keys_meet(seed_keys(0, n), seed_keys(4294, n))
    assert keys_meet(seed_keys(0, 2), seed_keys(pow(IMAGES_PER_SEED, -1, 2 ** 32), 2))  # the documented limit


# ---- ca_rev183 (review of c2c898e; its strict xfails now pass)


def test_ca_rev183_data_check_seeds_below_4294_never_meet_as_experiment_md_says():
    """docs/experiment.md (02ec3b8), on data check's two sets (seed s and s + 10000): "two seeds
    whose keys meet modulo 2**32 draw the same images (...; seeds below 4294 never meet)".  Run:
    the keys of data check's sets for --seed 0 and --seed 1410 at --n 91179 (allowed: up to
    IMAGES_PER_SEED).  Observed: seed 10000 (--seed 0's held-out set) and seed 1410 (--seed 1410's
    training set) meet: 8590 * 1_000_003 = 2 * 2**32 + 91178, so --seed 1410's training image 91178
    is --seed 0's held-out image 0, bit for bit.  Either the docs stop promising it, or the sets
    stop meeting."""
    from convex_attention.paper.config import IMAGES_PER_SEED
    from convex_attention.paper.data.synthetic import render_image
    from convex_attention.paper.protocol import keys_meet, seed_keys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "experiment.md").read_text(encoding="utf-8")
    promised = "seeds below 4294 never meet" in " ".join(doc.split())
    n = 91_179
    assert n <= IMAGES_PER_SEED
    sets = {s: (seed_keys(s, n), seed_keys(s + 10_000, n)) for s in (0, 1410)}  # data check: training, held-out
    meet = any(keys_meet(a, b) for a in sets[0] for b in sets[1410])
    if meet:
        assert torch.equal(render_image(1410, 91_178, image_size=8)[0], render_image(10_000, 0, image_size=8)[0])
    assert not (promised and meet)


# ---- ca_rev212 (mutation review of 3edf1f9, cli): tests that kill surviving mutants

def test_ca_rev212_data_check_wait_reaches_the_out_folders_lock(tmp_path, capsys, monkeypatch):
    """``data check --out DIR --wait`` asks the folder's lock to wait (without it: to refuse at once)."""
    from helpers import run_cli

    from convex_attention.io import lock

    asked = []
    real = lock.results_lock

    def recording(folder, **kwargs):
        asked.append(kwargs.get("wait"))
        return real(folder, **kwargs)

    monkeypatch.setattr(lock, "results_lock", recording)
    _canned_checks(monkeypatch)
    code, _, err = run_cli(["data", "check", "--quiet", "--out", str(tmp_path / "dc"), "--wait"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["data", "check", "--quiet", "--out", str(tmp_path / "dc2")], capsys)
    assert code == 0, err
    assert asked == [True, False]


def test_ca_rev212_data_check_takes_mimic_rate_1_with_the_brightest_rule(tmp_path, capsys, monkeypatch):
    """``--mimic-rate`` must be at least 1 with ``--data synthetic-brightest``: 1 itself is taken."""
    from helpers import run_cli

    _canned_checks(monkeypatch)
    brightest = ["data", "check", "--quiet", "--data", "synthetic-brightest", "--mimic-rate"]
    code, _, err = run_cli([*brightest, "1"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*brightest, "0.99"], capsys)
    assert code == 2 and "--mimic-rate must be at least 1" in err, err


def test_ca_rev212_data_check_removes_the_temporary_a_killed_check_left(tmp_path, capsys, monkeypatch):
    """Holding --out, data check removes the data_check.json.<pid>-<n>.tmp a killed check left (and names it),
    and leaves a file of another name alone."""
    from helpers import run_cli

    out = tmp_path / "dc"
    out.mkdir()
    (out / "data_check.json.4242-0.tmp").write_text("")
    (out / "notes.txt.4242-0.tmp").write_text("the user's")
    _canned_checks(monkeypatch)
    code, _, err = run_cli(["data", "check", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["data_check.json", "notes.txt.4242-0.tmp"]
    assert "data check: removed data_check.json.4242-0.tmp" in err


# ---- ca_rev215 (mutation review of 38d417d, reports, sanity, data and models): tests that kill surviving mutants


def test_ca_rev215_under_the_brightest_rule_the_label_is_whether_the_lesion_is_the_brightest_structure():
    """The label follows the rule from the drawn amplitudes, and a lesion alone (mimic_rate 0,
    drawn as a normal image) is the brightest: label 1 with its mask (the slow edge-case test's
    check, fast at 32x32; mutant: the drawn label kept)."""
    from convex_attention.paper.data.synthetic import render_rim_image

    for i in range(3):
        r = render_rim_image(1, i, image_size=32, mimic_rate=0.0, lesion_fraction=0.0, details=True,
                             label_rule="brightest")
        assert r["kinds"] == ["lesion"] and r["label"] == 1 and torch.equal(r["mask"], r["structure"] == 0)
    for i in range(8):
        r = render_rim_image(2, i, image_size=32, mimic_rate=2.0, details=True, label_rule="brightest")
        brightest = max(range(len(r["kinds"])), key=r["amplitudes"].__getitem__)
        assert r["label"] == int(r["kinds"][brightest] == "lesion"), (i, r["kinds"], r["amplitudes"])
        assert bool(r["mask"].any()) == bool(r["label"])


@pytest.mark.parametrize("kind", ["synthetic", "rim"])
def test_ca_rev215_a_synthetic_dataset_has_no_image_past_its_last(kind):
    """``ds[n]`` raises IndexError, so iterating a dataset of ``n`` images yields ``n`` of them
    (the sequence protocol stops at IndexError; mutant: ``index <= self.n`` in SyntheticLesions)."""
    from convex_attention.paper.data.synthetic import SyntheticLesions, SyntheticRimLesions

    ds = SyntheticLesions(3, image_size=16, seed=0) if kind == "synthetic" else SyntheticRimLesions(3, 32, seed=0)
    for index in (3, 4, -1):
        with pytest.raises(IndexError):
            ds[index]
    assert len(list(ds)) == 3


# ---- ca_rev249 (hostile review of paper.data.brats)

_CA_REV249_LPS = np.array([[-1.0, 0, 0, 23], [0, -1.0, 0, 19], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # BraTS: L, P, S


def _ca_rev249_save(path, array, affine=_CA_REV249_LPS, slope=None, inter=None):
    """Save ``array`` as NIfTI; with ``slope``/``inter``, as an uncompressed .nii whose header holds them
    (written byte by byte: nibabel would choose its own scaling for an in-memory array)."""
    import nibabel as nib

    if slope is None:
        nib.save(nib.Nifti1Image(array, affine), path)
        return
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["scl_slope"], header["scl_inter"], header["vox_offset"] = slope, inter, 352
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + np.asarray(array).tobytes(order="F"))
    assert (nib.load(path).dataobj.slope, nib.load(path).dataobj.inter) == (slope, inter)


def _ca_rev249_patient(root, pid, shape=(24, 20, 8), seg_affine=_CA_REV249_LPS, seed=0):
    """A patient as BraTS stores it (L, P, S): int16 modalities scaled by their header (2 x raw + 10,
    the background raw -5 so 0 once scaled), a whole-tumour label set (1, 2, 4).  Returns the folder and
    the scaled volumes and the segmentation, canonical (LR, AP, SI)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, pid)
    os.makedirs(folder)
    brain = np.zeros(shape, bool)
    brain[2:22, 2:18, :] = True
    vols = {}
    for m in ("flair", "t1", "t1ce", "t2"):
        raw = np.where(brain, rng.integers(20, 90, shape), -5).astype(np.int16)
        _ca_rev249_save(os.path.join(folder, f"{pid}_{m}.nii"), raw, slope=2.0, inter=10.0)
        vols[m] = raw.astype(np.float64) * 2 + 10
    seg = np.zeros(shape, np.uint8)
    seg[3:9, 4:12, 1] = 1  # left of the middle: 48 px
    seg[14:21, 5:15, 2] = 2  # right of it: 70 px
    seg[10:15, 6:11, 3] = 4  # columns 10..14: centre 12, not left of W / 2 = 12: the tumour image is [10, 24)
    seg[12:14, 6:11, 4] = 4  # 10 px: not more than min_tumour_area (10), dropped
    seg[0:24, 3:6, 5] = 1  # every column: no healthy side, dropped
    seg[20:24, 3:9, 6] = 2  # touching the right edge: 24 px
    _ca_rev249_save(os.path.join(folder, f"{pid}_seg.nii.gz"), seg, seg_affine)
    return folder, vols, seg


def _ca_rev249_brute_force(vols, seg, area):
    """The module docstring, step by step, in numpy: z-score over the non-zero voxels, slices with more than
    ``area`` tumour pixels, the left-right split, zero-padding to a square (no resize at that size)."""
    z_scored = []
    for m in ("flair", "t1", "t1ce", "t2"):
        v, brain = vols[m], vols[m] != 0
        z_scored.append(np.where(brain, (v - v[brain].mean()) / v[brain].std(), 0.0))
    z_scored = np.stack(z_scored)
    images, labels, masks, slices = [], [], [], []
    for z in range(seg.shape[2]):
        tumour = seg[:, :, z].T > 0
        if tumour.sum() <= area:
            continue
        H, W = tumour.shape
        cols = [c for c in range(W) if tumour[:, c].any()]
        c0, c1 = cols[0], cols[-1]
        keep = [c <= c1 for c in range(W)] if (c0 + c1) / 2 < W / 2 else [c >= c0 for c in range(W)]
        if all(keep):
            continue
        piece = z_scored[:, :, :, z].transpose(0, 2, 1)
        side = max(H, W)
        top, left = (side - H) // 2, (side - W) // 2
        for label, columns, mask in ((1, keep, tumour), (0, [not k for k in keep], np.zeros_like(tumour))):
            image = np.zeros((4, side, side))
            padded = np.zeros((side, side), bool)
            for c in range(W):
                if columns[c]:
                    image[:, top:top + H, left + c] = piece[:, :, c]
            padded[top:top + H, left:left + W] = mask
            images.append(image), labels.append(label), masks.append(padded), slices.append(z)
    return np.array(images), labels, np.array(masks), slices


def test_ca_rev249_preprocessing_matches_a_brute_force_reading_of_the_docstring(tmp_path):
    """Scaled int16 volumes (scl_slope 2, scl_inter 10: read raw, the background -5 would be brain), stored
    L, P, S, non-square slices (padded), tumours left, right, astride and at the edge, a too-small one
    and one spanning every column, labels 1, 2 and 4 as the whole tumour."""
    folder, vols, seg = _ca_rev249_patient(str(tmp_path / "b"), "Brats18_X_1")
    out = preprocess_patient(folder, "Brats18_X_1", min_tumour_area=10, image_size=24)
    images, labels, masks, slices = _ca_rev249_brute_force(vols, seg, 10)
    assert out["slices"].tolist() == slices == [1, 1, 2, 2, 3, 3, 6, 6]
    assert out["labels"].tolist() == labels
    assert np.array_equal(out["masks"], masks)
    assert np.allclose(out["images"], images, atol=1e-5)


def test_ca_rev249_a_modality_without_its_segmentation_is_an_error_naming_it(tmp_path):
    """Before: only segmentations were looked for, so a patient whose seg file was missing (or misnamed, as
    BraTS 2020's case 355) was left out without a word, and the split changed with it."""
    root = str(tmp_path / "b")
    _ca_rev249_patient(root, "Brats18_X_1")
    folder, _, _ = _ca_rev249_patient(root, "Brats18_X_2", seed=1)
    os.remove(os.path.join(folder, "Brats18_X_2_seg.nii.gz"))
    with pytest.raises(ValueError, match=r"patient 'Brats18_X_2': missing seg volume '.*Brats18_X_2_seg\.nii\.gz' "
                                         r"\(or \.nii\) beside its flair, t1, t1ce, t2; restore it") as err:
        find_patients(root)
    assert "\n" not in str(err.value)
    for name in os.listdir(folder):  # no modality left either: no patient, and nothing to say
        os.remove(os.path.join(folder, name))
    assert list(find_patients(root)) == ["Brats18_X_1"]


@pytest.mark.parametrize("how", ["shifted", "2 mm", "rounded"])
def test_ca_rev249_a_segmentation_on_another_grid_is_refused(tmp_path, how):
    """Before: only the axes' order and direction and the shape were compared, so a segmentation shifted by
    5 voxels (or on a 2 mm grid) was read voxel by voxel against the images: its lesion elsewhere.  A header
    rounded by another tool (1e-4 mm) is still one grid."""
    affine = _CA_REV249_LPS.copy()
    if how == "shifted":
        affine[0, 3] += 5
    elif how == "2 mm":
        affine[:3, :3] *= 2
    else:
        affine[:3, 3] += 1e-4
    folder, _, _ = _ca_rev249_patient(str(tmp_path / "b"), "P", seg_affine=affine)
    if how == "rounded":
        assert preprocess_patient(folder, "P", min_tumour_area=10, image_size=24)["labels"].size == 8
        return
    with pytest.raises(ValueError, match=r"patient 'P': '.*P_seg\.nii\.gz' lies on another grid than "
                                         r"'.*P_flair\.nii' .*re-export them") as err:
        preprocess_patient(folder, "P", min_tumour_area=10, image_size=24)
    assert "\n" not in str(err.value)


def test_ca_rev249_a_header_declaring_a_huge_volume_is_refused_before_its_voxels_are_read(tmp_path, monkeypatch):
    """Before: a 1.4 kB .nii.gz declaring 2000**3 int16 voxels was read (51 s, 15.5 GB) before nibabel found
    it short.  Here reading voxels raises, so only a refusal from the header passes."""
    import gzip

    import nibabel as nib

    folder, _, _ = _ca_rev249_patient(str(tmp_path / "b"), "P")
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.int16)
    header.set_sform(_CA_REV249_LPS, code=1)
    os.remove(os.path.join(folder, "P_t2.nii"))
    with gzip.open(os.path.join(folder, "P_t2.nii.gz"), "wb") as f:
        f.write(header.binaryblock + b"\0" * 1004)
    real = nib.Nifti1Image.get_fdata

    def read(image, *args, **kwargs):
        assert image.shape[0] != 2000, "the huge volume's voxels were read"
        return real(image, *args, **kwargs)

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", read)
    with pytest.raises(ValueError, match=r"patient 'P': '.*P_t2\.nii\.gz' declares \(2000, 2000, 2000\) voxels, "
                                         r"more than"):
        preprocess_patient(folder, "P", min_tumour_area=10, image_size=24)


@pytest.mark.parametrize("value, shown", [(255, "255"), (0.5, "0.5"), (-1, "-1"), (5, "5")])
def test_a_segmentation_value_that_is_no_brats_label_is_refused_naming_the_file(tmp_path, value, shown):
    """ca_rev249's risk: any value above 0 read as lesion, so an image saved under the segmentation's name (or a
    resampled one) was accepted; labels 0 to 4 (4 in 2018, 3 since 2023) are read as before."""
    import nibabel as nib

    from convex_attention.paper.data.brats import load_patient

    folder, _, seg = _ca_rev249_patient(str(tmp_path), "P1")
    path = os.path.join(folder, "P1_seg.nii.gz")
    relabelled = np.where(seg == 4, 3, seg).astype(np.float32)  # BraTS 2023's labels
    nib.save(nib.Nifti1Image(relabelled, _CA_REV249_LPS), path)
    assert load_patient(folder, "P1")[1].sum() == (seg > 0).sum()
    relabelled[0, 0, 0] = value
    nib.save(nib.Nifti1Image(relabelled, _CA_REV249_LPS), path)
    with pytest.raises(ValueError, match=rf"P1_seg\.nii\.gz' holds 1 value\(s\) that are no BraTS label \({shown};"):
        load_patient(folder, "P1")


# ---- ca_rev254 (hostile review of the session's diff)

def test_ca_rev254_a_grid_within_half_a_voxel_along_each_axis_is_one_grid(tmp_path):
    """The grid check compared a distance in mm with half the smallest spacing: on a 1 x 1 x 5 mm grid a segmentation
    1 mm off along the 5 mm axis (0.2 voxel: every voxel still reads its own) was refused as 'more than half a
    voxel'.  Half a voxel is now along each of the grid's own axes; 0.6 voxel is still refused."""
    import nibabel as nib

    from convex_attention.paper.data.brats import load_patient

    folder = str(tmp_path / "P")
    os.makedirs(folder)
    thick = np.diag([1.0, 1.0, 5.0, 1.0])
    shape, rng = (8, 6, 4), np.random.default_rng(0)
    for m in ("flair", "t1", "t1ce", "t2"):
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), thick), os.path.join(folder, f"P_{m}.nii.gz"))
    seg = np.zeros(shape, np.float32)
    seg[2:4, 2:4, 1] = 2
    for shift, accepted in ((1.0, True), (3.0, False)):
        moved = thick.copy()
        moved[2, 3] = shift
        nib.save(nib.Nifti1Image(seg, moved), os.path.join(folder, "P_seg.nii.gz"))
        if accepted:
            assert load_patient(folder, "P")[1].sum() == 4
        else:
            with pytest.raises(ValueError, match=r"3 mm apart, 0\.6 voxel along an axis, more than half a voxel"):
                load_patient(folder, "P")


def test_ca_rev254_a_value_near_a_label_is_named_as_it_is_not_as_the_label(tmp_path):
    """A float32 segmentation holding 2.0000002 was refused as holding '2', which the same message lists as a
    label."""
    import nibabel as nib

    from convex_attention.paper.data.brats import load_patient

    folder, _, seg = _ca_rev249_patient(str(tmp_path), "P1")
    near = seg.astype(np.float32)
    near[near == 2] = np.nextafter(np.float32(2), np.float32(3))
    nib.save(nib.Nifti1Image(near, _CA_REV249_LPS), os.path.join(folder, "P1_seg.nii.gz"))
    with pytest.raises(ValueError, match=r"holds 1 value\(s\) that are no BraTS label \(2\.00000024; labels"):
        load_patient(folder, "P1")


# ---- ca_rev261 (hostile review of paper/data/folder.py and synthetic.py)


def test_ca_rev261_a_palette_mask_s_transparent_index_is_background(tmp_path):
    """A palette mask whose transparent index (tRNS) is not 0, as an editor exports a transparent background, was
    read by its indices alone: every background pixel was a lesion (64 of 64, not the 4 marked)."""
    from PIL import Image

    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "images/a.png")
    indices = np.ones((8, 8), np.uint8)  # index 1: the transparent background
    indices[2:4, 2:4] = 2  # index 2: the lesion
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0] * 2 + [255, 0, 0] + [0] * 759)
    mask.save(tmp_path / "masks/a.png", transparency=1)
    (tmp_path / "labels.csv").write_text("filename,label\na.png,1\n")
    assert FolderDataset(str(tmp_path))[0][2].nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]


def test_ca_rev261_a_label_file_that_cannot_be_opened_is_refused_in_one_line(tmp_path):
    """labels.csv a folder (or unreadable) ended in an IsADirectoryError traceback, not the data's one-line error."""
    os.makedirs(tmp_path / "labels.csv")
    with pytest.raises(ValueError, match=r"labels\.csv' cannot be read \(Is a directory\)"):
        FolderDataset(str(tmp_path))


def test_ca_rev261_an_npy_header_declaring_more_than_memory_is_refused_in_one_line(tmp_path):
    """A 200-byte .npy whose header declares (3e7, 3e7) float64 (6.4 PiB) ended in a MemoryError traceback."""
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (30000000, 30000000), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"

    def write(path):
        Path(path).write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64))

    root = _one_image_folder(tmp_path, "a.npy", write)
    with pytest.raises(ValueError, match=r"a\.npy' cannot be read as a \.npy array: its header declares more data"):
        FolderDataset(root)


def test_ca_rev261_an_image_is_not_given_the_mask_of_another_listed_image_of_its_stem(tmp_path):
    """Images a.png and a.npy with masks/a.png alone: a.npy's mask was looked up by its stem and found a.png's, the
    mask of another image (here marking a lesion where a.npy has none): it is now missing, and refused."""
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    _write_mask(str(tmp_path / "images/a.png"), (rng.random((8, 8)) * 255).astype(np.uint8))
    np.save(tmp_path / "images/a.npy", rng.random((8, 8)))
    lesion = np.zeros((8, 8), np.uint8)
    lesion[1:3, 1:3] = 255
    _write_mask(str(tmp_path / "masks/a.png"), lesion)
    (tmp_path / "labels.csv").write_text("filename,label\na.png,1\na.npy,1\n")
    with pytest.raises(ValueError, match=r"mask file for 'a\.npy' is missing"):
        FolderDataset(str(tmp_path))
    np.save(tmp_path / "masks/a.npy", np.zeros((8, 8), bool))  # its own mask: found, and read
    ds = FolderDataset(str(tmp_path))
    assert int(ds[0][2].sum()) == 4 and not ds[1][2].any()


def test_ca_rev261_the_lesion_rim_and_dropped_structures_are_stated_as_measured():
    """The module said no core pixel lay on a lesion's outline from 56² on, and no structure was dropped from 48² on
    (render_rim_image: without a difficulty): image 37 of seed 7 at 56², difficulty 1, has one; and image 248 of seed 7
    at 56², difficulty 0, drops a structure.  The docstrings now give the rates measured."""
    from convex_attention.paper.data import synthetic

    r = synthetic.render_rim_image(7, 37, 56, 4, 1.0, 0.5, 3.0, details=True)
    structure, compartment = r["structure"].numpy(), r["compartment"].numpy()
    assert (compartment[_boundary(structure == r["kinds"].index("lesion"))] == 1).sum() == 1
    assert synthetic.render_rim_image(7, 248, 56, 4, 0.0, 0.5, 3.0, details=True)["dropped"] == 1
    doc = " ".join(synthetic.__doc__.split())
    assert "one lesion in 500" in doc and "12 in 1000 at 56²" in doc
    assert "48² and 56² at difficulty 0" in " ".join(synthetic.render_rim_image.__doc__.split())


# ---- ca_rev290 (types of paper)


def test_brats_dataset_normalisation_without_a_training_patient_is_a_value_error(tmp_path):
    """Before: one patient, held out by val_fraction, left no training patient, and normalisation "dataset"
    summed the moments of none (sum() of nothing is 0): a raw TypeError ('int' object is not subscriptable) in
    either split, where the command catches ValueErrors (found by mypy: ca_rev290).  Now a ValueError naming
    the ways out; the per-volume normalisation, which needs no training patient, is unchanged."""
    root = str(tmp_path / "b")
    vols, seg = _anatomy()
    seg[4:16, 12:30, 1] = 1
    _write_patient(root, "Brats18_A_1", vols, seg)
    kw = dict(val_fraction=0.6, seed=0, min_tumour_area=50, image_size=40, cache_dir=str(tmp_path / "c"))
    for split in ("train", "val"):
        with pytest.raises(ValueError, match="holds out the only patient.*normalisation 'volume'"):
            BraTSSlices(root, split, normalisation="dataset", **kw)
    assert len(BraTSSlices(root, "val", normalisation="volume", **kw)) > 0
