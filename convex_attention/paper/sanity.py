"""Checks that an explanation depends on the model, and that the model uses its maps.

* **Map ablation** (:func:`map_ablation`): at test time the attention maps the classifier
  pools with (every level at once, and each level alone) are replaced by uniform maps
  (every cell ``1/n_k``) or by the same maps with their cells spatially shuffled (an
  independent random permutation of the cells of every level and image, seeded); the
  change in ROC AUC (threshold-free: it says whether the maps drive the *ranking*) and in
  balanced accuracy (at the decision threshold chosen on validation) says whether the
  model uses its maps.  A map the classifier ignores changes nothing.  The benchmark's
  check (c′) reads the AUC drop of the reference ``softmax`` model with every map shuffled.
* **Model-parameter randomisation**, cascading (Adebayo et al., "Sanity checks for
  saliency maps", NeurIPS 2018; :func:`randomisation_check`): the model's layers are
  re-initialised one stage at a time from the top (the classifier, the attention, then
  the blocks from the deepest; BatchNorm statistics included), every explanation is
  recomputed on the same images after each stage, and the Spearman rank correlation with
  the trained model's explanation is reported per image, method and stage, on absolute
  and on signed maps.  A map that hardly changes when the model is destroyed does not
  explain the model.  Maps are compared at their own resolution (input attributions
  summed over channels).
* **Map statistics** (:func:`map_statistics`): per level, ``N · max p`` (1 for a uniform
  map, ``N`` for a one-hot map), the entropy ``H(p)`` in nats and as a share of
  ``log N``, and the per-image score range ``max θ − min θ``.

Balanced accuracy at a given threshold and the test-set classification metrics are here
too (:func:`classification`), because the ablation is measured with them.
"""
from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..nn import Attended
from .data import labels_only
from .explain import explanations
from .models import NonFiniteOutput, non_finite_parts

__all__ = ["predict", "balanced_accuracy_at", "classification", "map_statistics", "uniform_maps", "shuffled_maps",
           "maps_replaced", "map_ablation", "randomised_copy", "rank_correlation", "native_form",
           "randomisation_check", "ABLATIONS"]

ABLATIONS = ("uniform", "shuffled")


@torch.no_grad()
def predict(model, dataset: Dataset, batch_size: int = 64, device="cpu", keep_maps: bool = False) -> dict:
    """The model on every image of ``dataset``, in evaluation mode: ``logits`` ``(N, K)``
    float64 and ``labels`` ``(N,)`` on the CPU; with ``keep_maps`` also ``maps`` and
    ``scores``, ``L`` tensors ``(N, h_k, w_k)`` each, and ``violation`` ``(N,)``.
    :class:`~convex_attention.paper.models.NonFiniteOutput` when logits or maps hold NaN
    or Inf."""
    model.eval()
    model.to(device)
    loader = DataLoader(labels_only(dataset), batch_size=batch_size, shuffle=False)
    logits, labels, maps, scores, violation = [], [], [], [], []
    for images, y in loader:
        out = model(images.to(device))
        bad = non_finite_parts(out)
        if bad:  # no metric of them is a number worth reporting
            raise NonFiniteOutput(f"the model's {', '.join(bad)} hold NaN or Inf: its predictions are not scored")
        logits.append(out.logits.detach().double().cpu())
        labels.append(torch.as_tensor(y).cpu())
        if keep_maps:
            maps.append([m.detach().double().cpu() for m in out.maps])
            scores.append([s.detach().double().cpu() for s in out.scores])
            violation.append(out.solution.violation.detach().double().cpu())
    result: dict[str, Tensor | list[Tensor]] = {"logits": torch.cat(logits), "labels": torch.cat(labels)}
    if keep_maps:
        result["maps"] = [torch.cat(level) for level in zip(*maps)]
        result["scores"] = [torch.cat(level) for level in zip(*scores)] if scores and scores[0] else []
        result["violation"] = torch.cat(violation)
    return result


def balanced_accuracy_at(p1, labels, threshold: float) -> float:
    """Balanced accuracy of predicting class 1 where ``p1 >= threshold`` (``p1``: ``(N,)``
    probabilities of class 1, or log-odds with a threshold on them; ``labels`` ``(N,)`` in
    {0, 1}): the mean of the recalls of the two classes; NaN for a NaN threshold, no labels,
    a class absent (the mean of the recalls present would score one class's recall as
    balanced), or a probability that is no number (a failed model: ``p1 >= threshold`` would
    predict class 0 for it)."""
    p1, labels = np.asarray(p1, dtype=float), np.asarray(labels).astype(int)
    if threshold is None or not math.isfinite(threshold) or np.isnan(p1).any():
        return math.nan
    return _balanced_accuracy((p1 >= threshold).astype(int), labels)


def _balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """The mean of the two classes' recalls of the predictions ``pred``; NaN where a class is
    absent from ``labels`` (:func:`balanced_accuracy_at`)."""
    if not all((labels == c).any() for c in (0, 1)):
        return math.nan
    return float(np.mean([float((pred[labels == c] == c).mean()) for c in (0, 1)]))


def classification(logits: Tensor, labels: Tensor, threshold: float, threshold_log_odds: float | None = None) -> dict:
    """Test metrics of two-class ``logits`` ``(N, 2)``: ``auc`` (ROC AUC of the log-odds, the
    ranking of p(class 1) without the ties its rounding to 1.0 makes; NaN with one class
    present), ``bacc`` (balanced accuracy at the threshold chosen on
    validation: ``threshold_log_odds`` on the log-odds where given and finite, else
    ``threshold`` on p(class 1), as older checkpoints store it, which rounds to 1.0 above
    log-odds ~37; NaN with one class present), ``bacc_argmax`` (the same at the argmax) and
    ``acc`` (argmax)."""
    from sklearn.metrics import roc_auc_score

    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"classification needs two-class logits (N, 2), got {tuple(logits.shape)}")
    probs = torch.softmax(logits.double(), 1).numpy()
    y = labels.numpy().astype(int)
    pred = probs.argmax(1)
    # ranked by the log-odds, as train.classification_metrics: p(class 1) rounds to exactly 1.0 for margins
    # above ~37, and the ties there would lose the ranking
    log_odds = (logits[:, 1].double() - logits[:, 0].double()).numpy()
    auc = float(roc_auc_score(y, log_odds)) if len(np.unique(y)) == 2 else math.nan
    if threshold_log_odds is not None and math.isfinite(threshold_log_odds):
        bacc = balanced_accuracy_at(log_odds, y, threshold_log_odds)
    else:
        bacc = balanced_accuracy_at(probs[:, 1], y, threshold)
    return {"auc": auc, "bacc": bacc,
            "bacc_argmax": _balanced_accuracy(pred, y),
            "acc": float((pred == y).mean())}


def map_statistics(maps, scores=None) -> list[dict]:
    """Per level ``k``, means over images of: ``n_max_p`` = ``N_k · max p``, ``entropy``
    ``H(p)`` in nats, ``entropy_ratio`` = ``H(p) / log N_k`` (1 for a uniform map), and
    ``score_range`` = ``max θ − min θ`` (NaN without ``scores``).  ``maps[k]``, ``scores[k]``:
    ``(N, h_k, w_k)``."""
    out = []
    for k, p in enumerate(maps):
        flat = p.detach().double().flatten(1)
        n = flat.shape[1]
        entropy = -(flat * torch.log(flat.clamp(min=1e-300))).sum(1)
        entry = {"level": k, "cells": n, "n_max_p": float((n * flat.max(1).values).mean()),
                 "entropy": float(entropy.mean()), "entropy_ratio": float((entropy / math.log(n)).mean()),
                 "score_range": math.nan}
        if scores:
            s = scores[k].detach().double().flatten(1)
            entry["score_range"] = float((s.max(1).values - s.min(1).values).mean())
        out.append(entry)
    return out


def uniform_maps(maps, levels=None) -> list[Tensor]:
    """Every map (or the maps of ``levels`` only) replaced by the uniform distribution over
    its cells (same shapes)."""
    return [torch.full_like(p, 1.0 / p[0].numel()) if levels is None or k in levels else p
            for k, p in enumerate(maps)]


def shuffled_maps(maps, generator: torch.Generator, levels=None) -> list[Tensor]:
    """Every map (or the maps of ``levels`` only) with its cells permuted at random,
    independently per level and image: the same values (so the same sharpness and total
    mass), at random places."""
    out = []
    for k, p in enumerate(maps):
        if levels is not None and k not in levels:
            out.append(p)
            continue
        flat = p.flatten(1)
        order = torch.argsort(torch.rand(flat.shape, generator=generator), dim=1).to(flat.device)
        out.append(torch.gather(flat, 1, order).view_as(p))
    return out


@contextlib.contextmanager
def maps_replaced(model, transform):
    """Within the block, ``model``'s attention layer hands the classifier ``transform(maps)``
    instead of its maps (the model's own forward pass runs otherwise unchanged)."""
    layer = model.attention
    original = layer.attend

    def attend(scores, temperature=None):
        attended = original(scores, temperature)
        return Attended(list(transform(list(attended.maps))), attended.solution, attended.aux_loss)

    layer.attend = attend
    try:
        yield model
    finally:
        del layer.attend


def map_ablation(model, dataset: Dataset, threshold: float, batch_size: int = 64, device="cpu",
                 seed: int = 0, per_level: bool = True, threshold_log_odds: float | None = None) -> dict:
    """Balanced accuracy (at ``threshold``) and AUC of ``model`` on ``dataset`` with its own
    maps, with uniform maps and with shuffled maps, and the changes (``delta_bacc_uniform``
    = uniform − own, ``delta_auc_shuffled``, etc.: every level replaced at once).  With
    ``per_level``, also each level alone (``delta_auc_shuffled_L0``, ...).  Every shuffle
    starts from ``seed``, so the all-levels rows are the same with or without the others."""
    if not getattr(model, "has_attention", True):
        raise ValueError("the map ablation needs a model with attention maps")
    own = predict(model, dataset, batch_size, device)
    result = {f"{k}": v for k, v in classification(own["logits"], own["labels"], threshold,
                                                    threshold_log_odds).items()}
    levels = len(model.config.attention_blocks)
    scopes = [("", None)] + ([(f"_L{k}", (k,)) for k in range(levels)] if per_level else [])
    for name in ABLATIONS:
        for suffix, chosen in scopes:
            generator = torch.Generator().manual_seed(seed)

            def transform(maps, name=name, chosen=chosen, generator=generator):
                return uniform_maps(maps, chosen) if name == "uniform" else shuffled_maps(maps, generator, chosen)

            with maps_replaced(model, transform):
                changed = predict(model, dataset, batch_size, device)
            metrics = classification(changed["logits"], changed["labels"], threshold, threshold_log_odds)
            result[f"bacc_{name}{suffix}"], result[f"auc_{name}{suffix}"] = metrics["bacc"], metrics["auc"]
            result[f"delta_bacc_{name}{suffix}"] = metrics["bacc"] - result["bacc"]
            result[f"delta_auc_{name}{suffix}"] = metrics["auc"] - result["auc"]
    return result


def randomised_copy(model, seed: int = 0):
    """A freshly initialised model of the same class and configuration (every weight and
    BatchNorm statistic re-initialised; the global RNG state is left as it was), in
    evaluation mode, on the model's device."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the CPU's state, the one the fresh model draws from
        # the CPU's generator only: torch.manual_seed also reseeds every GPU's, which fork_rng(devices=[])
        # does not put back (ca_rev252's note); the weights drawn are the same
        torch.random.default_generator.manual_seed(seed)
        fresh = type(model)(config=model.config)
    return fresh.to(device).eval()


def cascade_stages(model) -> list[tuple[str, list[str]]]:
    """The model's layers in the order the cascading randomisation re-initialises them, from
    the top (Adebayo et al., 2018): ``[(stage, parameter-name prefixes)]``: the classifier,
    then the attention (score heads, learned duals, learned temperature), then the encoder's
    blocks from the deepest to the first."""
    stages = [("classifier", ["classifier."])]
    if getattr(model, "has_attention", True):
        stages.append(("attention", ["heads.", "attention.", "log_temperature"]))
    for k in reversed(range(len(model.blocks))):
        stages.append((f"block{k + 1}", [f"blocks.{k}."]))
    return stages


def cascading_copies(model, seed: int = 0):
    """Yield ``(stage, copy)``: a copy of ``model`` with every stage of
    :func:`cascade_stages` up to this one re-initialised (each re-initialised layer's
    values are those of :func:`randomised_copy` ``(model, seed)``)."""
    fresh = randomised_copy(model, seed).state_dict()
    current = copy.deepcopy(model).eval()
    state = current.state_dict()
    for stage, prefixes in cascade_stages(model):
        for key in state:
            if key.startswith(tuple(prefixes)):
                state[key] = fresh[key].clone()
        current.load_state_dict(state)
        yield stage, current


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two maps of one shape (ties share their mean rank);
    NaN when either is constant: a constant map ranks no pixels, so it neither agrees nor
    disagrees with the other, and neither 0 nor 1 would be true of it.  NaN too when either
    holds a value that is no number (NaN or ±Inf: no ranking of its pixels is the map's; the
    clamp below turned NaN into -1).  The experiment leaves such NaN out of its means and
    counts them (``_n_nan``, ``_images_nan``)."""
    from scipy.stats import rankdata

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:  # (3, 4) against (4, 3) too: the pixels would not correspond
        raise ValueError(f"maps of different shapes: {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    rx, ry = rankdata(x.ravel()), rankdata(y.ravel())
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return math.nan
    r = float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))
    return min(1.0, max(-1.0, r))  # rounding can step past ±1 (1.0000000000000002 for one ranking)


def native_form(m: Tensor, signed: bool = False) -> Tensor:
    """A map at its own resolution: an input attribution ``(C, H, W)`` summed over channels
    in absolute value (``signed``: with its signs), a grid map ``(h, w)`` in absolute value
    (``signed``: as it is; attention maps are non-negative, so both agree there)."""
    m = m.detach().double().cpu()
    if m.dim() == 3:
        return m.sum(0) if signed else m.abs().sum(0)
    return m if signed else m.abs()


def randomisation_check(model, images: Tensor, target: str = "true", seed: int = 0, posthoc: bool = True,
                        original: dict | None = None, labels: Tensor | None = None) -> list[dict]:
    """The cascading model-parameter randomisation check (Adebayo et al., 2018).

    The model's layers are re-initialised in turn from the top (:func:`cascade_stages`:
    the classifier, the attention, then the blocks from the deepest), each stage keeping
    the ones before re-initialised; after every stage each explanation of ``images``
    ``(B, C, H, W)`` (:func:`convex_attention.paper.explain.explanations`; ``original``:
    the trained model's, if already computed; ``labels`` ``(B,)``: the images' labels, which
    ``target="true"`` needs for the post-hoc methods) is compared with the trained model's by
    Spearman's rank correlation, on absolute and on signed maps.  Rows ``{stage,
    stage_index, method, level, position, spearman_abs, spearman_signed}`` (near 0: the
    explanation depends on those weights; near 1: it does not)."""
    if original is None:
        original = explanations(model, images, target, posthoc, labels)
    rows = []
    for index, (stage, randomised_model) in enumerate(cascading_copies(model, seed)):
        randomised = explanations(randomised_model, images, target, posthoc, labels)
        for key, m in original.items():
            r = randomised[key]
            for j in range(len(images)):
                rows.append({"stage": stage, "stage_index": index, "method": key[0], "level": key[1],
                             "position": j, "spearman_abs": rank_correlation(native_form(m[j]), native_form(r[j])),
                             "spearman_signed": rank_correlation(native_form(m[j], True),
                                                                 native_form(r[j], True))})
    return rows
