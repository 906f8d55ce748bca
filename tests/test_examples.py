"""convex_attention.bench.examples: the example instance the attention-map figure shows."""
import gc
import os
import re
import warnings

import numpy as np
import pytest
from helpers import read_bytes

from convex_attention.bench import examples


def test_save_example_writes_arrays_only_and_the_lambdas_asked_for(tmp_path):
    import numpy as np

    from convex_attention.bench.examples import save_example

    path = save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=0, amortised_steps=0)
    with np.load(path, allow_pickle=False) as data:  # data only, nothing to unpickle
        assert sorted(data.files) == ["levels", "scores0", "scores1", "settings", "temperature"]
        assert data["settings"].dtype.kind == "U"  # its settings: a JSON string, never an object array
    save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=3, amortised_steps=3)
    with np.load(path, allow_pickle=False) as data:
        assert data["fitted_dual0"].shape == data["amortised_dual0"].shape == data["scores1"].shape == (4, 4)
        assert np.isfinite(data["amortised_dual0"]).all()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_an_example_of_other_settings_or_of_none_is_written_again(tmp_path):
    """An interrupted ``bench --overwrite`` left the earlier run's example.npz (another --seed)
    beside the new rows, and ``--resume`` kept it as readable (a review): the example records
    the settings that made it, and a resume with others writes it again."""
    import numpy as np

    from convex_attention.bench.examples import save_example, why_write_again

    path = save_example(str(tmp_path), size=8, seed=0, fit_steps=0)
    assert why_write_again(path, False, dict(size=8, seed=0, fit_steps=0)) is None
    assert why_write_again(path, False, dict(size=8, seed=0, fit_steps=0, scale=1)) is None  # 1 and 1.0: one scale
    assert why_write_again(path, False, dict(size=8, seed=1, fit_steps=0)) == \
        "it is the instance of other settings (seed 0, not 1)"
    # a sweep without learned_dual compares the instance alone: its training settings are none (ca_rev127)
    assert why_write_again(path, False, dict(size=8, seed=0, fit_steps=0, fit_instances=4)) is None
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "settings"}
    np.savez(path, **arrays)  # as an earlier version wrote it
    assert why_write_again(path, False) is None  # nothing to compare with: kept, as before
    assert "records no settings" in why_write_again(path, False, dict(size=8, fit_steps=0))


@pytest.mark.slow  # fits λ for a real example (~0.8 s); the reasons are checked fast on written archives below
# a damaged file leaves no handle open (numpy's own was left to the garbage collector)
@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_a_resume_keeps_an_example_with_the_lambdas_and_writes_a_damaged_one_again(tmp_path):
    """Before: a truncated example.npz raised zipfile.BadZipFile (neither OSError nor
    ValueError) and crashed a resume that adds learned_dual (found by a review)."""
    from convex_attention.bench.examples import save_example, why_write_again

    path = save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=2, amortised_steps=0)
    assert why_write_again(path, need_duals=True) is None
    (tmp_path / "plain").mkdir()
    plain = save_example(str(tmp_path / "plain"), size=8, fit_steps=0)
    assert why_write_again(plain, need_duals=False) is None
    assert "adds learned_dual, whose λ it lacked" in why_write_again(plain, need_duals=True)
    whole = read_bytes(path)
    for damaged in (whole[:200], b"", b"not a zip at all"):
        with open(path, "wb") as f:
            f.write(damaged)
        for need_duals in (True, False):
            assert why_write_again(path, need_duals).startswith("it cannot be read as an example")
        gc.collect()  # a leaked handle is reported when collected
    assert "cannot be read" in why_write_again(str(tmp_path / "missing.npz"), need_duals=False)


# ---------------------------------------------------------------- reading: load_example


def test_an_example_that_cannot_be_opened_is_refused_by_name_and_an_unreadable_one_leaves_no_file_open(
        tmp_path, monkeypatch):
    path = tmp_path / "example.npz"
    path.write_bytes(b"PK\x03\x04 garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # numpy's own handle was left open here
        with pytest.raises(ValueError, match="not a readable .npz"):
            examples.load_example(str(path))
        gc.collect()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(examples, "open", denied, raising=False)
    with pytest.raises(ValueError, match=r"not a readable .npz file \(.*Permission denied"):
        examples.load_example(str(path))


def write_example(path, **changes):
    """An example.npz of 2 levels (4x4 onto 2x2), with ``changes`` (None: left out)."""
    arrays = {"levels": np.array(2), "temperature": np.array([1.0, 1.0]), "scores0": np.zeros((4, 4)),
              "scores1": np.zeros((2, 2)), "fitted_dual0": np.zeros((2, 2))}
    arrays.update(changes)
    np.savez(str(path), **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("changes, message", [
    ({"levels": None}, "lacks 'levels'"),
    ({"temperature": None}, "lacks 'levels' or 'temperature'"),
    ({"levels": np.array(1), "temperature": np.array([1.0])}, "'levels' must be an integer from 2 to 8"),
    ({"levels": np.array(9)}, "'levels' must be an integer from 2 to 8"),
    ({"levels": np.array([2])}, "'levels' must be an integer"),
    ({"levels": np.array(2.0)}, "'levels' must be an integer"),
    ({"temperature": np.array([1, 1])}, "'temperature' must hold 2 positive finite numbers"),
    ({"temperature": np.array([1.0, 1.0, 1.0])}, "'temperature' must hold 2"),
    ({"temperature": np.array([1.0, 0.0])}, "'temperature' must hold 2"),
    ({"temperature": np.array([1.0, np.inf])}, "'temperature' must hold 2"),
    ({"scores1": np.zeros((0, 0))}, "'scores1' must be a 2-D float array"),
    ({"scores1": np.zeros((2, 2), dtype=np.int64)}, "'scores1' must be a 2-D float array"),
    ({"scores1": np.zeros((2, 2, 1))}, "'scores1' must be a 2-D float array"),
    ({"scores1": None}, "'scores1' must be"),
    ({"levels": np.array(3), "temperature": np.ones(3), "scores2": np.zeros((1, 1))},
     "'fitted_dual*' must hold one array per constraint (0 … 1)"),
    ({"fitted_dual0": np.zeros((2, 2), dtype=np.int64)}, "'fitted_dual0' must be finite floats"),
    ({"fitted_dual0": np.full((2, 2), np.nan)}, "'fitted_dual0' must be finite floats"),
    ({"fitted_dual0": np.zeros((2, 1))}, "'fitted_dual0' must be finite floats shaped like 'scores1'"),
])
def test_an_example_is_checked_before_anything_is_drawn(tmp_path, changes, message):
    write_example(tmp_path / "example.npz", **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        examples.load_example(str(tmp_path / "example.npz"))


def test_an_example_that_is_one_array_not_an_archive_is_refused(tmp_path):
    with open(tmp_path / "example.npz", "wb") as f:
        np.save(f, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="not an .npz archive"):
        examples.load_example(str(tmp_path / "example.npz"))


def test_an_example_of_up_to_the_cell_limit_is_read_as_written_in_float64(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    written = {"scores0": rng.normal(size=(4, 4)), "scores1": rng.normal(size=(2, 2)),
               "fitted_dual0": rng.normal(size=(2, 2)), "temperature": np.array([0.7, 1.3])}
    write_example(tmp_path / "example.npz", **written)
    monkeypatch.setattr(examples, "_MAX_EXAMPLE_CELLS", 4 * 4 + 2 * 2)  # exactly the limit: read
    scores, temps, kinds = examples.load_example(str(tmp_path / "example.npz"))
    assert all(s.dtype == np.float64 for s in scores) and np.array_equal(scores[0], written["scores0"])
    assert np.array_equal(scores[1], written["scores1"]) and temps == [0.7, 1.3]
    assert list(kinds) == ["fitted"] and np.array_equal(kinds["fitted"][0], written["fitted_dual0"])
    monkeypatch.setattr(examples, "_MAX_EXAMPLE_CELLS", 4 * 4 + 2 * 2 - 1)
    with pytest.raises(ValueError, match="too large for a figure"):
        examples.load_example(str(tmp_path / "example.npz"))


def test_an_example_whose_lambdas_the_figure_would_refuse_is_written_again(tmp_path):
    """One reader for both: what the figure cannot draw, a resume writes again."""
    path = tmp_path / "example.npz"
    write_example(path)
    assert examples.why_write_again(str(path), need_duals=True) is None
    write_example(path, fitted_dual0=np.zeros((3, 3)))  # not shaped like scores1
    assert "'fitted_dual0' must be finite floats shaped like 'scores1'" in examples.why_write_again(str(path), False)
    write_example(path, fitted_dual0=None)
    assert examples.why_write_again(str(path), need_duals=False) is None
    assert "lacked" in examples.why_write_again(str(path), need_duals=True)
    write_example(path, fitted_dual0=None, fitted_dual00=np.zeros((2, 2)))  # not the name of λ_0
    assert "lacked" in examples.why_write_again(str(path), need_duals=True)


def _member_edited(path, member, edit):
    """The archive at ``path`` with the local and central headers of ``member`` passed
    through ``edit(data, offset_of_header, central)``."""
    import struct
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    edit(data, info.header_offset, False)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        (length,) = struct.unpack_from("<H", data, central + 28)
        if data[central + 46:central + 46 + length] == member.encode():
            edit(data, central, True)
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


def _deflate_damaged(path):
    import zipfile

    rng = np.random.default_rng(0)  # noise: a deflate stream long enough to damage inside
    arrays = {"levels": np.array(2), "temperature": np.ones(2), "scores0": rng.normal(size=(4, 4)),
              "scores1": rng.normal(size=(2, 2))}
    np.savez_compressed(str(path), **arrays)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("scores0.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 10, start + 60):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _not_npy_member(path):
    import zipfile

    write_example(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("extra.npy", b"not an npy")  # numpy hands such a member back as bytes


def _method(number):
    import struct

    def edit(data, offset, central):
        struct.pack_into("<H", data, offset + (10 if central else 8), number)
    return lambda path: (write_example(path), _member_edited(path, "scores0.npy", edit))


def _encrypted(path):
    import struct

    def edit(data, offset, central):
        struct.pack_into("<H", data, offset + (8 if central else 6), 1)
    write_example(path)
    _member_edited(path, "scores0.npy", edit)


@pytest.mark.parametrize("damage", [_deflate_damaged, _not_npy_member, _method(99), _encrypted],
                         ids=["deflate-damaged", "member-not-npy", "unknown-compression", "encrypted"])
def test_a_member_damaged_in_any_way_is_a_value_error_so_a_resume_writes_it_again(tmp_path, damage):
    """Before: zlib.error, AttributeError, NotImplementedError and RuntimeError escaped the
    reader, and a resume that adds learned_dual ended in a traceback (found by a review)."""
    path = tmp_path / "example.npz"
    damage(path)
    with pytest.raises(ValueError, match="an array cannot be read|a member is not a .npy array"):
        examples.load_example(str(path))
    assert examples.why_write_again(str(path), need_duals=True).startswith("it cannot be read as an example")


# ---- ca_rev130 (strict xfail: review of 9ef579d)


def test_ca_rev130_settings_nested_too_deep_to_read_are_unreadable_settings_not_a_crash(tmp_path):
    """example.npz whose 'settings' member is JSON nested 10000 deep (a 0-d string array, as
    save_example stores its settings).  Expected: recorded_settings returns None ('None where
    there are none or they cannot be read'), so plot and bench --resume treat the example as
    one of unknown settings.  Observed: RecursionError from json.loads; on the CLI (a copy of a
    results folder with such an example.npz) `plot R` and `bench ... --resume --out R` (after
    its sweep) both print a traceback and exit 1."""
    path = tmp_path / "example.npz"
    np.savez(path, levels=np.array(2), settings=np.array("[" * 10000 + "]" * 10000))
    assert examples.recorded_settings(str(path)) is None


# ---- ca_rev211 (mutation review of ef12afd, baselines, examples, generators, structures, ops):
#      tests that kill surviving mutants

def test_ca_rev211_an_example_whose_scores_hold_nan_is_refused(tmp_path):
    path = tmp_path / "example.npz"
    write_example(path, scores1=np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="'scores1' holds NaN or Inf"):
        examples.load_example(str(path))


def test_ca_rev211_a_folder_named_example_is_not_a_regular_file(tmp_path):
    (tmp_path / "example.npz").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        examples.load_example(str(tmp_path / "example.npz"))


def test_ca_rev211_float32_scores_and_lambdas_are_read_back_in_float64(tmp_path):
    path = tmp_path / "example.npz"
    write_example(path, scores0=np.ones((4, 4), np.float32), scores1=np.ones((2, 2), np.float32),
                  fitted_dual0=np.full((2, 2), 0.5, np.float32))
    scores, _, kinds = examples.load_example(str(path))
    assert [s.dtype for s in scores] == [np.float64, np.float64] and kinds["fitted"][0].dtype == np.float64


def _ca_rev211_config(**changes):
    config = dict(methods=["learned_dual"], generator="lesion", scale=1.0, seed=0, fit_instances=4,
                  fit_max_values=None, fit_steps=3, amortised_steps=2)
    config.update(changes)
    return config


def _ca_rev211_recorded(tmp_path, config):
    import json

    path = tmp_path / "example.npz"
    recorded = examples._full_settings(examples.sweep_example_settings(config))
    write_example(path, settings=np.array(json.dumps(recorded, sort_keys=True)))
    return str(path)


def test_ca_rev211_sweep_settings_use_the_lesion_generator_for_model_and_no_training_without_learned_dual():
    settings = examples.sweep_example_settings(_ca_rev211_config(methods=["exact"], generator="model"))
    assert settings["generator"] == "lesion" and settings["fit_steps"] == 0 and settings["amortised_steps"] == 0
    learned = examples.sweep_example_settings(_ca_rev211_config())
    assert learned["fit_steps"] == 3 and learned["amortised_steps"] == 2


def test_ca_rev211_an_example_with_amortised_lambdas_only_is_checked_on_its_amortised_steps(tmp_path):
    """An example holding amortised λ but no fitted λ (fit_steps 0) is another run's when the folder's amortised steps
    differ."""
    path = _ca_rev211_recorded(tmp_path, _ca_rev211_config(fit_steps=0, amortised_steps=2))
    assert examples.not_the_sweeps_example(path, _ca_rev211_config(fit_steps=0, amortised_steps=2)) is None
    why = examples.not_the_sweeps_example(path, _ca_rev211_config(fit_steps=0, amortised_steps=5))
    assert why is not None and "amortised_steps" in why


def test_ca_rev211_an_example_with_fitted_lambdas_is_checked_on_its_fit_max_values(tmp_path):
    path = _ca_rev211_recorded(tmp_path, _ca_rev211_config(fit_max_values=1000))
    assert examples.not_the_sweeps_example(path, _ca_rev211_config(fit_max_values=1000)) is None
    why = examples.not_the_sweeps_example(path, _ca_rev211_config(fit_max_values=2000))
    assert why is not None and "fit_max_values" in why


def test_ca_rev211_the_example_instance_is_drawn_at_seed_plus_100_and_its_training_set_at_seed_plus_1(
        tmp_path, monkeypatch):
    """The docstring: the instance (seed + 100) is held out from the training instances (seed + 1)."""
    import torch

    seeds = []
    real = examples.generate

    def recording(name, h, batch, seed=0, scale=1.0):
        seeds.append((batch, seed))
        return real(name, h, batch, seed=seed, scale=scale)

    monkeypatch.setattr(examples, "generate", recording)
    monkeypatch.setattr(examples, "fit_shared_duals", lambda h, train, temps, steps, dtype: [
        torch.zeros((1,) + s, dtype=dtype) for s in h.shapes[1:]])
    examples.save_example(str(tmp_path), size=4, seed=7, fit_instances=3, fit_steps=1)
    assert seeds == [(1, 107), (3, 8)]
