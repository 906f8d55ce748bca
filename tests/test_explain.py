import csv
import os

import pytest
import torch

from convex_attention.paper.data import SyntheticLesions
from convex_attention.paper.explain import (
    explain_models,
    lesion_indices,
    summarise,
    write_outputs,
)
from convex_attention.paper.explain_metrics import METRIC_NAMES
from convex_attention.paper.models import AttentionUNet


def test_explain_scores_attention_and_baselines_and_writes_outputs(tmp_path):
    torch.manual_seed(0)
    data = SyntheticLesions(24, image_size=32, seed=0, lesion_fraction=0.7)
    models = {m: AttentionUNet(method=m, width=4, image_size=32, embed_channels=8) for m in ("softmax", "exact")}
    rows, examples = explain_models(models, data, n_images=3, batch_size=2, progress=False)
    kinds = {(r["model"], r["method"], r["level"]) for r in rows}
    assert ("exact", "attention", 0) in kinds and ("exact", "attention", 1) in kinds
    assert ("softmax", "gradcam", 0) in kinds and ("softmax", "gradcam", 1) in kinds
    for name in ("deeplift", "lrp", "input_x_gradient", "integrated_gradients"):
        assert ("softmax", name, -1) in kinds
    assert not any(r["model"] == "exact" and r["method"] != "attention" for r in rows)
    assert len(rows) == 3 * len(kinds)
    for r in rows:
        for m in METRIC_NAMES:
            assert 0.0 <= float(r[m]) <= 1.0
    paths = write_outputs(rows, examples, str(tmp_path))
    summary = list(csv.DictReader(open(paths["summary"])))
    assert len(summary) == len(kinds) and "ap_mean" in summary[0] and "ap_se" in summary[0]
    assert "±" in open(paths["markdown"]).read()
    assert os.path.getsize(paths["figure"]) > 1000


def test_predicted_target_and_lesion_selection():
    data = SyntheticLesions(30, image_size=32, seed=1)
    idx = lesion_indices(data, 4)
    assert all(int(data[i][1]) == 1 and data[i][2].any() for i in idx)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    rows, _ = explain_models({"softmax": model}, data, n_images=2, target="predicted", progress=False)
    assert rows
    with pytest.raises(ValueError, match="target"):
        explain_models({"softmax": model}, data, n_images=2, target="other", progress=False)
    with pytest.raises(ValueError, match="no validation image with a lesion"):
        lesion_indices(SyntheticLesions(5, image_size=32, lesion_fraction=0.0), 3)


def test_summary_mean_and_standard_error():
    rows = [{"model": "m", "method": "attention", "level": 0, "image": i, **{k: v for k in METRIC_NAMES}}
            for i, v in enumerate([0.0, 1.0, 0.5])]
    (s,) = summarise(rows)
    assert s["ap_mean"] == 0.5 and abs(s["ap_se"] - 0.5 / 3 ** 0.5) < 1e-12 and s["n"] == 3
