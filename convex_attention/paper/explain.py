"""``convex-attention explain``: attention maps and post-hoc explanations scored against masks.

On images that contain a lesion, for every trained model: its attention maps at every
level (attention models), and, on the models named by ``baseline_model`` (one name, a
list of names, ``"all"`` or ``None``), the post-hoc methods (GradCAM at each attention
level's resolution, DeepLIFT, LRP, Input×Gradient, Integrated Gradients; see
``baselines/attributions.py``).  Reference rows (model ``"reference"``) can be added: the
model-free map (a fixed per-pixel channel combination ``w · x``) and the best possible
block map at each attention grid (:func:`convex_attention.paper.explain_metrics.block_map`).

Every map is scored by :func:`convex_attention.paper.explain_metrics.score_map` under the
pixel protocol (``resolution`` ``"pixel"``, with the stated ``upsampling``) and, with
``pooled=True``, under the authors' pooled protocol at every attention grid at most as
fine as the map (``resolution`` ``"32x32"`` etc., upsampling always ``nearest``).

The post-hoc methods explain ``target``: ``"true"`` (default; each image's own label: the
lesion class, 1, on lesion images, and class 0 on the normal images the decisive masks add)
or ``"predicted"`` (the model's argmax).  Runs before 2026-12-06 explained class 1 on every
image, normal ones included (docs/experiment.md, "Scoring rules changed after the committed
runs").

Statistics: :func:`mean_ci` (mean and the half-width of its 95 % confidence interval,
Student t) is the one summary used by ``explain`` (over images) and ``experiment`` (over
seeds).  It leaves out values that are not numbers (NaN), so every summary carries, beside
each mean, how many values it used and how many it left out (:func:`summary_cells`:
``{metric}_n_used`` and ``{metric}_n_nan``; the interval has ``n_used − 1`` degrees of
freedom), and the reports say where any were left out.

Outputs in ``out``: ``explain.csv`` (one row per image, model, method, level, resolution
and upsampling), ``explain_summary.csv`` and ``explain.md`` (mean ± 95 % CI per group) and
``explain_examples.png``/``.pdf`` (one row per example: image, mask, maps, all on one
colour scale).
"""
from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sized
from typing import Protocol, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ..baselines.attributions import BASELINES, gradcam, lrp_refusal
from ..io import figures
from ..io.figures import FULL_WIDTH, STYLE
from ..io.files import atomic_csv, atomic_write_text
from .config import EXPLAIN_BATCH_SIZE, EXPLAINED_IMAGES
from .explain_metrics import (
    METRIC_NAMES,
    UPSAMPLINGS,
    block_map,
    pointing_tolerance_px,
    pooled_form,
    score_map,
    to_common_form,
)
from .models import NonFiniteOutput, non_finite_parts

__all__ = ["MASKS", "REFERENCE_MODEL", "TARGETS", "has_decisive_masks", "decisive_indices", "explained_indices",
           "primary_mask",
           "lesion_indices", "check_explained", "explain_models", "explanations", "score_explanations",
           "reference_maps", "grids_of", "summarise",
           "write_outputs", "mean_ci", "mean_se", "nan_counts", "summary_cells", "dropped_values",
           "format_ci", "markdown_table", "plot_examples",
           "plot_metric_summary", "EXPLAIN_COLUMNS", "POSTHOC", "GROUP_KEYS", "OUTPUT_FILES"]

GROUP_KEYS = ("model", "method", "level", "resolution", "upsampling", "mask")
#: The masks a map is scored against: the lesion (lesion images), and the structure that
#: decides the label (every image whose data say which structure decides).
#: The model of the reference rows (block maps of the mask, the model-free map): maps no trained model
#: made (reports show them without an interval over seeds).
REFERENCE_MODEL = "reference"
MASKS = ("lesion", "decisive")
#: What the post-hoc methods explain: each image's own label, or the model's prediction.
TARGETS = ("true", "predicted")
EXPLAIN_COLUMNS = GROUP_KEYS + ("image",) + METRIC_NAMES
#: The post-hoc methods, in report order (GradCAM has one map per attention level; the others are input attributions).
POSTHOC = ("gradcam", "deeplift", "lrp", "input_x_gradient", "integrated_gradients")
_SHORT = {"gradcam": "GradCAM", "deeplift": "DeepLIFT", "lrp": "LRP", "input_x_gradient": "IxG",
          "integrated_gradients": "IG", "block_map": "best block", "model_free": "model-free"}
# maps normalised by the pooled protocol (min-max, channel sum, softmax); attention and block maps are used as they are
_NORMALISED = set(POSTHOC) | {"model_free"}


class _MarksDecisive(Protocol):
    """A dataset that says which structure decides each label (:func:`has_decisive_masks`)."""

    def __len__(self) -> int: ...

    def decisive_mask(self, index: int) -> torch.Tensor: ...


def has_decisive_masks(dataset: Dataset) -> bool:
    """Whether the data say which structure decides each label (:meth:`decisive_mask`)."""
    if not hasattr(dataset, "decisive_mask"):
        return False
    try:
        dataset.decisive_mask(0)
    except ValueError:
        return False
    return True


def decisive_indices(dataset: Dataset, n: int) -> list[int]:
    """The first ``n`` images (either label) whose decisive mask (the structure that decides
    the label) is non-empty."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of images to explain must be a positive integer, got {n!r}")
    out = []
    marked = cast(_MarksDecisive, dataset)  # (a dataset without decisive masks fails here, as before)
    for i in range(len(marked)):
        if bool(marked.decisive_mask(i).any()):
            out.append(i)
            if len(out) == n:
                break
    if not out:
        raise ValueError("no image whose deciding structure is marked, to explain")
    return out


def lesion_indices(dataset: Dataset, n: int) -> list[int]:
    """The first ``n`` images with label 1 and a non-empty mask (``n`` >= 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of images to explain must be a positive integer, got {n!r}")
    out = []
    for i in range(len(cast(Sized, dataset))):  # (every dataset here has a length)
        _, label, mask = dataset[i]
        if int(label) == 1 and bool(mask.any()):
            out.append(i)
            if len(out) == n:
                break
    if not out:
        raise ValueError("no validation image with a lesion (label 1 and a non-empty mask) to explain")
    return out


def explained_indices(dataset: Dataset, n: int) -> dict[str, list[int]]:
    """The images explained against each mask: ``{"lesion": lesion_indices(dataset, n)}``
    and, where the data say which structure decides the label, ``"decisive":
    decisive_indices(dataset, n)``."""
    out = {"lesion": lesion_indices(dataset, n)}
    if has_decisive_masks(dataset):
        out["decisive"] = decisive_indices(dataset, n)
    return out


def primary_mask(indices: dict) -> str:
    """The mask the maps are chosen and judged on: the structure that decides the label
    where the data mark it (on ``synthetic-brightest`` every image holds a lesion, so a
    lesion detector earns full lesion AP without reading the rule), else the lesion."""
    return "decisive" if "decisive" in indices else "lesion"


def grids_of(model) -> list[tuple[int, int]]:
    """The attention grids of a model (finest first): ``[(32, 32), (16, 16)]`` for blocks 3, 4 at 128 x 128."""
    return [tuple(s) for s in model.hierarchy.shapes]


def explanations(model, images: torch.Tensor, target: str = "true", posthoc: bool = True,
                 labels: torch.Tensor | None = None) -> dict:
    """``{(method, level): maps}`` of one batch ``images`` ``(B, C, H, W)``.

    ``("attention", k)``: ``(B, h_k, w_k)``, the model's attention at level ``k`` (models
    with attention); with ``posthoc``: ``("gradcam", k)`` ``(B, h_k, w_k)`` and
    ``(name, -1)`` ``(B, C, H, W)`` for the input attributions.  The post-hoc methods
    explain each image's own label (``target="true"``; ``labels`` ``(B,)`` in {0, 1}, which
    it needs: ValueError without them) or the model's prediction (``"predicted"``).

    :class:`~convex_attention.paper.models.NonFiniteOutput` (naming the parts) when the
    model's logits or maps, or an explanation map, hold NaN or Inf: such maps are never
    scored, so no metric of them is reported as a number."""
    if target not in TARGETS:  # anything else was explained as the prediction
        raise ValueError(f"target is 'true' or 'predicted', got {target!r}")
    if posthoc and target == "true":
        if labels is None:  # class 1 was assumed here: a normal image's true class is 0
            raise ValueError("target 'true' explains each image's own label: pass the images' labels")
        given = torch.as_tensor(labels).reshape(-1)  # checked before the cast: 0.6 would truncate to class 0
        if given.shape != (len(images),) or not bool(((given == 0) | (given == 1)).all()):
            raise ValueError(f"labels are one 0 or 1 per image ({len(images)}), got {given.tolist()}")
        labels = given.to(device=images.device, dtype=torch.long)
    # every module's own mode is put back after (a model in training had been left in eval mode,
    # as the post-hoc methods' own wrapper never leaves it: ca_rev156)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
        bad = non_finite_parts(out)
        if bad:  # a map or a prediction that is not a number is never scored
            raise NonFiniteOutput(f"the model's {', '.join(bad)} hold NaN or Inf: its explanations are not scored")
        targets = labels if target == "true" else out.logits.argmax(1)
        maps = {}
        if getattr(model, "has_attention", True):
            maps = {("attention", k): p.detach() for k, p in enumerate(out.maps)}
        if posthoc:
            for k in range(len(model.config.attention_blocks)):
                maps[("gradcam", k)] = gradcam(model, images, targets, level=k)
            for name, fn in BASELINES.items():
                if name == "lrp" and lrp_refusal(model):  # left out, and said by explain_models
                    continue
                maps[(name, -1)] = fn(model, images.clone().requires_grad_(), targets)
    finally:
        for module, training in modes:
            module.training = training
    bad = [f"{method} (level {level})" for (method, level), m in maps.items()
           if not bool(torch.isfinite(m.detach()).all())]
    if bad:
        raise NonFiniteOutput(f"the explanation maps {', '.join(bad)} hold NaN or Inf: they are not scored")
    return maps


_maps_for = explanations  # the earlier name


def reference_maps(images: torch.Tensor, masks: torch.Tensor, grids, model_free_weights=None) -> dict:
    """Reference maps of a batch: ``("block_map", k)``: the mask sum-pooled to grid ``k``
    ``(B, *grids[k])``, ties between cells of equal counts broken (the best possible map on
    that grid: :func:`~convex_attention.paper.explain_metrics.block_map`); ``("model_free", -1)``: the
    per-pixel channel combination ``w · x`` ``(B, H, W)``, shifted to start at 0 (a
    monotone shift: its ranking is the combination's) when ``model_free_weights`` ``(C,)``
    is given."""
    maps = {("block_map", k): torch.stack([block_map(m, g) for m in masks]) for k, g in enumerate(grids)}
    if model_free_weights is not None:
        w = torch.as_tensor(np.asarray(model_free_weights, dtype=np.float64))
        if w.shape != (images.shape[1],):
            raise ValueError(f"model-free weights must be ({images.shape[1]},), one per channel, got {tuple(w.shape)}")
        m = torch.einsum("c,bchw->bhw", w, images.detach().cpu().to(torch.float64))
        maps[("model_free", -1)] = m - m.flatten(1).min(1).values.view(-1, 1, 1)
    return maps


def _spatial(m: torch.Tensor) -> tuple[int, int]:
    return cast("tuple[int, int]", tuple(m.shape[-2:]))


def _image_size(masks: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of masks ``(B, H, W)``."""
    return cast("tuple[int, int]", tuple(masks.shape[1:]))


def score_explanations(maps: dict, masks: torch.Tensor, grids=(), upsampling: str = "nearest",
                       pooled: bool = False, tolerance: float | None = None) -> list[dict]:
    """Rows ``{method, level, resolution, upsampling, position, **metrics}`` for every map
    of ``maps`` (as :func:`explanations` gives, batch ``B``) and image ``position`` in
    ``0 .. B-1``, against ``masks`` ``(B, H, W)``.

    Pixel protocol always; with ``pooled``, the pooled protocol at every grid of
    ``grids`` at most as fine as the map and dividing it."""
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, got {upsampling!r}")
    size = _image_size(masks)
    rows = []
    for (method, level), m in maps.items():
        if len(m) != len(masks):  # (a larger batch of maps had its extra images dropped unsaid: ca_rev135)
            raise ValueError(f"score_explanations: the maps of {method} level {level} hold {len(m)} images, the "
                             f"masks {len(masks)}: both must have batch B")
        m = m.detach().cpu()
        h, w = _spatial(m)
        usable = [g for g in grids if g[0] <= h and g[1] <= w and h % g[0] == 0 and w % g[1] == 0] if pooled else []
        for j in range(len(masks)):
            mask = masks[j]
            rows.append({"method": method, "level": level, "resolution": "pixel", "upsampling": upsampling,
                         "position": j, **score_map(to_common_form(m[j], size, upsampling), mask, tolerance)})
            for g in usable:
                # the reference there is the best map on that grid, its ties broken on it: a finer block map
                # pooled sums its tie-breaking offsets, which can tie two cells again (ap 0.883 for 0.898, ca_rev135)
                grid_map = (block_map(mask, g) if method == "block_map"
                            else pooled_form(m[j], g, normalise=method in _NORMALISED))
                rows.append({"method": method, "level": level, "resolution": f"{g[0]}x{g[1]}", "upsampling": "nearest",
                             "position": j, **score_map(to_common_form(grid_map, size, "nearest"), mask, tolerance)})
    return rows


def _posthoc_models(models: dict, baseline_model) -> set:
    if baseline_model is None:
        return set()
    if baseline_model == "all":
        return set(models)
    names = [baseline_model] if isinstance(baseline_model, str) else list(baseline_model)
    missing = [n for n in names if n not in models]
    if missing:
        label = repr(missing[0]) if len(missing) == 1 else str(missing)
        raise ValueError(f"the baseline model {label} is not among the models {sorted(models)}")
    return set(names)


def check_explained(models: dict, baseline_model) -> None:
    """ValueError, before any work, naming a model of which nothing would be scored: one with no
    attention maps (a plain CNN) that the post-hoc methods do not explain (``baseline_model``,
    as :func:`explain_models` takes it).  Such a model was run over every image and left no row
    (with no other model: 'nothing was explained' after the work, ca_rev117)."""
    posthoc = _posthoc_models(models, baseline_model)
    silent = [n for n, m in models.items() if not getattr(m, "has_attention", True) and n not in posthoc]
    if silent:
        raise ValueError(f"model {silent[0]!r} has no attention maps, and the post-hoc methods do not explain it: "
                         f"nothing of it would be scored; name it in the baseline models, or leave it out")


def check_pooled_grids(models: dict) -> None:
    """ValueError unless every model of ``models`` attends on the same grids: the pooled protocol
    pools every model's maps at one set of grids (the first model's had pooled them all, ca_rev135)."""
    first = next(iter(models))
    grids = grids_of(models[first])
    other = next((name for name, model in models.items() if grids_of(model) != grids), None)
    if other is not None:
        raise ValueError(f"the pooled protocol needs one set of attention grids: model {other!r} attends on "
                         f"{grids_of(models[other])}, {first!r} on {grids}; explain them apart, or pass --pixel-only")


def explain_models(models: dict, dataset: Dataset, n_images: int = EXPLAINED_IMAGES, baseline_model="all",
                   target: str = "true", batch_size: int = EXPLAIN_BATCH_SIZE, device="cpu", progress: bool = True,
                   indices: list[int] | None = None, upsampling: str = "nearest", pooled: bool = False,
                   references: bool = False, model_free_weights=None, n_examples: int = 4,
                   decisive: list[int] | None = None):
    """Score every model's attention and the post-hoc methods against the lesion masks of
    lesion images (``indices``, by default :func:`lesion_indices` ``(dataset, n_images)``)
    and, given ``decisive`` (image indices, e.g. :func:`decisive_indices`), against the
    masks of the structure that decides each label (``dataset.decisive_mask``); the rows'
    ``mask`` column says which.  An image in both lists is explained once.

    ``baseline_model``: the models the post-hoc methods explain (a name, a list of names,
    ``"all"``, the default as in ``explain``'s configuration, or ``None``).  ``upsampling``: of
    the pixel protocol; ``pooled``: also score under the pooled protocol at every attention
    grid; ``references``: add the reference rows (model ``"reference"``: block maps of the
    mask scored, and the model-free map when ``model_free_weights`` is given).  Returns
    ``(rows, examples)``: ``rows`` as in ``explain.csv``; ``examples`` the first
    ``n_examples`` lesion images with their masks and pixel-protocol maps (for the figure).
    """
    from tqdm.auto import tqdm

    if target not in TARGETS:
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    if not models:
        raise ValueError("no model to explain")
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, got {upsampling!r}")
    check_explained(models, baseline_model)
    posthoc = _posthoc_models(models, baseline_model)
    unruled = {name: why for name in sorted(posthoc) if (why := lrp_refusal(models[name]))}
    if unruled:  # their LRP rows are left out (explanations), never scored
        warnings.warn(f"LRP left out for {', '.join(unruled)}: {next(iter(unruled.values()))}", stacklevel=2)
    if indices is None:
        indices = lesion_indices(dataset, n_images)
    wanted = {"lesion": set(indices), "decisive": set(decisive or ())}
    order = list(dict.fromkeys([*indices, *(decisive or ())]))
    grids = grids_of(next(iter(models.values())))
    if pooled:
        check_pooled_grids(models)
    rows, examples = [], []
    for start in tqdm(range(0, len(order), batch_size), desc="explain", disable=not progress):
        chosen = order[start:start + batch_size]
        batch = [dataset[i] for i in chosen]
        images = torch.stack([b[0] for b in batch]).to(device)
        labels = torch.tensor([int(b[1]) for b in batch])
        masks = {"lesion": torch.stack([b[2] for b in batch])}
        if wanted["decisive"] & set(chosen):
            masks["decisive"] = torch.stack([cast(_MarksDecisive, dataset).decisive_mask(i) for i in chosen])
        size = _image_size(masks["lesion"])
        model_maps = []
        for name, model in models.items():
            model.to(device)
            try:
                model_maps.append((name, explanations(model, images, target, name in posthoc, labels)))
            except NonFiniteOutput as err:
                raise NonFiniteOutput(f"model {name!r}, on images {chosen[:10]}: {err}") from None
        for kind, kind_masks in masks.items():
            keep = [j for j, i in enumerate(chosen) if i in wanted[kind]]
            if not keep:
                continue
            sources = list(model_maps)
            if references:
                sources.append((REFERENCE_MODEL, reference_maps(images, kind_masks, grids, model_free_weights)))
            for name, maps in sources:
                subset = {key: m[keep] for key, m in maps.items()}
                for r in score_explanations(subset, kind_masks[keep], grids, upsampling, pooled):
                    j = keep[r.pop("position")]
                    rows.append({"model": name, **r, "mask": kind, "image": chosen[j]})
                if kind != "lesion":
                    continue
                for (method, level), m in maps.items():
                    for j in keep:
                        if indices.index(chosen[j]) < n_examples:
                            examples.append((chosen[j], name, method, level, images[j].cpu(), kind_masks[j],
                                             to_common_form(m[j].cpu(), size, upsampling)))
    return rows, examples


# ----------------------------------------------------------------------------- statistics

def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its ``confidence`` interval (Student t with ``n − 1``
    degrees of freedom: ``t · std(ddof=1) / sqrt(n)``) of the finite ``values`` (``n`` of
    them: NaN and infinite values are left out, and :func:`summary_cells` counts them: an
    infinity had been averaged into an infinite mean shown as "–" and counted as used:
    ca_rev196); NaN where undefined (no value; one value for the half-width)."""
    from scipy.stats import t

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    v = np.array([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    half = float(t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), half


def nan_counts(values) -> tuple[int, int]:
    """``(n_used, n_nan)``: how many of ``values`` are finite numbers (what :func:`mean_ci` and
    :func:`mean_se` average) and how many are not (NaN or infinite: what they leave out)."""
    v = np.array([float(x) for x in values], dtype=float)
    n_nan = int((~np.isfinite(v)).sum())
    return int(v.size) - n_nan, n_nan


def summary_cells(name: str, values, confidence: float = 0.95) -> dict:
    """One summarised quantity ``name`` of ``values`` (a sequence of floats):
    ``{name}_mean`` and ``{name}_ci95`` (:func:`mean_ci`, Student t with ``n_used − 1``
    degrees of freedom), ``{name}_n_used`` (the values averaged) and ``{name}_n_nan`` (the
    values left out: NaN, or infinite), so that no summary drops a value without saying so."""
    mean, half = mean_ci(values, confidence)
    n_used, n_nan = nan_counts(values)
    return {f"{name}_mean": mean, f"{name}_ci95": half, f"{name}_n_used": n_used, f"{name}_n_nan": n_nan}


def dropped_values(summary: list[dict], keys, metrics, count: str = "n", all_nan: bool = False) -> list[str]:
    """One line per group of ``summary`` (rows of :func:`summary_cells` columns; ``keys``
    name the group) and metric whose mean is a number yet left NaN values out: ``"key,
    key: metric: 2 of 5 seeds left out"``, with ``count`` naming what was counted (e.g.
    ``"seeds"``).  Where a row also counts the images behind per-seed means
    (``{metric}_images_used`` and ``{metric}_images_nan``), images left out are named too.
    A mean over no number is itself NaN (shown as "–"), and is listed only with ``all_nan``
    (``"metric: all 5 seeds NaN, no mean"``): in a table where "–" also marks what did not
    run (the randomisation stages; ca_rev150), not where NaN is by design (the plain CNN's
    attention statistics).  Empty when nothing was left out."""
    lines = []
    for s in summary:
        parts = []
        for m in metrics:
            n_nan, n_used = int(s.get(f"{m}_n_nan", 0) or 0), int(s.get(f"{m}_n_used", 0) or 0)
            i_nan, i_used = int(s.get(f"{m}_images_nan", 0) or 0), int(s.get(f"{m}_images_used", 0) or 0)
            if n_used and (n_nan or i_nan):
                part = f"{m}: {n_nan} of {n_nan + n_used} {count} left out"
                if f"{m}_images_nan" in s:
                    part += f" ({i_nan} of {i_nan + i_used} images NaN)"
                parts.append(part)
            elif all_nan and not n_used and n_nan:
                parts.append(f"{m}: all {n_nan} {count} NaN, no mean"
                             + (f" ({i_nan} of {i_nan + i_used} images NaN)" if f"{m}_images_nan" in s else ""))
        if parts:
            lines.append(", ".join(str(s.get(k, "")) for k in keys) + ": " + "; ".join(parts))
    return lines


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``) of the finite ``values`` (NaN and
    infinite ones left out, as :func:`mean_ci` does); NaN where undefined (no value; one
    value for the error)."""
    v = np.array([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan)


def format_ci(mean: float, half: float, digits: int = 3) -> str:
    """``"0.512 ± 0.034"``; ``"0.512"`` without a half-width; ``"–"`` without a mean."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _group(r: dict) -> tuple:
    return (r["model"], r["method"], int(r["level"]), r.get("resolution", "pixel"), r.get("upsampling", "nearest"),
            r.get("mask", "lesion"))


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, method, level, resolution, upsampling, mask), in that order (levels by
    number, input attributions' −1 first): ``n`` (the rows) and, for every metric,
    ``{metric}_mean``, ``{metric}_ci95`` (half-width, Student t over the rows whose value
    is a number), ``{metric}_n_used`` and ``{metric}_n_nan`` (:func:`summary_cells`) and
    ``{metric}_se``."""
    groups = defaultdict(list)
    for r in rows:
        groups[_group(r)].append(r)
    out = []
    # the level sorts as a number: as a signed string, "-01" would follow "+01" ("+" < "-")
    for key, rs in sorted(groups.items(), key=lambda kv: (*map(str, kv[0][:2]), int(kv[0][2]),
                                                          *map(str, kv[0][3:]))):
        entry = dict(zip(GROUP_KEYS, key))
        entry["n"] = len(rs)
        for metric in METRIC_NAMES:
            values = [r[metric] for r in rs if metric in r]
            entry.update(summary_cells(metric, values))
            entry[f"{metric}_se"] = mean_se(values)[1]
        out.append(entry)
    return out


def _level(level: int) -> str:
    return "input" if int(level) == -1 else str(level)


def markdown_table(summary: list[dict], metrics=METRIC_NAMES) -> str:
    """One row per group of :func:`summarise`, every metric as mean ± 95 % CI half-width."""
    head = "| model | method | level | resolution | upsampling | mask | n | " + " | ".join(metrics) + " |"
    sep = "|" + "---|" * (7 + len(metrics))
    lines = [head, sep]
    for s in summary:
        cells = [format_ci(s[f"{m}_mean"], s[f"{m}_ci95"]) for m in metrics]
        lines.append(f"| {s['model']} | {s['method']} | {_level(s['level'])} | {s.get('resolution', 'pixel')} | "
                     f"{s.get('upsampling', 'nearest')} | {s.get('mask', 'lesion')} | {s['n']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- outputs

def _example_panels(entry: dict, channels) -> list[tuple]:
    """One example image's panels: ``(title, kind, array)``, kind ``channel``, ``mask`` or
    ``map``: the chosen channels of the image, its mask, then every map."""
    image = entry["image"]
    panels = []
    if image.dim() == 2:  # an older caller: one channel only
        panels.append(("image", "channel", image))
    else:
        for index, label in channels:
            if index < image.shape[0]:
                panels.append((label, "channel", image[index]))
    panels.append(("lesion mask", "mask", entry["mask"]))
    panels += [(label, "map", m) for label, m in entry["maps"]]
    return panels


def plot_examples(examples, path: str, env=None, max_rows: int = 4, max_maps: int = 18,
                  title: str = "Explanations of lesion images", channels=((0, "channel 0"),),
                  row_label: str = "image {}", per_line: int = 9, notes=()) -> str:
    """Every example image with its explanations: the image's ``channels`` (``(index,
    label)``: the ones that show what decides the label; each on its own grey scale), its
    mask, then every map (every attention level, every post-hoc method, the references),
    wrapped into lines of ``per_line`` panels; each image's first line is labelled
    (``row_label``, formatted with the image's index).

    All maps share one colour scale: each is divided by its maximum (a map's units are
    its method's own, so only its shape is comparable) and drawn on [0, 1], with one
    colour bar; the mask's outline is drawn on every map.  ``notes``: more footer lines
    (what the channels show)."""
    import matplotlib.pyplot as plt  # io.figures chose the backend

    by_image: dict = {}
    for idx, model, method, level, image, mask, m in examples:
        entry = by_image.setdefault(idx, {"image": image, "mask": mask, "maps": []})
        if len(entry["maps"]) >= max_maps:
            continue
        where = "" if int(level) == -1 else f" L{level}"
        shown = _SHORT.get(method, method)
        label = f"{model}\n{shown}{where}" if method == "attention" else f"{shown}{where}\n({model})"
        entry["maps"].append((label, m))
    images = list(by_image.items())[:max_rows]
    if not images:
        raise ValueError("no example to plot")
    panels = [_example_panels(e, channels) for _, e in images]
    ncols = min(per_line, max(len(p) for p in panels))
    lines_per_image = [math.ceil(len(p) / ncols) for p in panels]
    side = min(1.1, (FULL_WIDTH - 0.5) / ncols)
    height = side * 1.22 * sum(lines_per_image) + 0.6
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(sum(lines_per_image), ncols, figsize=(side * ncols + 0.5, height), squeeze=False,
                                 gridspec_kw={"wspace": 0.05, "hspace": 0.28, "top": 1 - 0.45 / height})
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_visible(False)
        shown_map, line = None, 0
        for (idx, e), image_panels, n_lines in zip(images, panels, lines_per_image):
            outline = e["mask"].numpy().astype(float)
            for k, (label, kind, array) in enumerate(image_panels):
                ax = axes[line + k // ncols, k % ncols]
                ax.set_visible(True)
                if kind == "map":
                    top = float(array.max())
                    shown_map = ax.imshow((array / top if top > 0 else array).numpy(), cmap="inferno", vmin=0.0,
                                          vmax=1.0)
                    ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.4)
                else:
                    ax.imshow(array.numpy(), cmap="gray", **({"vmin": 0, "vmax": 1} if kind == "mask" else {}))
                    if kind == "channel":
                        ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.3, alpha=0.6)
                ax.set_title(label, fontsize=4.8, pad=2)
            axes[line, 0].set_ylabel(row_label.format(idx), fontsize=6)
            line += n_lines
        if shown_map is not None:
            bar = fig.colorbar(shown_map, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01)
            bar.set_label("map / its maximum (one scale for all maps)", fontsize=6)
        fig.suptitle(f"{title} (cyan: mask outline)", fontsize=8, y=1 - 0.1 / height)
        return figures.save(fig, path, env, notes=[
            *notes, "channels on their own grey scale; every map divided by its maximum (only its shape is "
                    "compared); maps at the image's resolution (coarse maps upsampled)"])


#: Colours of the models in the metric figures (others take the cycle's), and the references'.
_MODEL_COLOURS = {"softmax": "#7f7f7f", "learned_dual": "#d62728", "exact": "#1f77b4", "dual": "#2ca02c",
                  "cvxpylayers": "#8c6d31", "plain_cnn": "#9467bd", REFERENCE_MODEL: "#000000"}
_KIND_ORDER = ("attention", "post-hoc", "reference")
#: Metrics bounded to [0, 1]: their intervals are clipped to it, and drawn on it.
_UNIT_METRICS = ("ap", "qiou", "pointing", "mass")


def _bounded(metric: str) -> bool:
    """Whether ``metric`` (e.g. ``ap_mean``, ``qiou@0.5``) lies in [0, 1]."""
    return metric.split("@")[0].split("_")[0] in _UNIT_METRICS


def _kind(method: str) -> str:
    return "attention" if method == "attention" else ("reference" if method in ("block_map", "model_free")
                                                      else "post-hoc")


def _readable(key: str, value: str) -> str:
    """A panel's key as words: ``difficulty0.3`` -> ``difficulty 0.3``, ``heldout_mottled`` ->
    ``held-out mimic: mottled``, ``test`` -> ``test split``."""
    value = str(value)
    if key == "condition" and value.startswith("difficulty"):
        return "difficulty " + value[len("difficulty"):]
    if key == "test_set":
        if value.startswith("heldout_"):
            return "held-out mimic: " + value[len("heldout_"):]
        return f"{value} split"
    return value.replace("_", " ")


def _item(r: dict) -> tuple:
    """The row of the dot plot a summary row belongs to: kind, method, level."""
    method, level = r["method"], int(r["level"])
    return (_KIND_ORDER.index(_kind(method)), POSTHOC.index(method) if method in POSTHOC else -1, method, level)


def _item_label(item: tuple) -> str:
    _, _, method, level = item
    where = "" if level == -1 else f", L{level}"
    if method == "attention":
        return f"attention map{where}"
    name = _SHORT.get(method, method)
    return f"reference: {name}{where}" if _kind(method) == "reference" else f"{name}{where}"


def _summary_points(rows, metric: str) -> tuple[dict, int]:
    """``{item: {model: (mean, lower, upper)}}`` of one panel (intervals clipped to [0, 1]
    for bounded metrics), and how many rows had no finite mean."""
    def value(row, key):
        try:
            v = float(row.get(key, math.nan))
        except (TypeError, ValueError):
            return math.nan
        return v if math.isfinite(v) else math.nan

    bounded = _bounded(metric)
    out: dict = {}
    skipped = 0
    for r in rows:
        mean, half = value(r, f"{metric}_mean"), value(r, f"{metric}_ci95")
        if math.isnan(mean):
            skipped += 1
            continue
        half = 0.0 if math.isnan(half) else half
        lo, hi = mean - half, mean + half
        if bounded:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        out.setdefault(_item(r), {})[str(r["model"])] = (mean, lo, hi)
    return out, skipped


def _model_colour(model: str, models: list) -> str | tuple[float, float, float, float]:
    """The model's colour as matplotlib reads it: its own (hex), else tab10's RGBA by its place in ``models``."""
    if model in _MODEL_COLOURS:
        return _MODEL_COLOURS[model]
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab10")(models.index(model) % 10)


def _draw_summary_panel(ax, points: dict, models: list, chance: float | None) -> None:
    """One panel: a row per map (kind, method, level), a point per model with its interval,
    the models side by side within a row; the kinds apart; the chance line."""
    items = sorted(points)
    dodge = {m: (i - (len(models) - 1) / 2) * min(0.18, 0.7 / max(len(models), 1)) for i, m in enumerate(models)}
    for row, item in enumerate(items):
        y = len(items) - 1 - row
        for model, (mean, lo, hi) in points[item].items():
            at = y + (0.0 if model == REFERENCE_MODEL else -dodge.get(model, 0.0))
            ax.errorbar([mean], [at], xerr=[[mean - lo], [hi - mean]], color=_model_colour(model, models),
                        marker="D" if model == REFERENCE_MODEL else "o", ms=3.2, lw=0.8, capsize=1.2, ls="none")
        if row and item[0] != items[row - 1][0]:  # between kinds
            ax.axhline(y + 0.5, color="#999999", lw=0.5)
    for kind in sorted({i[0] for i in items}):  # each kind named beside its rows
        ys = [len(items) - 1 - row for row, i in enumerate(items) if i[0] == kind]
        ax.text(1.01, (min(ys) + max(ys)) / 2, _KIND_ORDER[kind], transform=ax.get_yaxis_transform(), rotation=-90,
                ha="left", va="center", fontsize=5.5, color="#555555")
    ax.set_yticks(range(len(items)), [_item_label(i) for i in reversed(items)], fontsize=5.5)
    ax.set_ylim(-0.6, len(items) - 0.4)
    if chance is not None and math.isfinite(chance):
        ax.axvline(chance, color="#444444", ls="--", lw=0.8)
    ax.grid(axis="x", lw=0.3, alpha=0.5)


def plot_metric_summary(summary: list[dict], path: str, metric: str = "ap", resolution: str = "pixel",
                        panel_keys=("condition", "test_set"), env=None, title: str | None = None,
                        chance: dict | None = None, notes=()) -> str:
    """``{metric}_mean`` with its 95 % interval (``{metric}_ci95``) at ``resolution``, one
    panel per value of ``panel_keys`` (titled in words), one row per map (the attention
    maps per level, each post-hoc method, the references) and one point per model in its
    own colour, the models side by side in a row; every panel on one x scale ([0, 1] for
    the bounded metrics, whose intervals are clipped to it).  ``chance``: ``{panel key
    tuple: value}``, e.g. the mask's pixel share (a random map's expected AP), drawn as a
    dashed line where given.  ``notes``: more footer lines (e.g. where the chance level
    came from).

    ``summary``: rows as written to ``explain_summary.csv`` (by :func:`summarise` or the
    experiment's per-seed summary).  Rows without a finite mean are left out and counted in
    the panel's title; a ValueError if no panel has a point."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels: dict = defaultdict(list)
    for r in summary:
        if r.get("resolution", "pixel") == resolution:
            panels[tuple(str(r.get(k, "")) for k in panel_keys)].append(r)
    drawn = {key: _summary_points(rows, metric) for key, rows in panels.items()}
    drawn = {key: v for key, v in drawn.items() if v[0]}
    if not drawn:
        raise ValueError(f"no finite {metric!r} at resolution {resolution!r} to plot")
    models = sorted({m for pts, _ in drawn.values() for by in pts.values() for m in by if m != REFERENCE_MODEL},
                    key=lambda m: (list(_MODEL_COLOURS).index(m) if m in _MODEL_COLOURS else 99, m))
    tallest = max(len(pts) for pts, _ in drawn.values())
    ncols = min(2, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    bounded = _bounded(metric)
    chance = chance or {}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH, 0.9 + nrows * (0.45 + 0.2 * tallest)),
                                 squeeze=False, sharex=True, layout="constrained")
        for ax, (key, (points, skipped)) in zip(axes.flat, drawn.items()):
            _draw_summary_panel(ax, points, models, chance.get(key))
            name = ", ".join(_readable(k, v) for k, v in zip(panel_keys, key))
            ax.set_title(name + (f" ({skipped} without a value left out)" if skipped else ""), fontsize=7)
        for ax in list(axes.flat)[len(drawn):]:
            ax.set_visible(False)
        if bounded:
            axes[0, 0].set_xlim(0.0, 1.0)
        for ax in axes[-1]:
            ax.set_xlabel(f"{metric} (mean and 95 % CI" + (", clipped to [0, 1])" if bounded else ")"))
        handles = [Line2D([], [], color=_model_colour(m, models), marker="o", ms=3.5, ls="-", lw=0.8,
                          label=f"{m}'s maps" if m != "plain_cnn" else "plain_cnn (post-hoc only)") for m in models]
        handles.append(Line2D([], [], color="#000000", marker="D", ms=3.5, ls="-", lw=0.8,
                              label="reference map (no model)"))
        if any(key in chance for key in drawn):
            handles.append(Line2D([], [], color="#444444", ls="--", lw=0.8,
                                  label="chance: the mask's pixel share (a random map's expected AP)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=6)
        fig.suptitle(title or f"{metric} by map ({resolution} protocol)", fontsize=8)
        notes = ["rows: attention maps per level; post-hoc methods (GradCAM per attention level, DeepLIFT, LRP, "
                 "Input x Gradient, Integrated Gradients) of each model; references",
                 "" if any(key in chance for key in drawn) else "chance level not recorded for these results",
                 *notes]
        return figures.save(fig, path, env, notes=notes)


#: The files :func:`write_outputs` writes into its folder (the figure as PNG and PDF): a
#: folder that holds one of them holds an earlier explanation (``explain`` refuses it
#: unless ``--overwrite``).
OUTPUT_FILES = ("explain.csv", "explain_summary.csv", "explain.md", "explain_examples.png", "explain_examples.pdf")


def _dropped_sentence(summary: list[dict]) -> str:
    """What :func:`write_outputs`' report says of values left out of its means (NaN)."""
    dropped = dropped_values(summary, GROUP_KEYS, METRIC_NAMES, "images")
    if not dropped:
        return "No mean left a NaN value out: every mean shown is over all n images (a mean over none is shown as –)."
    return ("Values that are not numbers (NaN) are left out of the means and intervals (the columns "
            "{metric}_n_used and {metric}_n_nan of explain_summary.csv count them): " + "; ".join(dropped) + ".")


def write_outputs(rows, examples, out_dir: str, env: dict | None = None, channels=((0, "channel 0"),),
                  notes=()) -> dict:
    """``explain.csv``, ``explain_summary.csv``, ``explain.md`` and the examples figure in
    ``out_dir``, each written atomically; returns their paths.  ``channels`` and ``notes``:
    the image channels the figure shows and what they show (:func:`plot_examples`)."""

    if not rows:
        raise ValueError("nothing was explained: no rows to write")
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "explain.csv"), "summary": os.path.join(out_dir, "explain_summary.csv"),
             "markdown": os.path.join(out_dir, "explain.md"), "figure": os.path.join(out_dir, "explain_examples.png")}
    atomic_csv(paths["csv"], EXPLAIN_COLUMNS, rows)
    summary = summarise(rows)
    atomic_csv(paths["summary"], list(summary[0]), summary)
    n_images = len({r["image"] for r in rows if r.get("mask", "lesion") == "lesion"})  # (not the decisive
    # masks' normal images: ca_rev135)
    n_decisive = len({r["image"] for r in rows if r.get("mask") == "decisive"})
    size = tuple(examples[0][5].shape) if examples else None
    tol = f"{pointing_tolerance_px(size):.1f} px at {size[0]}x{size[1]}" if size else "a tolerance"
    decisive = f" and {n_decisive} images scored against their decisive masks" if n_decisive else ""
    atomic_write_text(paths["markdown"],
                      f"Explanation metrics on {n_images} lesion images{decisive} (mean ± half-width of the 95 % "
                      f"confidence "
                      f"interval over images, Student t; level 'input' = input attribution; GradCAM level k = the "
                      f"block of attention level k). Resolution 'pixel': the pixel protocol, coarse maps upsampled as "
                      f"the 'upsampling' column says; 'HxW': the authors' pooled protocol at that attention grid "
                      f"(grid maps upsampled by nearest neighbour). pointing_tol: a hit within {tol} of the mask "
                      f"(15 px at 240x240, scaled with the image). {_dropped_sentence(summary)}\n\n"
                      + markdown_table(summary) + "\n")
    if examples:
        plot_examples(examples, paths["figure"], env, channels=channels, notes=notes)
    else:
        paths.pop("figure")
    return paths
