"""The paper's experiment: ``softmax``, ``learned_dual`` and ``exact`` attention CNNs trained
on the synthetic weakly-annotated lesion dataset with several seeds, then explained.

Per method it reports validation balanced accuracy, every explanation metric of its
attention (and, for reference, of the post-hoc baselines on the ``softmax`` model), the
attention ``violation`` on held-out images and the training time per epoch, as mean ±
standard error over seeds.  Outputs: ``experiment.csv`` (one row per method and seed),
``experiment_summary.csv``, ``experiment.md`` and the per-seed ``explain*`` files.

The data are the same for every run (``data_seed``); the seeds vary the initialisation,
the batch order and the augmentation.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .explain_metrics import METRIC_NAMES

__all__ = ["ExperimentConfig", "QUICK", "FULL", "run_experiment"]


@dataclass
class ExperimentConfig:
    methods: tuple = ("softmax", "learned_dual", "exact")
    seeds: tuple = (0, 1, 2)
    image_size: int = 128
    width: int = 16
    n_train: int = 2000
    n_val: int = 500
    difficulty: float = 0.5
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    alpha: float = 10.0
    data_seed: int = 0
    n_explain: int = 64
    target: str = "true"
    device: str = "auto"
    extra: dict = field(default_factory=dict)


QUICK = ExperimentConfig(image_size=64, width=8, n_train=768, n_val=256, difficulty=0.3, epochs=6, lr=3e-3,
                         n_explain=24)
FULL = ExperimentConfig()

SUMMARY_METRICS = ("val_balanced_acc", "val_violation", "epoch_time_s") + tuple(
    f"attention_{m}" for m in METRIC_NAMES)


def _mean_se(values) -> tuple[float, float]:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_experiment(config: ExperimentConfig, out: str, progress: bool = True, log=print) -> dict:
    """Train every (method, seed), explain each seed's models, and write the report."""
    from .data import InMemory, build_datasets
    from .explain import explain_models, write_outputs
    from .models import load_model
    from .train import TrainConfig, train

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "experiment_config.json"), "w") as f:
        json.dump(asdict(config), f, indent=1)
    train_set, val_set = build_datasets("synthetic", image_size=config.image_size, n_train=config.n_train,
                                        n_val=config.n_val, difficulty=config.difficulty, seed=config.data_seed)
    train_set, val_set = InMemory(train_set), InMemory(val_set)
    runs, explain_rows = [], []
    for seed in config.seeds:
        models = {}
        for method in config.methods:
            run_dir = os.path.join(out, f"{method}-seed{seed}")
            tc = TrainConfig(out=run_dir, method=method, image_size=config.image_size, width=config.width,
                             n_train=config.n_train, n_val=config.n_val, difficulty=config.difficulty,
                             epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, alpha=config.alpha,
                             seed=seed, device=config.device, progress=progress)
            tc = replace(tc, **{k: v for k, v in config.extra.items() if hasattr(tc, k)})
            start = time.perf_counter()
            result = train(tc, datasets=(train_set, val_set))
            metrics = result["metrics"]
            best = max(metrics, key=lambda m: m["val_balanced_acc"])
            model, _ = load_model(result["best"])
            models[method] = model
            runs.append({"method": method, "seed": seed, "best_epoch": best["epoch"],
                         "val_balanced_acc": best["val_balanced_acc"], "val_violation": best["val_violation"],
                         "epoch_time_s": float(np.mean([m["epoch_time_s"] for m in metrics])),
                         "train_time_s": time.perf_counter() - start})
            log(f"[experiment] {method} seed {seed}: val balanced acc {best['val_balanced_acc']:.3f}, "
                f"violation {best['val_violation']:.2e}")
        rows, examples = explain_models(models, val_set, n_images=config.n_explain,
                                        baseline_model="softmax" if "softmax" in models else None,
                                        target=config.target, progress=progress, device=_device(config.device))
        write_outputs(rows, examples, os.path.join(out, f"explain-seed{seed}"))
        for r in rows:
            r["seed"] = seed
        explain_rows.extend(rows)
        for run in runs:
            if run["seed"] != seed:
                continue
            for metric in METRIC_NAMES:
                # the attention map of the finest level (the one at image resolution / 4)
                vals = [float(r[metric]) for r in rows if r["model"] == run["method"] and r["method"] == "attention"
                        and int(r["level"]) == 0]
                run[f"attention_{metric}"] = float(np.nanmean(vals)) if vals else math.nan
    return _report(config, runs, explain_rows, out)


def _report(config, runs, explain_rows, out) -> dict:
    from .explain import summarise

    with open(os.path.join(out, "experiment.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    summary = []
    for method in config.methods:
        rs = [r for r in runs if r["method"] == method]
        entry = {"method": method, "seeds": len(rs)}
        for metric in SUMMARY_METRICS:
            entry[f"{metric}_mean"], entry[f"{metric}_se"] = _mean_se([r[metric] for r in rs])
        summary.append(entry)
    with open(os.path.join(out, "experiment_summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    # explanation metrics of every map kind, pooled over seeds (per-seed means, then mean ± se)
    per_seed = {}
    for seed in config.seeds:
        for s in summarise([r for r in explain_rows if r["seed"] == seed]):
            per_seed.setdefault((s["model"], s["method"], s["level"]), []).append(s)
    lines = [f"# Experiment ({len(config.seeds)} seeds: {', '.join(map(str, config.seeds))})", "",
             f"Synthetic lesions, {config.image_size}x{config.image_size}, difficulty {config.difficulty}, "
             f"{config.n_train} training / {config.n_val} validation images, width {config.width}, "
             f"{config.epochs} epochs. Mean ± standard error over seeds.", "",
             "## Per method", "",
             "| method | val balanced acc | violation (held-out) | time/epoch (s) | " +
             " | ".join(f"attention {m} (level 0)" for m in METRIC_NAMES) + " |",
             "|" + "---|" * (4 + len(METRIC_NAMES))]
    for s in summary:
        cells = [f"{s[f'{m}_mean']:.3f} ± {s[f'{m}_se']:.3f}" for m in ("val_balanced_acc",)]
        cells.append(f"{s['val_violation_mean']:.2e} ± {s['val_violation_se']:.1e}")
        cells.append(f"{s['epoch_time_s_mean']:.1f} ± {s['epoch_time_s_se']:.1f}")
        cells += [f"{s[f'attention_{m}_mean']:.3f} ± {s[f'attention_{m}_se']:.3f}" for m in METRIC_NAMES]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    lines += ["", "## Every explanation (per-seed means, then mean ± se over seeds)", "",
              "| model | map | level | " + " | ".join(METRIC_NAMES) + " |", "|" + "---|" * (3 + len(METRIC_NAMES))]
    for (model, method, level), ss in sorted(per_seed.items()):
        cells = []
        for m in METRIC_NAMES:
            mean, se = _mean_se([x[f"{m}_mean"] for x in ss])
            cells.append(f"{mean:.3f} ± {se:.3f}")
        lines.append(f"| {model} | {method} | {'input' if level == -1 else level} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    with open(os.path.join(out, "experiment.md"), "w") as f:
        f.write(report)
    return {"runs": runs, "summary": summary, "report": report}
