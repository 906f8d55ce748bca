"""One saved instance for the attention-map figure (``example.npz``: arrays only, written
atomically by :func:`save_example`; read and validated by :func:`load_example`, which
never unpickles)."""
from __future__ import annotations

import inspect
import io
import json
import os
import re
import zipfile
import zlib

import numpy as np
import torch

from ..hierarchy import Hierarchy
from ..io.files import atomic_write_bytes, one_line
from ..methods import get_method
from .config import capped_instances
from .duals import fit_amortiser, fit_shared_duals
from .generators import generate
from .results import DUAL_KINDS

__all__ = ["save_example", "load_example", "why_write_again", "sweep_example_settings", "recorded_settings",
           "not_the_sweeps_example"]

_DUAL_KEY = re.compile(r"^([a-z_]+)_dual(0|[1-9][0-9]*)$")  # fitted_dual00 is not λ_0
_MAX_EXAMPLE_CELLS = 1 << 20  # cells over all levels: more is no figure


def sweep_example_settings(config) -> dict:
    """The keyword arguments of :func:`save_example` for the sweep of ``config`` (a mapping of
    :class:`~.config.SweepConfig`'s settings: ``asdict(config)``, or ``bench.json``'s
    ``config``): its instance generator (the lesion generator in place of a model's), scale and
    seed, and its training settings where it has learned_dual (0 steps without).  One home for
    the sweep that writes the example and the figure that checks it is the sweep's own."""
    learned = any(get_method(m).needs_duals for m in config.get("methods") or ())
    return dict(generator="lesion" if config.get("generator") == "model" else config.get("generator"),
                scale=config.get("scale"), seed=config.get("seed"), fit_instances=config.get("fit_instances"),
                fit_max_values=config.get("fit_max_values"), fit_steps=config.get("fit_steps") if learned else 0,
                amortised_steps=config.get("amortised_steps") if learned else 0)


#: The settings of :func:`save_example` that make its instance (the rest train its λ).
_INSTANCE_SETTINGS = ("generator", "scale", "seed", "size", "levels")


def not_the_sweeps_example(path: str, config) -> str | None:
    """Why ``example.npz`` at ``path`` is not an instance of the sweep ``config`` (a folder's
    ``bench.json`` ``config``, which a resumed folder widens over its runs), or None: its
    instance settings differ, or it holds fitted λ trained with other settings than the
    folder's learned_dual rows were.  An example without λ is the sweep's wherever its instance
    is (a resume without learned_dual writes it so: compared with every setting, it was called
    another run's, ca_rev120).  None also where it records no settings (not checkable)."""
    recorded = recorded_settings(path)
    if recorded is None:
        return None
    wanted = _full_settings(sweep_example_settings(config))
    keys = list(_INSTANCE_SETTINGS)
    if recorded.get("fit_steps") or recorded.get("amortised_steps"):  # it holds λ: trained as the rows' were
        keys += [k for k in ("fit_instances", "fit_max_values", "fit_steps") if recorded.get("fit_steps")]
        keys += ["amortised_steps"] if recorded.get("amortised_steps") else []
    return _other_settings(recorded, wanted, keys)


def _other_settings(recorded: dict, wanted: dict, keys) -> str | None:
    """Why an example recording ``recorded`` is not one of ``wanted``, compared on ``keys``, or None."""
    differ = [f"{k} {recorded.get(k)!r}, not {wanted.get(k)!r}" for k in keys if recorded.get(k) != wanted.get(k)]
    return f"it is the instance of other settings ({', '.join(differ)})" if differ else None


def why_write_again(path: str, need_duals: bool, settings: dict | None = None) -> str | None:
    """Why a resumed sweep must write the ``example.npz`` at ``path`` again, or None to keep
    it: it cannot be read as an example (:func:`load_example`'s reason); ``need_duals`` (the
    sweep has learned_dual) and it holds no fitted λ; or, given the ``settings`` (the keyword
    arguments of :func:`save_example`) the sweep would write it with, it records others or
    none (an interrupted ``--overwrite`` leaves the earlier run's example beside the new rows).
    A sweep without learned_dual compares the instance settings alone: its own training
    settings are none, and the λ the example holds were trained as the folder's learned_dual
    rows were (compared with every setting, a resume with ``--methods exact`` wrote the example
    again without them: ca_rev127)."""
    try:
        kinds = load_example(path)[2]
    except ValueError as err:
        return f"it cannot be read as an example ({err})"
    if need_duals and "fitted" not in kinds:
        return "the resumed sweep adds learned_dual, whose λ it lacked"
    if settings is not None:
        recorded = recorded_settings(path)
        if recorded is None:
            return "it records no settings (an earlier version wrote it), so it may be another run's instance"
        wanted = _full_settings(settings)
        keys = sorted(set(recorded) | set(wanted)) if need_duals else list(_INSTANCE_SETTINGS)
        return _other_settings(recorded, wanted, keys)
    return None


def _full_settings(settings: dict) -> dict:
    """The record of :func:`save_example` called with ``settings``: its defaults filled in, as
    JSON reads them back (a float stays a float, a tuple becomes a list)."""
    defaults = {name: p.default for name, p in inspect.signature(save_example).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return json.loads(json.dumps({**defaults, **settings}, allow_nan=False, sort_keys=True))


def recorded_settings(path: str) -> dict | None:
    """The settings :func:`save_example` recorded in ``path`` (its ``settings`` member, a JSON
    object in a string array), or None where there are none or they cannot be read."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            if "settings" not in data.files:
                return None
            text = data["settings"]
        if text.shape != () or text.dtype.kind != "U":
            return None
        recorded = json.loads(str(text))
    except (OSError, ValueError, RecursionError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return recorded if isinstance(recorded, dict) else None


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
    instance ``amortised_dual{k}`` (same shapes); ``levels`` and ``temperature`` (L,);
    ``settings``: these arguments, as a JSON object in a 0-d string array.

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
    # what made it, for a resume to tell this run's example from an earlier run's
    settings = _full_settings(dict(generator=generator, size=size, levels=levels, scale=scale, seed=seed,
                                   fit_instances=fit_instances, fit_steps=fit_steps,
                                   amortised_steps=amortised_steps, fit_max_values=fit_max_values))
    buf = io.BytesIO()
    np.savez(buf, levels=np.array(levels), temperature=np.array(temps),
             settings=np.array(json.dumps(settings, sort_keys=True)), **arrays)  # type: ignore[arg-type]
    path = os.path.join(out_dir, "example.npz")
    atomic_write_bytes(path, buf.getvalue())
    return path
