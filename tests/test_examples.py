"""convex_attention.bench.examples: the example instance the attention-map figure shows."""
import gc
import os

import pytest
from helpers import read_bytes


def test_save_example_writes_arrays_only_and_the_lambdas_asked_for(tmp_path):
    import numpy as np

    from convex_attention.bench.examples import save_example

    path = save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=0, amortised_steps=0)
    with np.load(path, allow_pickle=False) as data:  # data only, nothing to unpickle
        assert sorted(data.files) == ["levels", "scores0", "scores1", "temperature"]
    save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=3, amortised_steps=3)
    with np.load(path, allow_pickle=False) as data:
        assert data["fitted_dual0"].shape == data["amortised_dual0"].shape == data["scores1"].shape == (4, 4)
        assert np.isfinite(data["amortised_dual0"]).all()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# a damaged file leaves no handle open (numpy's own was left to the garbage collector)
@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_example_has_duals_reads_the_lambdas_and_takes_a_damaged_file_for_none(tmp_path):
    """Before: a truncated example.npz raised zipfile.BadZipFile (neither OSError nor
    ValueError) and crashed a resume that adds learned_dual (found by a review)."""
    from convex_attention.bench.examples import example_has_duals, save_example

    path = save_example(str(tmp_path), size=8, fit_instances=4, fit_steps=2, amortised_steps=0)
    assert example_has_duals(path)
    (tmp_path / "plain").mkdir()
    assert not example_has_duals(save_example(str(tmp_path / "plain"), size=8, fit_steps=0))
    whole = read_bytes(path)
    for damaged in (whole[:200], b"", b"not a zip at all"):
        with open(path, "wb") as f:
            f.write(damaged)
        assert not example_has_duals(path)
        gc.collect()  # a leaked handle is reported when collected
    assert not example_has_duals(str(tmp_path / "missing.npz"))
