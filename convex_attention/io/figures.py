"""The figure style and :func:`save`: every figure of both wings looks and is written alike.

A figure is written as a PNG (300 dpi) and a PDF side by side, sized for a paper (at most a
two-column width, :data:`FULL_WIDTH`), in fonts that stay readable at that size
(:data:`STYLE`), with a footer naming the environment the numbers were measured in
(:func:`env_line`).  Importing this module selects matplotlib's non-interactive backend.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["FULL_WIDTH", "HALF_WIDTH", "STYLE", "env_line", "save", "plain", "sci"]

FULL_WIDTH = 7.0   # inches: a two-column figure
HALF_WIDTH = 3.4   # inches: a one-column figure
STYLE = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9, "figure.dpi": 100,
         "savefig.bbox": "tight", "pdf.fonttype": 42, "axes.spines.top": False, "axes.spines.right": False}


def plain(text, limit: int = 80) -> str:
    """A string from a file, safe to draw: no mathtext, bounded length."""
    text = str(text).replace("\n", " ")
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("$", r"\$")


def sci(x: float, digits: int = 2) -> str:
    """``x`` as mathtext in scientific notation, e.g. ``3.2\\times10^{-4}``."""
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    mant = x / 10 ** exp
    if abs(round(mant, digits - 1)) >= 10:  # 9.99e-5 reads 1.0e-4, not 10.0e-5
        mant, exp = mant / 10, exp + 1
    if -2 <= exp <= 3:
        return f"{x:.{digits + 1}g}"
    return rf"{mant:.{digits - 1}f}\times10^{{{exp}}}"


def env_line(env: dict | None) -> str:
    """One line naming where the numbers were measured (torch, processor, threads, GPU)."""
    if not env or not isinstance(env, dict):
        return ""
    parts = [f"torch {env.get('torch', '?')}", env.get("processor", ""),
             f"{env.get('torch_threads', '?')} threads", env.get("gpu", "") or ""]
    return plain(" · ".join(str(p) for p in parts if p), 160)


def save(fig, path: str, env: dict | None = None) -> str:
    """Write ``fig`` as PNG (300 dpi) and PDF with the environment footer; returns the PNG path."""
    line = env_line(env)
    if line:
        # below everything drawn (legends outside the axes included), so it never covers data
        fig.set_dpi(300)  # measure at the resolution it is saved at: text extents depend on it
        fig.draw_without_rendering()  # the layout, without rasterising
        fig.set_layout_engine("none")  # freeze the layout just computed: the footer is placed against it
        renderer = fig.canvas.get_renderer()
        for legend in fig.legends:
            # a figure legend hangs from the figure's edge, which the tight crop moves: pin it in place
            where = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
            legend.set_bbox_to_anchor(where, transform=fig.transFigure)
            legend.set_loc("center")
        box = fig.get_tightbbox(renderer)
        fig.text(box.x0 / fig.get_figwidth(), (box.y0 - 0.05) / fig.get_figheight(), line, fontsize=6,
                 color="#555555", ha="left", va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=300, bbox_inches="tight")
    fig.savefig(os.path.splitext(path)[0] + ".pdf", bbox_inches="tight")
    plt.close(fig)
    return path
