import os

import pytest
import torch
from helpers import read_csv_rows, read_text, trained_looking

from convex_attention.paper.config import ExperimentConfig
from convex_attention.paper.data import SyntheticLesions
from convex_attention.paper.explain import (
    explain_models,
    explanations,
    lesion_indices,
    summarise,
    write_outputs,
)
from convex_attention.paper.explain_metrics import METRIC_NAMES
from convex_attention.paper.models import AttentionUNet


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_explain_scores_attention_and_baselines_and_writes_outputs(tmp_path):
    torch.manual_seed(0)
    data = SyntheticLesions(24, image_size=32, seed=0, lesion_fraction=0.7)
    models = {m: AttentionUNet(method=m, width=4, image_size=32, embed_channels=8) for m in ("softmax", "exact")}
    rows, examples = explain_models(models, data, n_images=3, batch_size=2, baseline_model="softmax", progress=False)
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
    summary = read_csv_rows(paths["summary"])
    assert len(summary) == len(kinds) and "ap_mean" in summary[0] and "ap_se" in summary[0]
    assert "±" in read_text(paths["markdown"])
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


def test_zero_images_is_an_error_not_all_images_and_the_baseline_model_must_exist():
    data = SyntheticLesions(30, image_size=32, seed=1)
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            lesion_indices(data, n)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    with pytest.raises(ValueError, match="baseline model 'softmax' is not among the models"):
        explain_models({"exact": model}, data, n_images=1, baseline_model="softmax", progress=False)
    rows, _ = explain_models({"exact": model}, data, n_images=1, baseline_model=None, progress=False)
    assert {r["method"] for r in rows} == {"attention"}


def test_by_default_the_posthoc_methods_explain_every_model_as_the_command_does():
    """The library's default is explain's (config and --baseline-model: every model); it was
    'softmax', which refused a set of models without one."""
    data = SyntheticLesions(30, image_size=32, seed=1)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    rows, _ = explain_models({"exact": model}, data, n_images=1, progress=False)
    assert {r["method"] for r in rows} > {"attention", "gradcam"}
    assert ExperimentConfig().baseline_model == "all"  # the experiment's setting, declared once


def test_mean_and_standard_error_skip_nan():
    from convex_attention.paper.explain import mean_se

    assert mean_se([1.0, float("nan"), 3.0]) == (2.0, 1.0)
    m, se = mean_se([0.5])
    assert m == 0.5 and se != se
    m, se = mean_se([])
    assert m != m and se != se


def test_summary_mean_and_standard_error():
    rows = [{"model": "m", "method": "attention", "level": 0, "image": i, **{k: v for k in METRIC_NAMES}}
            for i, v in enumerate([0.0, 1.0, 0.5])]
    (s,) = summarise(rows)
    assert s["ap_mean"] == 0.5 and abs(s["ap_se"] - 0.5 / 3 ** 0.5) < 1e-12 and s["n"] == 3


def test_every_summary_counts_the_values_it_left_out_as_nan():
    """mean_ci leaves NaN out; summary_cells says how many values it used and left out,
    and the interval has n_used − 1 degrees of freedom."""
    from scipy.stats import t

    from convex_attention.paper.explain import nan_counts, summary_cells

    assert nan_counts([1.0, float("nan"), 3.0, float("nan")]) == (2, 2) and nan_counts([]) == (0, 0)
    cells = summary_cells("x", [1.0, float("nan"), 3.0, 5.0])
    assert cells["x_mean"] == 3.0 and cells["x_n_used"] == 3 and cells["x_n_nan"] == 1
    assert abs(cells["x_ci95"] - t.ppf(0.975, 2) * 2 / 3 ** 0.5) < 1e-12  # 3 values used: 2 degrees of freedom
    nan = float("nan")
    rows = [{"model": "m", "method": "gradcam", "level": 0, "image": i, **{k: v for k in METRIC_NAMES}}
            for i, v in enumerate([0.2, nan, 0.4, nan, nan])]
    (s,) = summarise(rows)
    assert s["n"] == 5 and s["ap_n_used"] == 2 and s["ap_n_nan"] == 3
    assert abs(s["ap_mean"] - 0.3) < 1e-12


def test_the_written_summary_and_report_say_what_was_left_out(tmp_path):
    from convex_attention.paper.explain import dropped_values

    nan = float("nan")
    rows = [{"model": "m", "method": "gradcam", "level": 0, "image": i, **{k: v for k in METRIC_NAMES}}
            for i, v in enumerate([0.2, nan, 0.4])]
    rows += [{"model": "m", "method": "attention", "level": 0, "image": i, **{k: 0.5 for k in METRIC_NAMES}}
             for i in range(3)]
    summary = summarise(rows)
    lines = dropped_values(summary, ("model", "method", "level"), ("ap",), "images")
    assert lines == ["m, gradcam, 0: ap: 1 of 3 images left out"]
    paths = write_outputs(rows, [], str(tmp_path))
    written = read_csv_rows(paths["summary"])
    assert {(r["method"], r["ap_n_used"], r["ap_n_nan"]) for r in written} == {("gradcam", "2", "1"),
                                                                              ("attention", "3", "0")}
    report = read_text(paths["markdown"])
    assert "m, gradcam, 0" in report and "ap: 1 of 3 images left out" in report
    clean = write_outputs(rows[3:], [], str(tmp_path / "clean"))
    assert "No mean left a NaN value out" in read_text(clean["markdown"])


def test_summaries_order_levels_by_number_input_attributions_first():
    rows = [{"model": "m", "method": "x", "level": level, "image": 0, **{k: 0.5 for k in METRIC_NAMES}}
            for level in (1, -1, 0, 10)]
    assert [s["level"] for s in summarise(rows)] == [-1, 0, 1, 10]


# ----------------------------------------------------------------------------- the protocol's explanations


def test_mean_and_95_percent_confidence_interval():
    from scipy.stats import t

    from convex_attention.paper.explain import format_ci, mean_ci

    m, half = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(half - t.ppf(0.975, 2) / 3 ** 0.5) < 1e-12  # std(ddof=1) = 1
    assert abs(half - 2.4841) < 1e-4
    m, half = mean_ci([1.0, float("nan"), 3.0, 5.0], confidence=0.9)
    assert m == 3.0 and abs(half - t.ppf(0.95, 2) * 2 / 3 ** 0.5) < 1e-12
    m, half = mean_ci([0.5])
    assert m == 0.5 and half != half
    m, half = mean_ci([])
    assert m != m and half != half
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.0)
    assert format_ci(0.5, 0.0341) == "0.500 ± 0.034" and format_ci(0.5, float("nan")) == "0.500"
    assert format_ci(float("nan"), 0.1) == "–"


def test_summary_reports_the_confidence_interval():
    rows = [{"model": "m", "method": "attention", "level": 0, "image": i, **{k: v for k in METRIC_NAMES}}
            for i, v in enumerate([0.0, 1.0, 0.5])]
    (s,) = summarise(rows)
    from convex_attention.paper.explain import mean_ci

    assert s["ap_ci95"] == mean_ci([0.0, 1.0, 0.5])[1] and s["resolution"] == "pixel"


def _tiny_models():
    from convex_attention.paper.models import PlainCNN

    torch.manual_seed(0)
    return {"exact": AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8),
            "plain_cnn": PlainCNN(width=4, image_size=32)}


def test_every_model_by_every_method_with_references_and_both_protocols():
    from convex_attention.paper.data.synthetic import SyntheticRimLesions

    data = SyntheticRimLesions(20, image_size=32, seed=3)
    models = _tiny_models()
    rows, examples = explain_models(models, data, n_images=2, baseline_model="all", progress=False, pooled=True,
                                    references=True, model_free_weights=[1.0, -1.0, 0.0, 1.0], n_examples=1)
    kinds = {(r["model"], r["method"], r["level"], r["resolution"]) for r in rows}
    for model in ("exact", "plain_cnn"):
        for method in ("deeplift", "lrp", "input_x_gradient", "integrated_gradients"):
            assert (model, method, -1, "pixel") in kinds and (model, method, -1, "8x8") in kinds
            assert (model, method, -1, "4x4") in kinds
        assert (model, "gradcam", 0, "8x8") in kinds and (model, "gradcam", 0, "4x4") in kinds
        assert (model, "gradcam", 1, "4x4") in kinds and (model, "gradcam", 1, "8x8") not in kinds  # never finer
    assert ("exact", "attention", 0, "8x8") in kinds and not any(k[0] == "plain_cnn" and k[1] == "attention"
                                                                 for k in kinds)
    for ref in (("reference", "block_map", 0, "pixel"), ("reference", "block_map", 1, "4x4"),
                ("reference", "model_free", -1, "pixel"), ("reference", "model_free", -1, "8x8")):
        assert ref in kinds
    assert {r["upsampling"] for r in rows if r["resolution"] != "pixel"} == {"nearest"}
    assert len({r["image"] for r in rows}) == 2 and {e[0] for e in examples} == {rows[0]["image"]}
    # on its own grid the block map beats every map constant on that grid (every map, pooled to it)
    for image in {r["image"] for r in rows}:
        at = [r for r in rows if r["image"] == image and r["resolution"] == "8x8"]
        best = next(r["ap"] for r in at if r["method"] == "block_map" and r["level"] == 0)
        assert all(r["ap"] <= best + 1e-12 for r in at)


def test_baseline_model_names_and_plain_cnn_pixel_only_default():
    from convex_attention.paper.data.synthetic import SyntheticRimLesions

    data = SyntheticRimLesions(20, image_size=32, seed=3)
    models = _tiny_models()
    rows, _ = explain_models(models, data, n_images=1, baseline_model=["plain_cnn"], progress=False,
                             upsampling="bilinear")
    assert {r["model"] for r in rows if r["method"] != "attention"} == {"plain_cnn"}
    assert {r["resolution"] for r in rows} == {"pixel"} and {r["upsampling"] for r in rows} == {"bilinear"}
    with pytest.raises(ValueError, match="baseline model"):
        explain_models(models, data, n_images=1, baseline_model=["softmax"], progress=False)
    with pytest.raises(ValueError, match="upsampling"):
        explain_models(models, data, n_images=1, upsampling="cubic", progress=False)


@pytest.fixture
def saved_figure(monkeypatch):
    """``{"fig": …}``: the figure a plot function would have saved (nothing is written)."""
    from convex_attention.io import figures

    seen = {}

    def capture(fig, path, env=None, notes=()):
        seen["fig"], seen["notes"] = fig, list(notes)
        return path

    monkeypatch.setattr(figures, "save", capture)
    return seen


def test_figures_share_one_colour_scale(tmp_path, saved_figure):
    from convex_attention.paper.explain import plot_examples

    seen = saved_figure
    image, mask = torch.zeros(8, 8), torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    maps = [torch.rand(8, 8) * 1000, torch.rand(8, 8) * 1e-3, torch.zeros(8, 8)]  # very different units
    examples = [(0, "m", name, 0, image, mask, m) for name, m in zip(("attention", "gradcam", "lrp"), maps)]
    plot_examples(examples, str(tmp_path / "f.png"))
    shown = [im for ax in seen["fig"].axes for im in ax.get_images()]
    map_images = [im for im in shown if im.get_cmap().name == "inferno"]
    assert len(map_images) == 3
    for im in map_images:
        assert im.get_clim() == (0.0, 1.0) and float(im.get_array().max()) <= 1.0
    assert float(map_images[0].get_array().max()) == 1.0 and float(map_images[1].get_array().max()) == 1.0


def test_examples_show_every_level_the_channels_that_decide_and_labelled_rows(tmp_path, saved_figure):
    from convex_attention.paper.explain import plot_examples

    image, mask = torch.rand(4, 8, 8), torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    examples = [(idx, model, "attention", level, image, mask, torch.rand(8, 8))
                for idx in (3, 7) for model in ("softmax", "exact") for level in (0, 1)]
    plot_examples(examples, str(tmp_path / "f.png"), channels=((0, "ch. 0 (FLAIR-like)"), (2, "ch. 2 (T1ce-like)")),
                  row_label="test image {}", per_line=4, notes=["ch. 2 shows the rim"])
    fig = saved_figure["fig"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_images()]
    assert titles.count("ch. 2 (T1ce-like)") == 2 and titles.count("lesion mask") == 2  # per image
    for model in ("softmax", "exact"):
        for level in (0, 1):
            assert titles.count(f"{model}\nattention L{level}") == 2, (model, level)  # every level, every image
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel() and ax.get_images()]
    assert labels == ["test image 3", "test image 7"]
    grey = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "gray"]
    assert len(grey) == 6  # two channels and the mask, per image
    assert "ch. 2 shows the rim" in saved_figure["notes"]


def _summary_rows():
    import math

    rows = []
    for cond, scale in (("difficulty0.3", 1.0), ("difficulty0.6", 0.5)):
        for model, method, level, ap in (("exact", "attention", 0, 0.4), ("exact", "attention", 1, 0.5),
                                         ("softmax", "attention", 0, 0.3), ("softmax", "lrp", -1, 0.7),
                                         ("exact", "lrp", -1, 0.97), ("reference", "block_map", 0, 0.9),
                                         ("softmax", "gradcam", 1, math.nan)):
            rows.append({"condition": cond, "test_set": "heldout_mottled", "model": model, "method": method,
                         "level": level, "resolution": "pixel", "ap_mean": ap * scale, "ap_ci95": 0.05})
        rows.append({"condition": cond, "test_set": "heldout_mottled", "model": "exact", "method": "attention",
                     "level": 0, "resolution": "8x8", "ap_mean": 0.99, "ap_ci95": math.nan})  # not drawn
    return rows


def test_metric_summary_draws_a_point_per_model_and_map_within_zero_and_one(tmp_path, saved_figure):
    from convex_attention.paper.explain import plot_metric_summary

    rows = _summary_rows()
    rows[4]["ap_ci95"] = 0.2  # 0.97 ± 0.2 would run past AP = 1
    plot_metric_summary(rows, str(tmp_path / "ap.png"),
                        chance={("difficulty0.3", "heldout_mottled"): 0.04})
    fig = saved_figure["fig"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[0].get_xlim() == axes[1].get_xlim() == (0.0, 1.0)
    for ax, scale in zip(axes, (1.0, 0.5)):
        means = sorted(round(float(c.lines[0].get_xdata()[0]), 6) for c in ax.containers)
        assert means == sorted(round(v * scale, 6) for v in (0.4, 0.5, 0.3, 0.7, 0.97, 0.9))
        ends = [x for c in ax.containers for seg in c.lines[2][0].get_segments() for x, _ in seg]
        assert min(ends) >= 0.0 and max(ends) <= 1.0  # intervals clipped to the metric's range
        assert "1 without a value left out" in ax.get_title()
        # one row per map, never one per (model, map): 2 attention levels, LRP, the reference
        assert [t.get_text() for t in ax.get_yticklabels()] == ["attention map, L0", "attention map, L1", "LRP",
                                                                "reference: best block, L0"][::-1]
    assert axes[0].get_title().startswith("difficulty 0.3, held-out mimic: mottled")
    chance = [line for line in axes[0].lines if line.get_linestyle() == "--"]
    assert len(chance) == 1 and chance[0].get_xdata()[0] == 0.04
    assert not [line for line in axes[1].lines if line.get_linestyle() == "--"]  # no chance recorded there
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("chance" in t for t in legend) and not any("posthoc" in t for t in legend)
    assert [t.get_text() for t in axes[0].texts] == ["attention", "post-hoc", "reference"]  # the kinds, named
    with pytest.raises(ValueError, match="no finite"):
        plot_metric_summary(rows, str(tmp_path / "none.png"), resolution="2x2")


def test_maps_are_scored_against_the_decisive_masks_too():
    from convex_attention.paper.data import InMemory
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions
    from convex_attention.paper.explain import explained_indices, has_decisive_masks, primary_mask
    from convex_attention.paper.explain_metrics import score_map, to_common_form

    data = InMemory(SyntheticBrightestLesions(20, image_size=32, difficulty=0.3, seed=1))
    assert has_decisive_masks(data) and not has_decisive_masks(SyntheticLesions(4, image_size=32))
    indices = explained_indices(data, 3)
    assert primary_mask(indices) == "decisive" and primary_mask({"lesion": [0]}) == "lesion"
    assert indices["decisive"] == [0, 1, 2]  # every image, either label, has a deciding structure
    assert all(int(data[i][1]) == 1 for i in indices["lesion"])
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8).eval()
    rows, _ = explain_models({"exact": model}, data, indices=indices["lesion"], decisive=indices["decisive"],
                             baseline_model=None, progress=False)
    by_mask = {m: [r for r in rows if r["mask"] == m] for m in ("lesion", "decisive")}
    assert {r["image"] for r in by_mask["decisive"]} == set(indices["decisive"])
    assert {r["image"] for r in by_mask["lesion"]} == set(indices["lesion"])
    # a per-level row for each image and level, scored against that image's own mask of that kind
    assert {(r["level"], r["image"]) for r in by_mask["decisive"]} == {(k, i) for k in (0, 1)
                                                                      for i in indices["decisive"]}
    from convex_attention.paper.explain import explanations

    image = indices["decisive"][0]
    maps = explanations(model, data[image][0][None], posthoc=False)
    row = next(r for r in by_mask["decisive"] if r["image"] == image and r["level"] == 1)
    expected = score_map(to_common_form(maps[("attention", 1)][0], (32, 32), "nearest"), data.decisive_mask(image))
    assert row["ap"] == pytest.approx(expected["ap"])


def _overflowing(method="exact"):
    """A model with finite weights whose logits overflow to Inf."""
    model = AttentionUNet(method=method, width=4, image_size=32, embed_channels=8)
    with torch.no_grad():
        model.classifier.weight.fill_(3e38)
        model.classifier.bias.fill_(torch.finfo(torch.float32).max)
    return model


def test_a_model_whose_outputs_are_not_finite_is_never_scored():
    """Before: such a model was explained and got plausible-looking metrics."""
    from convex_attention.paper.explain import explanations
    from convex_attention.paper.models import NonFiniteOutput

    data = SyntheticLesions(12, image_size=32, seed=0, lesion_fraction=0.7)
    good = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    with pytest.raises(NonFiniteOutput, match=r"model 'bad', on images \[.*logits .* not scored"):
        explain_models({"good": good, "bad": _overflowing()}, data, n_images=2, baseline_model=None, progress=False)
    images = torch.stack([data[i][0] for i in range(2)])
    with pytest.raises(NonFiniteOutput, match="logits"):
        explanations(_overflowing(), images, posthoc=False)


def test_explanation_maps_that_are_not_finite_are_never_scored(monkeypatch):
    from convex_attention.paper import explain
    from convex_attention.paper.models import NonFiniteOutput

    monkeypatch.setattr(explain, "gradcam", lambda model, images, targets, level: torch.full((len(images), 8, 8),
                                                                                             float("nan")))
    monkeypatch.setattr(explain, "BASELINES", {})
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    with pytest.raises(NonFiniteOutput, match=r"explanation maps gradcam \(level 0\), gradcam \(level 1\)"):
        explain.explanations(model, torch.randn(2, 4, 32, 32), labels=torch.tensor([1, 0]))


# ----------------------------------------------------------------------------- which images, which rows


class _Listed(torch.utils.data.Dataset):
    """Hand-made images: ``(image, label, lesion mask)`` per item, and a decisive mask per
    item (``decisive=None``: the data do not say which structure decides)."""

    def __init__(self, labels, lesion, decisive=None):
        self.labels, self.lesion, self.decisive = labels, lesion, decisive

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        mask = torch.zeros(4, 4, dtype=torch.bool)
        mask[0, 0] = bool(self.lesion[i])
        return torch.zeros(2, 4, 4), torch.tensor(self.labels[i]), mask

    def decisive_mask(self, i):
        if self.decisive is None:
            raise ValueError("these data do not say which structure decides the label")
        mask = torch.zeros(4, 4, dtype=torch.bool)
        mask[1, 1] = bool(self.decisive[i])
        return mask


def test_the_images_explained_are_lesion_images_and_marked_deciding_structures():
    from convex_attention.paper.explain import decisive_indices, explained_indices, has_decisive_masks

    data = _Listed(labels=[0, 1, 1, 0, 1, 1], lesion=[1, 0, 1, 1, 1, 1], decisive=[0, 1, 0, 1, 1, 1])
    assert lesion_indices(data, 2) == [2, 4]  # label 1 and a non-empty mask, both
    assert decisive_indices(data, 3) == [1, 3, 4]  # either label, a non-empty deciding structure
    assert explained_indices(data, 2) == {"lesion": [2, 4], "decisive": [1, 3]}
    unmarked = _Listed(labels=[1], lesion=[1])  # decisive_mask exists but raises: the data do not say
    assert not has_decisive_masks(unmarked) and explained_indices(unmarked, 1) == {"lesion": [0]}
    with pytest.raises(ValueError, match="no image whose deciding structure is marked"):
        decisive_indices(_Listed(labels=[1, 0], lesion=[1, 1], decisive=[0, 0]), 2)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            decisive_indices(data, n)


def test_explain_needs_a_model():
    with pytest.raises(ValueError, match="no model to explain"):
        explain_models({}, SyntheticLesions(6, image_size=32, seed=0, lesion_fraction=0.7), n_images=1,
                       baseline_model=None, progress=False)


def test_an_image_in_both_lists_is_explained_once_per_mask():
    from convex_attention.paper.data import InMemory
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    data = InMemory(SyntheticBrightestLesions(12, image_size=32, difficulty=0.3, seed=1))
    lesion = lesion_indices(data, 2)
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    rows, _ = explain_models({"exact": model}, data, indices=lesion, decisive=lesion, baseline_model=None,
                             progress=False)
    keys = [(r["mask"], r["level"], r["image"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * len(lesion)  # two masks, two levels, each image once


def test_explain_models_explains_the_normal_images_of_the_decisive_masks_as_class_0(monkeypatch):
    """The decisive masks add normal images (label 0): their true class is 0.  Before, every
    image was explained as class 1 (ca_rev69's near-miss)."""
    from convex_attention.paper.data import InMemory
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    seen = []
    _recording_gradcam(monkeypatch, seen)
    data = InMemory(SyntheticBrightestLesions(12, image_size=32, difficulty=0.3, seed=1))
    lesion = lesion_indices(data, 2)
    decisive = [i for i in range(len(data)) if int(data[i][1]) == 0][:2]
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    explain_models({"exact": model}, data, indices=lesion, decisive=decisive, baseline_model="exact",
                   progress=False, batch_size=16)
    assert seen and all(t.tolist() == [1, 1, 0, 0] for t in seen)


# ----------------------------------------------------------------------------- the post-hoc target and finiteness


def _recording_gradcam(monkeypatch, seen, value=0.5):
    from convex_attention.paper import explain

    def fake(model, images, targets, level):
        seen.append(targets.clone())
        return torch.full((len(images), 8, 8), value)

    monkeypatch.setattr(explain, "gradcam", fake)
    monkeypatch.setattr(explain, "BASELINES", {})


def test_posthoc_methods_explain_each_image_s_own_label_or_the_prediction(monkeypatch):
    """Before: target "true" explained class 1 on every image ("only lesion images are
    explained"), but the decisive masks add normal images, whose true class is 0 (ca_rev69's
    near-miss); without labels it is refused, never assumed."""
    from convex_attention.paper import explain

    seen = []
    _recording_gradcam(monkeypatch, seen)
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    images = torch.randn(3, 4, 32, 32)
    explain.explanations(model, images, target="true", labels=torch.tensor([1, 0, 1]))
    assert seen and all(t.tolist() == [1, 0, 1] for t in seen)
    seen.clear()
    for labels in (None, torch.tensor([1, 0]), torch.tensor([1, 2, 0])):
        with pytest.raises(ValueError, match="label"):
            explain.explanations(model, images, target="true", labels=labels)
    assert not seen
    explain.explanations(model, images, target="true", posthoc=False)  # attention alone needs no label
    seen.clear()
    explain.explanations(model, images, target="predicted")
    with torch.no_grad():
        predicted = model(images).logits.argmax(1)
    assert seen and all(t.tolist() == predicted.tolist() for t in seen)


def test_a_map_with_a_single_nan_is_never_scored(monkeypatch):
    from convex_attention.paper import explain
    from convex_attention.paper.models import NonFiniteOutput

    def one_nan(model, images, targets, level):
        m = torch.rand(len(images), 8, 8)
        m[0, 3, 3] = float("nan")
        return m

    monkeypatch.setattr(explain, "gradcam", one_nan)
    monkeypatch.setattr(explain, "BASELINES", {})
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    with pytest.raises(NonFiniteOutput, match=r"gradcam \(level 0\)"):
        explain.explanations(model, torch.randn(2, 4, 32, 32), labels=torch.tensor([1, 1]))


# ----------------------------------------------------------------------------- references and scoring


def test_the_model_free_map_is_the_channel_combination_shifted_to_start_at_zero():
    from convex_attention.paper.explain import reference_maps

    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 8)
    images[1] += 5.0  # the images' minima differ: each is shifted by its own
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    weights = [1.0, -2.0, 0.5]
    maps = reference_maps(images, masks, [(4, 4)], model_free_weights=weights)
    combo = torch.einsum("c,bchw->bhw", torch.tensor(weights, dtype=torch.float64), images.to(torch.float64))
    for b in range(2):
        assert torch.allclose(maps[("model_free", -1)][b], combo[b] - combo[b].min())
        assert float(maps[("model_free", -1)][b].min()) == 0.0
    with pytest.raises(ValueError, match="one per channel"):
        reference_maps(images, masks, [(4, 4)], model_free_weights=[1.0, 2.0])


def test_pixel_and_pooled_protocols_score_the_maps_as_stated():
    """Pixel protocol: the map upsampled as ``upsampling`` says; pooled: the map pooled to
    every grid that divides it (post-hoc maps normalised, attention maps as they are),
    upsampled by nearest neighbour."""
    from convex_attention.paper.explain import score_explanations
    from convex_attention.paper.explain_metrics import pooled_form, score_map, to_common_form

    torch.manual_seed(0)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 3:9, 2:7] = True
    masks[1, 9:14, 8:15] = True
    maps = {("attention", 0): torch.rand(2, 8, 8) ** 3, ("lrp", -1): torch.randn(2, 3, 16, 16),
            ("gradcam", 1): torch.rand(2, 6, 6)}
    rows = score_explanations(maps, masks, grids=[(4, 4), (2, 2)], upsampling="bilinear", pooled=True)
    got = {(r["method"], r["resolution"], r["position"]): r for r in rows}
    # a grid is used only where it divides the map: 4x4 does not divide 6x6
    assert {k[1] for k in got if k[0] == "gradcam"} == {"pixel", "2x2"}
    assert {r["upsampling"] for r in rows if r["resolution"] != "pixel"} == {"nearest"}
    assert {r["upsampling"] for r in rows if r["resolution"] == "pixel"} == {"bilinear"}
    for (method, _), m in maps.items():
        for j in range(2):
            expected = score_map(to_common_form(m[j], (16, 16), "bilinear"), masks[j])
            assert got[(method, "pixel", j)]["mass"] == pytest.approx(expected["mass"])
            assert got[(method, "pixel", j)]["ap"] == pytest.approx(expected["ap"])
            for g in ([(4, 4), (2, 2)] if method != "gradcam" else [(2, 2)]):
                grid_map = pooled_form(m[j], g, normalise=method != "attention")
                expected = score_map(to_common_form(grid_map, (16, 16), "nearest"), masks[j])
                row = got[(method, f"{g[0]}x{g[1]}", j)]
                assert row["mass"] == pytest.approx(expected["mass"]) and row["ap"] == pytest.approx(expected["ap"])
    for some in (maps, {}):  # refused even with no map to upsample
        with pytest.raises(ValueError, match="upsampling"):
            score_explanations(some, masks, upsampling="cubic")


# ----------------------------------------------------------------------------- summaries and reports


def test_summaries_keep_masks_and_upsamplings_apart_and_the_report_names_input_levels(tmp_path):
    from convex_attention.paper.explain import markdown_table

    rows = [{"model": "m", "method": "lrp", "level": -1, "resolution": "pixel", "upsampling": up, "mask": mask,
             "image": i, **{k: v for k in METRIC_NAMES}}
            for up in ("nearest", "bilinear") for mask in ("lesion", "decisive") for i, v in enumerate([0.2, 0.4])]
    summary = summarise(rows)
    assert {(s["upsampling"], s["mask"], s["n"]) for s in summary} == {(up, mask, 2) for up in ("nearest", "bilinear")
                                                                       for mask in ("lesion", "decisive")}
    table = markdown_table(summary).splitlines()
    assert all(line.count("|") == table[0].count("|") for line in table)  # the separator too
    assert all(line.split("|")[3].strip() == "input" for line in table[2:])
    paths = write_outputs(rows, [], str(tmp_path))
    assert "on 2 lesion images" in read_text(paths["markdown"])  # images, not rows
    with pytest.raises(ValueError, match="nothing was explained"):
        write_outputs([], [], str(tmp_path / "empty"))


def test_images_left_out_of_per_seed_means_are_reported_even_when_no_seed_was():
    from convex_attention.paper.explain import dropped_values

    summary = [{"model": "m", "ap_n_used": 3, "ap_n_nan": 0, "ap_images_used": 10, "ap_images_nan": 2}]
    lines = dropped_values(summary, ("model",), ("ap",), "seeds")
    assert lines == ["m: ap: 0 of 3 seeds left out (2 of 12 images NaN)"]


# ----------------------------------------------------------------------------- figures


def test_examples_keep_to_the_rows_maps_and_channels_asked_for(tmp_path, saved_figure):
    from convex_attention.paper.explain import plot_examples

    image, mask = torch.rand(2, 8, 8), torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    examples = [(idx, "m", "attention", level, image, mask, torch.rand(8, 8)) for idx in (1, 2, 3)
                for level in (0, 1, 2)]
    plot_examples(examples, str(tmp_path / "f.png"), max_rows=2, max_maps=2,
                  channels=((0, "ch. 0"), (5, "ch. 5 (absent)")))
    fig = saved_figure["fig"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_images()]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel() and ax.get_images()] == ["image 1", "image 2"]
    assert titles.count("ch. 0") == 2 and "ch. 5 (absent)" not in titles  # a channel the image lacks: not shown
    assert sum(t.startswith("m\nattention") for t in titles) == 2 * 2  # two maps per image


def test_metric_summary_draws_each_interval_and_no_chance_line_that_is_not_a_number(tmp_path, saved_figure):
    import math

    from convex_attention.paper.explain import plot_metric_summary

    rows = [{"condition": "c", "test_set": "test", "model": "exact", "method": "attention", "level": 0,
             "resolution": "pixel", "qiou@0.5_mean": 0.9, "qiou@0.5_ci95": 0.3},
            {"condition": "c", "test_set": "test", "model": "exact", "method": "attention", "level": 1,
             "resolution": "pixel", "qiou@0.5_mean": 0.4, "qiou@0.5_ci95": 0.1}]
    plot_metric_summary(rows, str(tmp_path / "q.png"), metric="qiou@0.5", chance={("c", "test"): math.nan})
    (ax,) = [ax for ax in saved_figure["fig"].axes if ax.get_visible()]
    ends = sorted((round(min(x for x, _ in seg), 6), round(max(x for x, _ in seg), 6))
                  for c in ax.containers for seg in c.lines[2][0].get_segments())
    assert ends == [(0.3, 0.5), (0.6, 1.0)]  # mean ± half-width, clipped to [0, 1] (a bounded metric)
    assert ax.get_xlim() == (0.0, 1.0)
    assert not [line for line in ax.lines if line.get_linestyle() == "--"]


# ----------------------------------------------------------------------------- options passed on, and edge cases


def test_a_boolean_is_not_a_number_of_lesion_images():
    data = _Listed(labels=[1, 1], lesion=[1, 1])
    with pytest.raises(ValueError, match="positive integer"):
        lesion_indices(data, True)


def test_the_target_asked_for_is_the_one_the_posthoc_methods_explain(monkeypatch):
    seen = []
    _recording_gradcam(monkeypatch, seen)
    torch.manual_seed(0)
    data = SyntheticLesions(12, image_size=32, seed=0, lesion_fraction=0.7)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    idx = lesion_indices(data, 2)
    explain_models({"exact": model}, data, indices=idx, baseline_model="exact", target="predicted", progress=False)
    with torch.no_grad():
        predicted = model(torch.stack([data[i][0] for i in idx])).logits.argmax(1)
    assert seen and all(t.tolist() == predicted.tolist() for t in seen)


def _brightest_and_model():
    from convex_attention.paper.data import InMemory
    from convex_attention.paper.data.synthetic import SyntheticBrightestLesions

    data = InMemory(SyntheticBrightestLesions(6, image_size=32, difficulty=0.3, seed=1))
    torch.manual_seed(0)
    return data, AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)


def test_a_batch_of_decisive_images_only_is_scored_too():
    data, model = _brightest_and_model()
    lesion = lesion_indices(data, 1)
    other = next(i for i in range(len(data)) if i not in lesion and data.decisive_mask(i).any())
    rows, _ = explain_models({"exact": model}, data, indices=lesion, decisive=[other], baseline_model=None,
                             batch_size=1, progress=False)
    assert {(r["mask"], r["image"]) for r in rows} == {("lesion", lesion[0]), ("decisive", other)}


def test_reference_block_maps_are_of_the_mask_they_are_scored_against():
    from convex_attention.paper.explain_metrics import block_map, score_map, to_common_form

    class Flipped(torch.utils.data.Dataset):
        """Lesion images whose deciding structure is the lesion mask mirrored: two masks of one image."""

        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i]

        def decisive_mask(self, i):
            return self.data[i][2].flip(-1)

    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    data = Flipped(SyntheticLesions(12, image_size=32, seed=0, lesion_fraction=0.7))
    both = next(i for i in lesion_indices(data, 12) if not torch.equal(data[i][2], data.decisive_mask(i)))
    rows, _ = explain_models({"exact": model}, data, indices=[both], decisive=[both], baseline_model=None,
                             references=True, progress=False)
    for kind in ("lesion", "decisive"):
        mask = data.decisive_mask(both) if kind == "decisive" else data[both][2]
        row = next(r for r in rows if r["mask"] == kind and r["method"] == "block_map" and r["level"] == 0)
        expected = score_map(to_common_form(block_map(mask, (8, 8)), (32, 32), "nearest"), mask)
        assert row["mass"] == pytest.approx(expected["mass"]) and row["ap"] == pytest.approx(expected["ap"])


def test_example_maps_are_upsampled_as_the_pixel_protocol_says():
    from convex_attention.paper.explain import explanations
    from convex_attention.paper.explain_metrics import to_common_form

    torch.manual_seed(0)
    data = SyntheticLesions(6, image_size=32, seed=0, lesion_fraction=0.7)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    lesion = lesion_indices(data, 1)
    _, examples = explain_models({"exact": model}, data, indices=lesion, baseline_model=None, upsampling="bilinear",
                                 progress=False)
    coarse = explanations(model, data[lesion[0]][0][None], posthoc=False)[("attention", 1)][0]
    shown = next(e[6] for e in examples if e[2] == "attention" and e[3] == 1)
    assert torch.allclose(shown, to_common_form(coarse, (32, 32), "bilinear"))
    assert not torch.allclose(shown, to_common_form(coarse, (32, 32), "nearest"))


def test_pooled_model_free_maps_are_normalised_and_the_tolerance_reaches_every_row():
    from convex_attention.paper.explain import score_explanations
    from convex_attention.paper.explain_metrics import pooled_form, score_map, to_common_form

    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 2:5, 2:5] = True
    m = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) * 3.0
    m[0, 4, 8] = 10.0  # the peak lies 4 px from the mask: a hit within 5 px, not within the default 1 px
    for method in ("model_free", "attention"):
        rows = score_explanations({(method, -1): m}, mask, grids=[(4, 4)], pooled=True, tolerance=5.0)
        pixel = next(r for r in rows if r["resolution"] == "pixel")
        assert pixel["pointing_tol"] == score_map(m[0], mask[0], 5.0)["pointing_tol"] == 1.0
        pooled = next(r for r in rows if r["resolution"] == "4x4")
        grid = pooled_form(m[0], (4, 4), normalise=method == "model_free")
        assert pooled["mass"] == pytest.approx(score_map(to_common_form(grid, (16, 16), "nearest"), mask[0])["mass"])


def test_confidence_and_counts_of_summaries_as_documented():
    from convex_attention.paper.explain import dropped_values, mean_ci, summary_cells

    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=0.0)
    values = [1.0, 2.0, 4.0]
    assert summary_cells("x", values, confidence=0.9)["x_ci95"] == mean_ci(values, 0.9)[1] != mean_ci(values)[1]
    # a mean over no number is NaN itself: not listed as having left values out
    assert dropped_values([{"model": "m", "ap_n_used": 0, "ap_n_nan": 3}], ("model",), ("ap",), "images") == []
    # a row that counts the images behind per-seed means names them even where none was NaN
    summary = [{"model": "m", "ap_n_used": 2, "ap_n_nan": 1, "ap_images_used": 10, "ap_images_nan": 0}]
    lines = dropped_values(summary, ("model",), ("ap",), "seeds")
    assert lines == ["m: ap: 1 of 3 seeds left out (0 of 10 images NaN)"]


def test_levels_sort_as_numbers_beyond_one_digit():
    rows = [{"model": "m", "method": "x", "level": level, "image": 0, **{k: 0.5 for k in METRIC_NAMES}}
            for level in (10, 2, -1)]
    assert [s["level"] for s in summarise(rows)] == [-1, 2, 10]


def test_every_path_returned_is_a_file_written(tmp_path):
    rows = [{"model": "m", "method": "attention", "level": 0, "image": i, **{k: 0.5 for k in METRIC_NAMES}}
            for i in range(2)]
    paths = write_outputs(rows, [], str(tmp_path))
    assert "figure" not in paths and all(os.path.isfile(p) for p in paths.values())
    assert list(read_csv_rows(paths["summary"])[0]) == [str(k) for k in summarise(rows)[0]]  # every column


def test_the_report_states_the_pointing_tolerance_at_the_images_size(tmp_path, saved_figure):
    from convex_attention.paper.explain_metrics import pointing_tolerance_px

    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:8, 4:8] = True
    examples = [(0, "m", "attention", 0, torch.rand(2, 32, 32), mask, torch.rand(32, 32))]
    rows = [{"model": "m", "method": "attention", "level": 0, "image": 0, **{k: 0.5 for k in METRIC_NAMES}}]
    paths = write_outputs(rows, examples, str(tmp_path))
    assert f"a hit within {pointing_tolerance_px((32, 32)):.1f} px at 32x32" in read_text(paths["markdown"])


def test_model_free_weights_may_be_an_array():
    import numpy as np

    from convex_attention.paper.explain import reference_maps

    images, masks = torch.rand(1, 3, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool)
    weights = [0.5, -1.0, 2.0]
    listed = reference_maps(images, masks, [(4, 4)], model_free_weights=weights)[("model_free", -1)]
    arrayed = reference_maps(images, masks, [(4, 4)], model_free_weights=np.array(weights))[("model_free", -1)]
    assert torch.equal(listed, arrayed)


def test_a_non_square_map_is_pooled_to_every_grid_that_divides_it():
    from convex_attention.paper.explain import score_explanations

    masks = torch.zeros(1, 16, 8, dtype=torch.bool)
    masks[0, 2:6, 1:3] = True
    maps = {("attention", 0): torch.rand(1, 8, 4, generator=torch.Generator().manual_seed(0))}
    rows = score_explanations(maps, masks, grids=[(8, 2), (2, 8)], pooled=True)
    assert {r["resolution"] for r in rows} == {"pixel", "8x2"}  # 2x8 is finer than the map's 4 columns


def test_metric_summary_names_the_test_split_and_the_model_free_reference(tmp_path, saved_figure):
    from convex_attention.paper.explain import plot_metric_summary

    rows = [{"condition": "c", "test_set": "test", "model": model, "method": method, "level": level,
             "resolution": "pixel", "ap_mean": 0.5, "ap_ci95": 0.1}
            for model, method, level in (("exact", "attention", 0), ("reference", "model_free", -1))]
    plot_metric_summary(rows, str(tmp_path / "ap.png"))
    (ax,) = [ax for ax in saved_figure["fig"].axes if ax.get_visible()]
    assert ax.get_title() == "c, test split"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["reference: model-free", "attention map, L0"]
    nan_only = [{**r, "ap_mean": float("nan")} for r in rows]
    with pytest.raises(ValueError, match="no finite"):  # a panel without a point is no panel
        plot_metric_summary(nan_only, str(tmp_path / "none.png"))


# ----------------------------------------------------------------------------- review 42

def test_rev42_the_report_table_names_the_mask_of_each_row(tmp_path):
    from convex_attention.paper.explain import markdown_table

    rows = [{"model": "m", "method": "attention", "level": 0, "resolution": "pixel", "upsampling": "nearest",
             "mask": mask, "image": i, **{k: v for k in METRIC_NAMES}}
            for mask, v in (("lesion", 0.9), ("decisive", 0.1)) for i in range(2)]
    table = markdown_table(summarise(rows)).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert "mask" in head
    labels = [tuple(c.strip() for c in line.strip("|").split("|")[:head.index("n")]) for line in table[2:]]
    assert len(set(labels)) == len(labels) == 2, labels  # one row per mask, told apart
    report = read_text(write_outputs(rows, [], str(tmp_path))["markdown"])
    assert "| decisive |" in report and "| lesion |" in report


# ----------------------------------------------------------------------------- review ca_rev69


def test_ca_rev69_explanations_refuse_an_unknown_target():
    from convex_attention.paper.explain import explanations

    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8).eval()
    images = torch.randn(2, 4, 32, 32)
    with pytest.raises(ValueError):
        explanations(model, images, target="lesion", posthoc=False)  # randomisation_check passes it on unchecked


def test_ca_rev71_explanations_refuse_a_label_that_is_not_0_or_1_before_any_work():
    from convex_attention.paper.explain import explanations

    class Untouchable:
        def eval(self):
            raise RuntimeError("the model was used before the labels were checked")

        __call__ = eval

    with pytest.raises(ValueError, match="label"):
        explanations(Untouchable(), torch.zeros(2, 4, 8, 8), target="true", labels=torch.tensor([0.6, 1.0]))


def test_ca_rev71_the_target_rule_change_is_in_the_scoring_rules_docs_point_to():
    """design.md (and explain.py) send the reader to docs/experiment.md, "Scoring rules changed
    after the committed runs", rule 5, for target 'true' explaining class 1 on every image; that
    section still has four rules and says the headline is unaffected by all four."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")
    with open(os.path.join(root, "design.md"), encoding="utf-8") as f:
        assert "rule 5" in f.read()
    with open(os.path.join(root, "experiment.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Scoring rules changed after the committed runs", 1)[1].split("\n## ", 1)[0]
    assert "\n5. " in section


# ---- ca_rev135 (strict xfail: review of a7365f0)
def test_ca_rev135_the_report_counts_only_the_lesion_images_as_lesion_images(tmp_path):
    from convex_attention.paper.explain import explained_indices

    data, model = _brightest_and_model()
    indices = explained_indices(data, 3)  # lesion [0, 2, 3]; decisive [0, 1, 2], image 1 a normal image
    assert int(data[1][1]) == 0 and 1 not in indices["lesion"] and 1 in indices["decisive"]
    rows, _ = explain_models({"exact": model}, data, indices=indices["lesion"], decisive=indices["decisive"],
                             baseline_model=None, progress=False, n_examples=0)
    n_lesion = len({r["image"] for r in rows if r["mask"] == "lesion"})
    assert n_lesion == 3
    text = read_text(write_outputs(rows, [], str(tmp_path))["markdown"])
    assert "4 lesion images" not in text and f"on {n_lesion} lesion images" in text


def test_ca_rev135_each_model_is_pooled_at_its_own_grids_or_mixed_grids_are_refused():
    from convex_attention.paper.explain import grids_of

    data = SyntheticLesions(4, image_size=32, seed=1)
    torch.manual_seed(0)
    first = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8)
    second = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8, attention_blocks=(2, 3))
    assert grids_of(first) == [(8, 8), (4, 4)] and grids_of(second) == [(16, 16), (8, 8)]
    try:
        rows, _ = explain_models({"first": first, "second": second}, data, n_images=1, baseline_model=None,
                                 pooled=True, progress=False)
    except ValueError:
        return  # refusing models of different attention grids is as good
    scored = {(r["model"], r["level"], r["resolution"]) for r in rows if r["method"] == "attention"}
    assert ("second", 0, "16x16") in scored


def test_ca_rev135_score_explanations_refuses_maps_and_masks_of_different_batches():
    from convex_attention.paper.explain import score_explanations

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 0, 0] = True
    for batch in (3, 1):
        with pytest.raises(ValueError):
            score_explanations({("attention", 0): torch.rand(batch, 4, 4)}, masks)


# ---- ca_rev156 (strict xfail: review of c71ac64)
def test_ca_rev156_explanations_restore_every_module_s_training_mode():
    from convex_attention.paper.explain import explanations

    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8).train()
    frozen = model.blocks[0][1]
    frozen.eval()  # a user's mixed modes: one batch norm frozen inside a model in training
    modes = {name: m.training for name, m in model.named_modules()}
    images = torch.randn(2, model.config.in_channels, 32, 32)
    explanations(model, images, target="true", posthoc=False, labels=torch.tensor([1, 0]))
    assert {name: m.training for name, m in model.named_modules()} == modes  # the baselines restore them too


# ---- ca_rev210 (mutation review of ef12afd, explain and experiment): tests that kill surviving mutants
def test_ca_rev210_a_pooled_block_map_row_is_the_block_map_of_that_grid_not_the_finer_one_pooled():
    """The finer block map sum-pooled ties two 2x2 cells again (offsets 15 + 10 and 13 + 12 of 256): ap 0.883;
    the best map on the coarse grid breaks the tie: ap 0.898 (the docstring's example of block_map)."""
    from convex_attention.paper.explain import score_explanations
    from convex_attention.paper.explain_metrics import block_map, pooled_form, score_map, to_common_form

    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = mask[2, 2] = mask[0, 4] = mask[0, 6] = True  # 2 px in each top quadrant, in 4x4 cells 0, 5 and 2, 3
    mask[4:8, 0:4] = True
    fine = block_map(mask, (4, 4))
    rows = score_explanations({("block_map", 0): fine[None]}, mask[None], grids=[(4, 4), (2, 2)], pooled=True)
    [row] = [r for r in rows if r["resolution"] == "2x2"]
    best = score_map(to_common_form(block_map(mask, (2, 2)), (8, 8), "nearest"), mask)["ap"]
    pooled = score_map(to_common_form(pooled_form(fine, (2, 2), normalise=False), (8, 8), "nearest"), mask)["ap"]
    assert best == pytest.approx(0.8979, abs=1e-4) and pooled < best - 0.01
    assert row["ap"] == pytest.approx(best)


def test_ca_rev210_a_model_in_training_is_explained_in_eval_mode_and_its_batch_statistics_are_left_alone():
    """The maps of a model left in training mode are those of its eval mode (batch norm on its running
    statistics, not the batch's), and explaining it does not move those statistics."""
    import copy

    from convex_attention.paper.explain import explanations

    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8).train()
    images = torch.randn(3, model.config.in_channels, 32, 32) * 3 + 1
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference(images).maps
    maps = explanations(model, images, target="true", posthoc=False, labels=torch.tensor([1, 0, 1]))
    for k, m in enumerate(expected):
        assert torch.allclose(maps[("attention", k)], m, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_ca_rev210_the_report_counts_the_images_scored_against_the_decisive_masks(tmp_path):
    rows = [{"model": "exact", "method": "attention", "level": 0, "resolution": "pixel", "upsampling": "nearest",
             "mask": mask, "image": i, **{m: 0.5 for m in METRIC_NAMES}}
            for mask, images in (("lesion", (0, 1)), ("decisive", (0, 5, 6))) for i in images]
    text = read_text(write_outputs(rows, [], str(tmp_path))["markdown"])
    assert "on 2 lesion images and 3 images scored against their decisive masks" in text


def test_ca_rev210_a_summary_point_without_an_interval_is_drawn_as_its_mean_alone():
    """One seed: no half-width (NaN); the point's interval is the mean itself, never NaN bounds."""
    from convex_attention.paper.explain import _summary_points

    rows = [{"model": "exact", "method": "attention", "level": 0, "ap_mean": 0.4, "ap_ci95": float("nan")},
            {"model": "exact", "method": "lrp", "level": -1, "ap_mean": 0.9, "ap_ci95": 0.3}]
    points, skipped = _summary_points(rows, "ap")
    assert skipped == 0
    assert sorted(v["exact"] for v in points.values()) == [(0.4, 0.4, 0.4), pytest.approx((0.9, 0.6, 1.0))]


def test_ca_rev210_the_input_attributions_explain_each_image_s_own_label_too(monkeypatch):
    """_recording_gradcam leaves BASELINES out: here each input attribution records the targets it is given."""
    from convex_attention.paper import explain

    seen = {}
    _recording_gradcam(monkeypatch, [])

    def recorder(name):
        def fake(model, images, targets):
            seen[name] = targets.tolist()
            return torch.zeros_like(images)
        return fake

    monkeypatch.setattr(explain, "BASELINES", {"deeplift": recorder("deeplift"), "lrp": recorder("lrp")})
    torch.manual_seed(0)
    model = AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8)
    maps = explain.explanations(model, torch.randn(3, 4, 32, 32), target="true", labels=torch.tensor([0, 1, 0]))
    assert seen == {"deeplift": [0, 1, 0], "lrp": [0, 1, 0]} and ("lrp", -1) in maps


# ---- ca_rev235 (mutation review of the 42nd session's code): explain_models' defaults are the shared constants


def test_ca_rev235_explain_models_defaults_are_the_experiments_and_the_commands():
    """explain_models, the experiment's n_explain and the explain command's --n-images and --batch-size
    default to the same EXPLAINED_IMAGES and EXPLAIN_BATCH_SIZE (paper.config)."""
    import inspect

    from convex_attention.paper.config import EXPLAIN_BATCH_SIZE, EXPLAINED_IMAGES
    from convex_attention.paper.explain import explain_models

    parameters = inspect.signature(explain_models).parameters
    assert parameters["n_images"].default == EXPLAINED_IMAGES == ExperimentConfig().n_explain
    assert parameters["batch_size"].default == EXPLAIN_BATCH_SIZE


# ---- ca_rev252 (hostile review of paper.explain / paper.sanity)

def _ca_rev252_model(norm="batch"):
    """A tiny model whose BatchNorm statistics are not the fresh ones (so eval and training
    modes differ) and whose logits are not all near 0 (so the maps are not all zero)."""
    torch.manual_seed(0)
    model = AttentionUNet(method="softmax", width=4, image_size=32, embed_channels=8, norm=norm).eval()
    trained_looking(model)
    torch.manual_seed(2)
    return model, torch.rand(4, model.config.in_channels, 32, 32), torch.tensor([1, 0, 0, 1])


def _ca_rev252_hand_gradcam(model, images, targets, level):
    """GradCAM by hand: the block's last ReLU hooked, the gradient of each image's target logit
    (pre-softmax), channel weights = the spatial mean of the gradients, ReLU of the weighted sum."""
    store = {}
    hook = model.attention_layer(level).register_forward_hook(lambda module, i, o: store.setdefault("a", o))
    try:
        logits = model(images).logits
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(logits[torch.arange(len(images)), targets].sum(), store["a"])
    return torch.relu((grad.mean((2, 3), keepdim=True) * store["a"]).sum(1)).detach()


def test_ca_rev252_gradcam_is_a_hand_gradcam_of_each_images_own_label_and_of_the_prediction():
    """Every level's GradCAM map is the hand GradCAM of the true label (``target="true"``) or of
    the argmax (``"predicted"``), at the level's grid, with the model in eval mode (mutants: the
    other class explained, the model left in training mode, the level's block off by one)."""
    model, images, labels = _ca_rev252_model()
    model.train()
    maps = explanations(model, images, "true", True, labels)
    assert model.training  # the caller's mode is restored
    model.eval()
    predicted = explanations(model, images, "predicted", True)
    prediction = model(images).logits.argmax(1)
    assert not torch.equal(prediction, labels)  # the two targets differ somewhere
    nonzero = 0
    for level, grid in enumerate(model.hierarchy.shapes):
        for got, targets in ((maps, labels), (predicted, prediction)):
            want = _ca_rev252_hand_gradcam(model, images, targets, level)
            assert tuple(got[("gradcam", level)].shape) == (4, *grid)
            torch.testing.assert_close(got[("gradcam", level)], want, rtol=1e-5, atol=1e-7)
            nonzero += int(bool((want > 0).any()))
    assert nonzero >= 2  # not an all-zero comparison


def test_ca_rev252_input_attributions_are_complete_and_match_captum_free_oracles():
    """Integrated Gradients against the all-zero baseline sums to f(x) − f(0) of the explained
    logit and matches a 64-point midpoint Riemann sum; Input×Gradient is x · ∂f/∂x (mutants: a
    non-zero baseline, the other class, a sign)."""
    model, images, labels = _ca_rev252_model()
    maps = explanations(model, images, "true", True, labels)
    pick = torch.arange(len(images))
    with torch.no_grad():
        delta = model(images).logits[pick, labels] - model(torch.zeros_like(images)).logits[pick, labels]
    ig = maps[("integrated_gradients", -1)]
    torch.testing.assert_close(ig.flatten(1).sum(1), delta, rtol=0.1, atol=1e-6)  # 32 Gauss-Legendre points
    alphas = (torch.arange(64) + 0.5) / 64
    path = torch.cat([a * images for a in alphas]).requires_grad_()
    (grad,) = torch.autograd.grad(model(path).logits[torch.arange(len(path)), labels.repeat(64)].sum(), path)
    riemann = images * grad.view(64, *images.shape).mean(0)
    # (a ReLU network's path gradient is piecewise constant: the two quadratures differ locally)
    torch.testing.assert_close(ig, riemann, rtol=0.0, atol=0.05 * float(riemann.abs().max()))
    assert float(torch.corrcoef(torch.stack([ig.flatten(), riemann.flatten()]))[0, 1]) > 0.999
    x = images.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).logits[pick, labels].sum(), x)
    torch.testing.assert_close(maps[("input_x_gradient", -1)], images * grad)


def test_ca_rev252_an_image_alone_or_in_a_shuffled_batch_gets_the_same_maps():
    """No map depends on the other images of the batch or on its order (BatchNorm in eval mode,
    the model given in training mode; mutants: training mode kept, maps read at the wrong
    position)."""
    model, images, labels = _ca_rev252_model()
    model.train()
    maps = explanations(model, images, "true", True, labels)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = explanations(model, images[order], "true", True, labels[order])
    alone = explanations(model, images[1:2], "true", True, labels[1:2])
    for key, m in maps.items():
        scale = float(m.abs().max()) + 1e-30
        assert float((shuffled[key] - m[order]).abs().max()) <= 1e-5 * scale, key
        assert float((alone[key][0] - m[1]).abs().max()) <= 1e-5 * scale, key
    model.eval()
    with torch.no_grad():
        out = model(images)
    for level, p in enumerate(out.maps):
        torch.testing.assert_close(maps[("attention", level)], p)


def test_ca_rev252_lrp_is_left_out_for_a_groupnorm_model_and_said():
    """captum's LRP has no rule for GroupNorm: with ``norm="group"`` its relevance reached ~7e13 (logits
    ~ -23) and an image's map moved by up to 7.6 % of its maximum between the image alone and in a batch of
    4 (float32 rounding amplified; float64 agreed to 1e-15): no explanation of the model.  lrp refuses
    such a model; explanations leaves LRP out of its maps and explain_models says so; a BatchNorm model
    keeps it."""
    from convex_attention.baselines.attributions import lrp, lrp_refusal
    from convex_attention.paper.explain import explanations

    model, images, labels = _ca_rev252_model(norm="group")
    assert "GroupNorm" in lrp_refusal(model)
    with pytest.raises(ValueError, match="LRP: captum's LRP has no rule for GroupNorm"):
        lrp(model, images, labels)
    maps = explanations(model, images, labels=labels)
    assert ("lrp", -1) not in maps and ("deeplift", -1) in maps and ("gradcam", 0) in maps
    batch_model = _ca_rev252_model(norm="batch")[0]
    assert lrp_refusal(batch_model) is None and ("lrp", -1) in explanations(batch_model, images, labels=labels)
