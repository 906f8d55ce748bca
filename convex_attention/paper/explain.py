"""``convex-attention explain``: attention maps and post-hoc baselines scored against masks.

On validation images that contain a lesion, for every trained model its attention maps at
every level, and on the ``softmax`` model the post-hoc baselines (GradCAM at each attention
level's resolution, DeepLIFT, LRP, Input×Gradient, Integrated Gradients).  Every map is
brought to the common form of :mod:`convex_attention.explain_metrics` and scored.

The baselines explain ``target``: ``"true"`` (default; the lesion class, 1, since only
lesion images are explained) or ``"predicted"`` (the model's argmax).

Outputs in ``out``: ``explain.csv`` (one row per image, model, method and level),
``explain_summary.csv`` and ``explain.md`` (mean ± standard error per model, method and
level) and ``explain_examples.png``/``.pdf`` (one row per example: image, mask, maps).
"""
from __future__ import annotations

import csv
import math
import os
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset

from .explain_metrics import METRIC_NAMES, score_map, to_common_form

__all__ = ["lesion_indices", "explain_models", "summarise", "write_outputs", "EXPLAIN_COLUMNS"]

EXPLAIN_COLUMNS = ("model", "method", "level", "image") + METRIC_NAMES


def lesion_indices(dataset: Dataset, n: int) -> list[int]:
    """The first ``n`` images with label 1 and a non-empty mask."""
    out = []
    for i in range(len(dataset)):
        _, label, mask = dataset[i]
        if int(label) == 1 and bool(mask.any()):
            out.append(i)
            if len(out) == n:
                break
    if not out:
        raise ValueError("no validation image with a lesion (label 1 and a non-empty mask) to explain")
    return out


def _maps_for(model, images, target: str, baselines: bool, levels: int) -> dict[tuple[str, int], torch.Tensor]:
    """``{(method, level): maps (B, ...)}`` for one batch; level -1 = input attribution.

    The baselines explain the lesion class (``target="true"``) or the model's prediction."""
    from baselines.attributions import BASELINES, gradcam

    model.eval()
    with torch.no_grad():
        out = model(images)
    if target == "true":
        targets = torch.ones(len(images), dtype=torch.long, device=images.device)
    else:
        targets = out.logits.argmax(1)
    maps = {("attention", k): p.detach() for k, p in enumerate(out.maps)}
    if baselines:
        for k in range(levels):
            maps[("gradcam", k)] = gradcam(model, images, targets, level=k)
        for name, fn in BASELINES.items():
            maps[(name, -1)] = fn(model, images.clone().requires_grad_(), targets)
    return maps


def explain_models(models: dict, dataset: Dataset, n_images: int = 64, baseline_model: str | None = "softmax",
                   target: str = "true", batch_size: int = 16, device="cpu", progress: bool = True):
    """Score every model's attention and the baselines on lesion images.

    Returns ``(rows, examples)``: ``rows`` as in ``explain.csv``; ``examples`` the first few
    images with their masks and common-form maps (for the figure).
    """
    from tqdm.auto import tqdm

    if target not in ("true", "predicted"):
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    indices = lesion_indices(dataset, n_images)
    rows, examples = [], []
    for start in tqdm(range(0, len(indices), batch_size), desc="explain", disable=not progress):
        batch = [dataset[i] for i in indices[start:start + batch_size]]
        images = torch.stack([b[0] for b in batch]).to(device)
        masks = torch.stack([b[2] for b in batch])
        size = tuple(masks.shape[1:])
        for name, model in models.items():
            model.to(device)
            maps = _maps_for(model, images, target, name == baseline_model,
                             len(model.config.attention_blocks))
            for (method, level), m in maps.items():
                for j in range(len(batch)):
                    common = to_common_form(m[j].cpu(), size)
                    scores = score_map(common, masks[j])
                    rows.append({"model": name, "method": method, "level": level, "image": indices[start + j],
                                 **scores})
                    if start + j < 4:
                        examples.append((indices[start + j], name, method, level, images[j, 0].cpu(), masks[j],
                                         common))
    return rows, examples


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard error of every metric per (model, method, level)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["method"], int(r["level"]))].append(r)
    out = []
    for (model, method, level), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        entry = {"model": model, "method": method, "level": level, "n": len(rs)}
        for metric in METRIC_NAMES:
            values = np.array([float(r[metric]) for r in rs if not math.isnan(float(r[metric]))])
            entry[f"{metric}_mean"] = float(values.mean()) if values.size else math.nan
            entry[f"{metric}_se"] = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
        out.append(entry)
    return out


def markdown_table(summary: list[dict]) -> str:
    head = "| model | method | level | n | " + " | ".join(METRIC_NAMES) + " |"
    sep = "|" + "---|" * (4 + len(METRIC_NAMES))
    lines = [head, sep]
    for s in summary:
        level = "input" if s["level"] == -1 else str(s["level"])
        cells = [f"{s[f'{m}_mean']:.3f} ± {s[f'{m}_se']:.3f}" for m in METRIC_NAMES]
        lines.append(f"| {s['model']} | {s['method']} | {level} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(rows, examples, out_dir: str, env: dict | None = None) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "explain.csv"), "summary": os.path.join(out_dir, "explain_summary.csv"),
             "markdown": os.path.join(out_dir, "explain.md"), "figure": os.path.join(out_dir, "explain_examples.png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(EXPLAIN_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    with open(paths["summary"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    with open(paths["markdown"], "w") as f:
        f.write("Explanation metrics on lesion images (mean ± standard error over images; level 'input' = "
                "input attribution; GradCAM level k = the block of attention level k).\n\n")
        f.write(markdown_table(summary) + "\n")
    from ..bench.plots import plot_explanations

    plot_explanations(examples, paths["figure"], env)
    return paths
