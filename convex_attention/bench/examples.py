"""One saved instance for the attention-map figure (``example.npz``: arrays only, written
atomically by :func:`save_example`; read and validated by :func:`load_example`, which
never unpickles)."""
from __future__ import annotations

import io
import os
import re
import zipfile
import zlib

import numpy as np
import torch

from ..hierarchy import Hierarchy
from ..io.files import atomic_write_bytes, one_line
from .config import capped_instances
from .duals import fit_amortiser, fit_shared_duals
from .generators import generate
from .results import DUAL_KINDS

__all__ = ["save_example", "load_example", "why_write_again"]

_DUAL_KEY = re.compile(r"^([a-z_]+)_dual(0|[1-9][0-9]*)$")  # fitted_dual00 is not λ_0
_MAX_EXAMPLE_CELLS = 1 << 20  # cells over all levels: more is no figure


def why_write_again(path: str, need_duals: bool) -> str | None:
    """Why a resumed sweep must write the ``example.npz`` at ``path`` again, or None to keep
    it: it cannot be read as an example (:func:`load_example`'s reason), or ``need_duals``
    (the sweep has learned_dual) and it holds no fitted λ."""
    try:
        kinds = load_example(path)[2]
    except ValueError as err:
        return f"it cannot be read as an example ({err})"
    if need_duals and "fitted" not in kinds:
        return "the resumed sweep adds learned_dual, whose λ it lacked"
    return None


def load_example(example_path: str) -> tuple[list[np.ndarray], list[float], dict[str, list[np.ndarray]]]:
    """``(scores, temperatures, λ per dual kind)`` of ``example.npz``, validated: ``scores[k]``
    ``(H_k, W_k)`` float64, one temperature per level, and ``{kind: [λ_k (H_{k+1}, W_{k+1})]}``
    in the order of :data:`~.results.DUAL_KINDS`.  ValueError naming the problem otherwise.
    Nothing in the file can run code (no pickles), and nothing but a regular file is opened
    (a named pipe of that name would block the read)."""
    if not os.path.isfile(example_path):
        raise ValueError("not a regular file (a folder, a named pipe or a device of that name)")
    # opened here, not by np.load: numpy leaves its own handle open when the archive is unreadable
    try:
        f = open(example_path, "rb")
    except OSError as err:
        raise ValueError(f"not a readable .npz file ({one_line(err, 80)})") from None
    with f:
        try:
            data = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"not a readable .npz file ({one_line(err, 80)})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        try:  # a damaged member fails in zipfile, zlib or numpy, each in its own way
            with data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                MemoryError) as err:
            raise ValueError(f"an array cannot be read ({one_line(err, 80)})") from None
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise ValueError("a member is not a .npy array")
    if "levels" not in arrays or "temperature" not in arrays:
        raise ValueError("lacks 'levels' or 'temperature'")
    lv = arrays["levels"]
    if lv.shape != () or lv.dtype.kind not in "iu" or not 2 <= int(lv) <= 8:
        raise ValueError("'levels' must be an integer from 2 to 8")
    L = int(lv)
    temps = arrays["temperature"]
    if temps.dtype.kind != "f" or temps.shape != (L,) or not np.all(np.isfinite(temps)) or not np.all(temps > 0):
        raise ValueError(f"'temperature' must hold {L} positive finite numbers")
    scores = []
    for k in range(L):
        s = arrays.get(f"scores{k}")
        if s is None or s.dtype.kind != "f" or s.ndim != 2 or s.size == 0:
            raise ValueError(f"'scores{k}' must be a 2-D float array (the figure shows 2-D grids)")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"'scores{k}' holds NaN or Inf")
        scores.append(s.astype(np.float64))
    if sum(s.size for s in scores) > _MAX_EXAMPLE_CELLS:
        raise ValueError(f"more than {_MAX_EXAMPLE_CELLS} cells: too large for a figure")
    duals: dict = {}
    for key, arr in arrays.items():
        m = _DUAL_KEY.match(key)
        if m:
            duals.setdefault(m.group(1), {})[int(m.group(2))] = arr
    kinds = {}
    for kind, parts in sorted(duals.items(), key=lambda kv: DUAL_KINDS.index(kv[0])
                              if kv[0] in DUAL_KINDS else 99):
        if sorted(parts) != list(range(L - 1)):
            raise ValueError(f"'{kind}_dual*' must hold one array per constraint (0 … {L - 2})")
        for k, arr in parts.items():
            if arr.dtype.kind != "f" or arr.shape != scores[k + 1].shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"'{kind}_dual{k}' must be finite floats shaped like 'scores{k + 1}'")
        kinds[kind] = [parts[k].astype(np.float64) for k in range(L - 1)]
    return scores, [float(t) for t in temps], kinds


def save_example(out_dir: str, generator: str = "lesion", size: int = 32, levels: int = 2, scale: float = 1.0,
                 seed: int = 0, fit_instances: int = 128, fit_steps: int = 150, amortised_steps: int = 0,
                 fit_max_values: int | None = None) -> str:
    """One 2-D instance for the attention-map figure: ``scores{k}`` ``(size/2^k, size/2^k)``;
    with ``fit_steps > 0`` the fitted shared λ ``fitted_dual{k}`` ``(size/2^(k+1), …)``; with
    ``amortised_steps > 0`` and the amortised dual available, its prediction for this
    instance ``amortised_dual{k}`` (same shapes); ``levels`` and ``temperature`` (L,).

    The instance (seed ``seed + 100``) is held out from the training instances (``seed + 1``),
    ``fit_instances`` of them, fewer where ``fit_max_values`` caps instances × cells as it
    caps a sweep's (:func:`~.config.fit_instances`).  A sweep passes its ``seed``, ``scale``
    and training settings, so that the example is an instance of its own.
    """
    h = Hierarchy.grid([(size // 2 ** k,) * 2 for k in range(levels)])
    temps = [1.0] * levels
    scores = generate(generator, h, 1, seed=seed + 100, scale=scale)
    arrays = {f"scores{k}": s[0].numpy() for k, s in enumerate(scores)}
    n_train = capped_instances(fit_instances, fit_max_values, sum(h.sizes))
    train = generate(generator, h, n_train, seed=seed + 1, scale=scale) if fit_steps or amortised_steps else None
    if fit_steps > 0:
        fitted = fit_shared_duals(h, train, temps, fit_steps, torch.float64)
        arrays.update({f"fitted_dual{k}": d[0].numpy() for k, d in enumerate(fitted)})
    if amortised_steps > 0:
        net = fit_amortiser(h, train, temps, amortised_steps, torch.float32, seed=seed + 2)
        with torch.no_grad():
            predicted = net([s.float() for s in scores])
        arrays.update({f"amortised_dual{k}": d[0].double().numpy() for k, d in enumerate(predicted)})
    buf = io.BytesIO()
    np.savez(buf, levels=np.array(levels), temperature=np.array(temps), **arrays)
    path = os.path.join(out_dir, "example.npz")
    atomic_write_bytes(path, buf.getvalue())
    return path
