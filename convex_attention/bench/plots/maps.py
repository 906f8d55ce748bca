"""The attention-map figure: one instance's levels under each method, with the residuals.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...hierarchy import Hierarchy
from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain, sci
from ...methods import get_method
from ...solve import solve
from ..examples import load_example
from ._common import (
    Log,
    Series,
    warn,
)

# what the attention-map figure shows, in this order (a choice of content)
ATTENTION_MAP_METHODS = ("softmax", "learned_dual", "dual", "exact")


#: What each kind of λ an example holds is, for the footer.
_LAMBDA_SOURCES = {"zero": "λ = 0", "fitted": "the sweep's fitted shared λ",
                   "amortised": "the amortised network's prediction for this instance",
                   "per_sample": "this instance's own optimal λ*"}


def _lambda_note(kinds) -> str:
    """The footer's account of the λ drawn: those the example holds, or that it holds none
    (a sweep without learned_dual: the footer had named fitted and amortised λ, ca_rev118)."""
    if not kinds:
        return "the example holds no λ (its sweep had no learned_dual): no learned_dual row"
    return "λ: " + ", ".join(_LAMBDA_SOURCES.get(k, k) for k in kinds)


def plot_attention_maps(example_path: str, path: str, env=None, log: Log | None = None) -> str:
    """The levels of one instance under softmax, learned_dual (each λ the file holds),
    dual and exact, with each constraint's residual P_k p_k − p_{k+1}, all computed in
    float64 (the file's scores and λ; the figure says so).

    Every panel of one level shares one colour scale (0 to the largest probability of
    that level under any method), so a near-uniform map looks near-uniform; each panel
    states N·max p (N: the level's cells; 1 for a uniform map).  The residual panels share
    one symmetric scale per constraint and state ‖·‖₁ below the panel, off the data.
    ValueError (naming the problem) for an unusable file."""
    log = log or warn
    scores_np, temps, kinds = load_example(example_path)
    L = len(scores_np)
    scores = [torch.from_numpy(s).unsqueeze(0) for s in scores_np]
    try:
        h = Hierarchy.grid([tuple(s.shape) for s in scores_np])
    except ValueError as err:
        raise ValueError(f"the score grids do not nest ({plain(err, 80)})") from None
    sols = {}
    left_out = []  # what the figure must say it does not show
    for name in ATTENTION_MAP_METHODS:
        try:
            if get_method(name).needs_duals:
                for kind, lam in kinds.items():
                    duals = [torch.from_numpy(d).unsqueeze(0) for d in lam]
                    sols[Series(name, kind).label] = solve(scores, h, name, temperature=temps, duals=duals)
            else:
                sols[name] = solve(scores, h, name, temperature=temps)
        except (ValueError, RuntimeError) as err:
            log(f"attention_maps: {name} failed on the example ({plain(err, 80)}); its row is left out")
            left_out.append(f"{name} ({plain(err, 80)})")
    for name in [n for n, sol in sols.items() if not all(bool(torch.isfinite(p).all()) for p in sol.probs)]:
        log(f"attention_maps: {name} gave NaN or Inf on the example; its row is left out")
        left_out.append(f"{name} (NaN or Inf)")
        del sols[name]
    if not sols:
        raise ValueError("no method solved the example")
    probs = {name: [p[0].detach().numpy() for p in sol.probs] for name, sol in sols.items()}
    resid = {name: [(h.aggregate(sol.probs[k], k) - sol.probs[k + 1])[0].detach().numpy() for k in range(L - 1)]
             for name, sol in sols.items()}
    vmax = [max(float(p[k].max()) for p in probs.values()) for k in range(L)]
    dmax = [max(float(np.abs(r[k]).max()) for r in resid.values()) or 1e-300 for k in range(L - 1)]
    ncols = 2 * L - 1
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(sols), ncols, figsize=(min(FULL_WIDTH, 1.45 * ncols + 0.9),
                                                            1.45 * len(sols) + 1.2),
                                 squeeze=False, layout="constrained")
        for i, name in enumerate(sols):
            for k in range(L):
                ax = axes[i, k]
                im = ax.imshow(probs[name][k], cmap="magma", vmin=0.0, vmax=vmax[k])
                n = probs[name][k].size
                ax.set_xlabel(rf"$N\,\max\,p = {n * float(probs[name][k].max()):.3g}$", fontsize=6.5, labelpad=1)
                if i == 0:
                    ax.set_title(f"level {k} ({'×'.join(map(str, h.shapes[k]))})\n$p_{k}$", fontsize=7)
                if i == len(sols) - 1:
                    bar = fig.colorbar(im, ax=axes[:, k], location="bottom", fraction=0.04, pad=0.01, shrink=0.9)
                    bar.ax.tick_params(labelsize=5.5, rotation=30)
                    bar.set_label(f"$p_{k}$: probability per cell (level {k})", fontsize=6)
            for k in range(L - 1):
                ax = axes[i, L + k]
                r = resid[name][k]
                im = ax.imshow(r, cmap="RdBu_r", vmin=-dmax[k], vmax=dmax[k])
                ax.set_xlabel(rf"$\|\cdot\|_1 = {sci(float(np.abs(r).sum()))}$", fontsize=6.5, labelpad=1)
                if i == 0:
                    ax.set_title(f"residual of constraint {k}\n$P_{k}\\,p_{k} - p_{{{k + 1}}}$", fontsize=7)
                if i == len(sols) - 1:
                    bar = fig.colorbar(im, ax=axes[:, L + k], location="bottom", fraction=0.04, pad=0.01,
                                       shrink=0.9, format="%.0g")  # -0.02, 0, 0.02; 1e-16 where tiny
                    bar.ax.tick_params(labelsize=5.5, rotation=30)
                    bar.set_label(f"$P_{k}\\,p_{k} - p_{{{k + 1}}}$: residual per coarse cell", fontsize=6)
            axes[i, 0].set_ylabel(name.replace(" (", "\n("), fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(True)  # an image is framed on all four sides
        fig.suptitle("Attention maps of one instance, computed in float64: one colour scale per level (and per "
                     "residual), shared by all methods", fontsize=8)
        return figures.save(fig, path, env, notes=[
            "computed in float64 from example.npz's scores" + (" and λ" if kinds else "") +
            " (the sweep's timings are in their own dtype); " + _lambda_note(kinds),
            "under each map: N·max p, its peak over a uniform map's (N: the level's cells); under each residual: "
            "its L1 norm",
            f"FAILED on this example, not drawn: {'; '.join(left_out)}" if left_out else ""])
