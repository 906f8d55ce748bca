"""Figures for papers: titles, labelled axes with units, legends, and the environment line.

Every function writes a PNG (300 dpi) and a PDF next to it and returns the PNG path.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHOD_COLORS = {"softmax": "#7f7f7f", "exact": "#1f77b4", "dual": "#2ca02c", "learned_dual": "#d62728",
                 "learned_dual+loss": "#d62728", "cvxpylayers": "#9467bd"}
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "figure.dpi": 100, "savefig.bbox": "tight"}


def env_line(env: dict | None) -> str:
    if not env:
        return ""
    parts = [f"torch {env.get('torch', '?')}", env.get("processor", ""),
             f"{env.get('torch_threads', '?')} threads", env.get("gpu", "") or ""]
    return " · ".join(p for p in parts if p)


def save(fig, path: str, env: dict | None = None) -> str:
    if env:
        # above the title, where no axis label or legend can sit (bbox "tight" keeps it)
        fig.text(0.01, 1.0, env_line(env), fontsize=6, color="#555555", ha="left", va="bottom")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=300)
    fig.savefig(os.path.splitext(path)[0] + ".pdf")
    plt.close(fig)
    return path


def plot_core_benchmark(rows, ratios, path: str, env: dict | None = None) -> str:
    """Bar chart of forward and backward time per method (the core benchmark)."""
    with plt.rc_context(STYLE):
        main = [r for r in rows if r["shapes"] == rows[0]["shapes"]]
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        names = [r["method"] for r in main]
        fwd = [r["fwd_ms"] for r in main]
        bwd = [r["bwd_ms"] for r in main]
        x = range(len(names))
        ax.bar(x, fwd, color=[METHOD_COLORS.get(n, "#333333") for n in names], label="forward")
        ax.bar(x, bwd, bottom=fwd, color=[METHOD_COLORS.get(n, "#333333") for n in names], alpha=0.45,
               label="backward")
        ax.set_xticks(list(x), names)
        ax.set_ylabel("median time per batch (ms)")
        ax.set_title(f"Forward + backward, {rows[0]['shapes']}, B={rows[0]['batch']}, {rows[0]['dtype']}")
        ax.legend(frameon=False)
        text = "\n".join(f"{k}: {v:.3g}" for k, v in ratios.items())
        ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=8)
        return save(fig, path, env)


# ====================================================================== results-folder figures

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402

DUAL_KIND_LABEL = {"zero": "λ=0", "fitted": "λ fitted, held-out", "per_sample": "λ per-sample opt."}


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _label(row) -> str:
    if row["method"] == "learned_dual" and row.get("dual_kind"):
        return f"learned_dual ({DUAL_KIND_LABEL.get(row['dual_kind'], row['dual_kind'])})"
    return row["method"]


def _load_env(folder: str) -> dict | None:
    path = os.path.join(folder, "bench.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("environment")
    return None


def plot_time_vs_size(rows, path, env=None) -> str:
    """log-log time per sample vs problem size (total cells), forward and backward, one
    line per method and number of levels, slope annotated."""
    ok = [r for r in rows if r["status"] == "ok" and not math.isnan(_num(r["fwd_ms"]))]
    methods = sorted({r["method"] for r in ok}, key=lambda m: list(METHOD_COLORS).index(m))
    level_counts = sorted({int(r["levels"]) for r in ok})
    styles = ["-", "--", ":", "-."]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, col, title in zip(axes, ("fwd_ms", "bwd_ms"), ("forward", "backward")):
            for method in methods:
                for li, levels in enumerate(level_counts):
                    pts = {}
                    for r in ok:
                        if r["method"] == method and int(r["levels"]) == levels:
                            # per-sample time; the other sweep axes are pooled by their median
                            pts.setdefault(int(r["n_cells"]), []).append(_num(r[col]) / _num(r["timed_batch"]))
                    x = np.array(sorted(pts))
                    y = np.array([np.median(pts[v]) for v in x])
                    keep = y > 0
                    x, y = x[keep], y[keep]
                    if len(x) == 0:
                        continue
                    ax.loglog(x, y, marker="o", ls=styles[li % len(styles)], color=METHOD_COLORS.get(method),
                              ms=3, lw=1.2)
                    if len(x) >= 2:
                        slope = np.polyfit(np.log(x), np.log(y), 1)[0]
                        ax.annotate(f"{slope:.2f}", (x[-1], y[-1]), textcoords="offset points", xytext=(3, 0),
                                    fontsize=6, color=METHOD_COLORS.get(method), va="center")
            ax.set_title(f"{title} pass (annotation: log-log slope)")
            ax.set_xlabel("problem size (total cells, all levels)")
            ax.grid(True, which="both", alpha=0.25)
        axes[0].set_ylabel("median time per sample (ms)")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=METHOD_COLORS.get(m), marker="o", ms=3, label=m) for m in methods]
        handles += [Line2D([], [], color="#444444", ls=styles[i % len(styles)], label=f"{L} levels")
                    for i, L in enumerate(level_counts)]
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
                   frameon=False)
        fig.suptitle("Time per sample vs problem size (log-log)")
        return save(fig, path, env)


def plot_violation(rows, path, env=None) -> str:
    """Consistency violation per method (strip + box plot, log scale)."""
    ok = [r for r in rows if r["status"] == "ok"]
    floor = 1e-17
    groups: dict[str, list[float]] = {}
    for r in ok:
        groups.setdefault(_label(r), []).append(max(_num(r["violation_mean"]), floor))
    order = [g for g in ["softmax"] + [f"learned_dual ({v})" for v in DUAL_KIND_LABEL.values()]
             + ["dual", "exact", "cvxpylayers"] if g in groups]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        data = [groups[g] for g in order]
        ax.boxplot(data, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6,
                       color=METHOD_COLORS.get(order[i - 1].split(" ")[0], "#333333"))
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(order) + 1), [o.replace(" (", "\n(").replace(", ", ",\n") for o in order],
                      fontsize=7)
        ax.set_ylabel("violation  max_k ‖P_k p_k − p_{k+1}‖₁\n(batch mean; floor 1e-17)")
        ax.set_title("Consistency violation per method (one point per sweep cell)")
        ax.grid(True, axis="y", which="both", alpha=0.25)
        return save(fig, path, env)


def plot_convergence(conv_rows, path, env=None) -> str:
    """The dual solver: violation and dual gap vs iteration, one line per cell."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"wspace": 0.35})
        cells = sorted({r["cell"] for r in conv_rows}, key=int)
        level_counts = sorted({int(r["levels"]) for r in conv_rows})
        colors = {L: plt.get_cmap("tab10")(i) for i, L in enumerate(level_counts)}
        labelled = set()
        for cell in cells:
            rs = sorted((r for r in conv_rows if r["cell"] == cell), key=lambda r: int(r["iteration"]))
            it = [int(r["iteration"]) for r in rs]
            L = int(rs[0]["levels"])
            label = f"{L} levels" if L not in labelled else None
            labelled.add(L)
            axes[0].semilogy(it, [max(_num(r["violation_max"]), 1e-17) for r in rs], color=colors[L], label=label,
                             lw=1, alpha=0.8)
            axes[1].semilogy(it, [max(_num(r["dual_gap_max"]), 1e-17) for r in rs], color=colors[L], lw=1, alpha=0.8)
        axes[0].legend(frameon=False)
        axes[0].set_ylabel("violation (max over batch)")
        axes[1].set_ylabel("dual gap g(λ) − f* (max over batch)")
        for ax in axes:
            ax.set_xlabel("sweep (one exact block step per constraint)")
            ax.grid(True, which="both", alpha=0.25)
        fig.suptitle("Per-sample dual solver (block-coordinate, exact block steps): convergence")
        return save(fig, path, env)


def plot_speedup(rows, path, env=None) -> str:
    """Per-sample speed-up of exact over cvxpylayers vs problem size."""
    ok = [r for r in rows if r["status"] == "ok"]
    cvx = {}
    exact = {}
    for r in ok:
        key = (r["dims"], r["size"], r["levels"], r["temperature"], r["dtype"], r["generator"])
        if r["method"] == "cvxpylayers":
            cvx[key] = _num(r["per_sample_ms"])
        elif r["method"] == "exact":
            exact.setdefault(key, []).append((_num(r["per_sample_ms"]), int(r["n_cells"])))
    pts = []
    for key, t_cvx in cvx.items():
        if key in exact:
            t_ex, n = min(exact[key])
            pts.append((n, t_cvx / t_ex, key[2]))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for levels in sorted({p[2] for p in pts}):
            sel = sorted((p for p in pts if p[2] == levels))
            ax.loglog([p[0] for p in sel], [p[1] for p in sel], "o-", label=f"{levels} levels", ms=4)
        ax.axhline(1e4, color="#999999", ls="--", lw=0.8)
        ax.text(ax.get_xlim()[0] if pts else 1, 1e4, " target 10⁴×", va="bottom", fontsize=7, color="#666666")
        ax.set_xlabel("problem size (total cells, all levels)")
        ax.set_ylabel("speed-up per sample (×)\ncvxpylayers time / exact time")
        ax.set_title("exact vs cvxpylayers, forward + backward")
        ax.grid(True, which="both", alpha=0.25)
        if pts:
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, "no cell with both methods measured", transform=ax.transAxes, ha="center")
        return save(fig, path, env)


def plot_attention_maps(example_path: str, path: str, env=None) -> str:
    """The levels of one instance under softmax, learned_dual, dual and exact, with each
    level's pooled-vs-coarse difference map."""
    import torch

    from ..hierarchy import Hierarchy
    from ..solve import solve

    data = np.load(example_path)
    L = int(data["levels"])
    temps = [float(t) for t in data["temperature"]]
    scores = [torch.from_numpy(data[f"scores{k}"]).unsqueeze(0) for k in range(L)]
    duals = [torch.from_numpy(data[f"fitted_dual{k}"]).unsqueeze(0) for k in range(L - 1)]
    h = Hierarchy.grid([tuple(s.shape[1:]) for s in scores])
    sols = {"softmax": solve(scores, h, "softmax", temperature=temps),
            "learned_dual (fitted λ)": solve(scores, h, "learned_dual", temperature=temps, duals=duals),
            "dual": solve(scores, h, "dual", temperature=temps),
            "exact": solve(scores, h, "exact", temperature=temps)}
    ncols = L + (L - 1)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(sols), ncols, figsize=(2.1 * ncols, 2.1 * len(sols)), squeeze=False)
        diff_max = max(float((h.aggregate(s.probs[k], k) - s.probs[k + 1]).abs().max())
                       for s in sols.values() for k in range(L - 1)) or 1e-12
        for i, (name, sol) in enumerate(sols.items()):
            for k in range(L):
                ax = axes[i, k]
                im = ax.imshow(sol.probs[k][0].numpy(), cmap="magma")
                ax.set_title(f"level {k} ({'x'.join(map(str, h.shapes[k]))})" if i == 0 else "", fontsize=8)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            for k in range(L - 1):
                ax = axes[i, L + k]
                diff = (h.aggregate(sol.probs[k], k) - sol.probs[k + 1])[0].numpy()
                im = ax.imshow(diff, cmap="RdBu_r", vmin=-diff_max, vmax=diff_max)
                ax.set_title(f"P_{k} p_{k} − p_{k + 1}" if i == 0 else "", fontsize=8)
                ax.text(0.02, 0.02, f"‖·‖₁={np.abs(diff).sum():.1e}", transform=ax.transAxes, fontsize=6,
                        color="black", backgroundcolor="white")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            axes[i, 0].set_ylabel(name, fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Attention maps of one lesion-like instance, and each level's pooled-vs-coarse difference")
        return save(fig, path, env)


def plot_results(folder: str, out: str | None = None) -> list[str]:
    """Every figure the results folder has data for; returns the PNG paths."""
    out = out or os.path.join(folder, "figures")
    env = _load_env(folder)
    written = []
    bench = os.path.join(folder, "bench.csv")
    if os.path.exists(bench):
        rows = read_rows(bench)
        written.append(plot_time_vs_size(rows, os.path.join(out, "time_vs_size.png"), env))
        written.append(plot_violation(rows, os.path.join(out, "violation.png"), env))
        written.append(plot_speedup(rows, os.path.join(out, "speedup_exact_vs_cvxpylayers.png"), env))
    conv = os.path.join(folder, "convergence.csv")
    if os.path.exists(conv):
        written.append(plot_convergence(read_rows(conv), os.path.join(out, "dual_convergence.png"), env))
    example = os.path.join(folder, "example.npz")
    if os.path.exists(example):
        written.append(plot_attention_maps(example, os.path.join(out, "attention_maps.png"), env))
    return written


def plot_explanations(examples, path: str, env=None, max_rows: int = 4) -> str:
    """One row per example: the image (first channel), the mask, then every map."""
    by_image: dict = {}
    for idx, model, method, level, image, mask, m in examples:
        entry = by_image.setdefault(idx, {"image": image, "mask": mask, "maps": []})
        label = f"{model}\n{method}" + ("" if level == -1 else f" L{level}")
        if method != "attention":
            label = f"{method}" + ("" if level == -1 else f" L{level}") + f"\n(on {model})"
        entry["maps"].append((label, m))
    images = list(by_image.items())[:max_rows]
    ncols = 2 + max(len(e["maps"]) for _, e in images)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(images), ncols, figsize=(1.45 * ncols, 1.6 * len(images) + 0.6), squeeze=False)
        for row, (idx, e) in enumerate(images):
            axes[row, 0].imshow(e["image"].numpy(), cmap="gray")
            axes[row, 0].set_ylabel(f"image {idx}", fontsize=7)
            axes[row, 1].imshow(e["mask"].numpy(), cmap="gray")
            for col, (label, m) in enumerate(e["maps"], start=2):
                axes[row, col].imshow(m.numpy(), cmap="inferno")
                axes[row, col].contour(e["mask"].numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.4)
                if row == 0:
                    axes[row, col].set_title(label, fontsize=5.5)
            if row == 0:
                axes[row, 0].set_title("image (ch. 0)", fontsize=6)
                axes[row, 1].set_title("lesion mask", fontsize=6)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Explanations of lesion images (cyan: mask outline)", fontsize=9)
        return save(fig, path, env)
