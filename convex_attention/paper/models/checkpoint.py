"""Checkpoints of attention models: weights, optimiser, epoch, metrics, the model's
configuration and (when saved by training) the full training configuration.

A checkpoint holds only tensors and plain containers (dicts, lists, strings, numbers,
``None``): it is written by :func:`torch.save` and read with ``torch.load(...,
weights_only=True)``, which refuses any other object, so loading a file can never run
code.  The file type is checked before anything is unpickled, and the structure after:
a tampered, corrupt or foreign file gets a ValueError saying what is wrong (a tensor that is
not a dense tensor with values, a meta or a sparse one, included).  A
checkpoint whose floating weights are not all finite (a run that diverged) is refused
(:class:`NonFiniteWeights`), so no command trains on, explains or scores it.  A
checkpoint of another architecture, or whose weights do not fit its configuration, is
refused, naming the differing fields.
"""
from __future__ import annotations

import io
import os
import zipfile

import torch

from ...io.files import atomic_write_bytes, one_line
from .plain_cnn import PlainCNN, is_plain_cnn_checkpoint
from .unet import AttentionUNet, ConfigError, ModelConfig

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "load_plain_cnn", "load_any_model", "read_checkpoint",
           "model_from_state", "check_optimizer_fits", "NonFiniteWeights", "FORMAT"]

FORMAT = "convex-attention-checkpoint/1"
#: The entries every checkpoint holds, which ``extra`` may not replace.
CORE_ENTRIES = ("format", "config", "model", "epoch", "metrics", "optimizer")
#: The length of a reason quoted from torch in a refusal.
_QUOTED_CHARS = 300


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _plain(value, where: str = "checkpoint"):
    """``value`` with numpy scalars made Python numbers and list or tuple subclasses (a graph's
    FrozenList, ``torch.Size``, a namedtuple) plain lists and tuples; TypeError for anything that
    is not a tensor or a plain container (``weights_only`` loading would refuse it)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # a plain list or tuple, not the subclass (a graph's FrozenList was written, then refused
        # on reading by weights_only: a review)
        plain = list if isinstance(value, list) else tuple
        return plain(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return value.item()
    raise TypeError(f"{where} holds a {type(value).__name__}: checkpoints hold only tensors and plain containers")


def save_checkpoint(path: str, model, optimizer=None, epoch: int = 0, metrics: list | None = None,
                    extra: dict | None = None) -> str:
    """Write ``model``'s checkpoint atomically (temporary file, flushed to disk, then
    renamed): neither a crash of the process nor one of the system leaves half a file.
    ``extra``: more plain entries (training stores ``train_config``), never one of
    :data:`CORE_ENTRIES` (ValueError: the file would not read back)."""
    clash = sorted(set(extra or {}) & set(CORE_ENTRIES))
    if clash:
        raise ValueError(f"extra may not replace a checkpoint's own entries {clash}")
    model = _unwrap(model)
    state = _plain({"format": FORMAT, "config": model.config.to_dict(), "model": model.state_dict(),
                    "epoch": int(epoch), "metrics": list(metrics or []),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None, **(extra or {})})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    crc = torch.serialization.get_crc32_options()
    try:  # every record with its CRC-32, whatever torch's option says: read_checkpoint checks them
        torch.serialization.set_crc32_options(True)
        torch.save(state, buffer)
    finally:
        torch.serialization.set_crc32_options(crc)
    atomic_write_bytes(path, buffer.getbuffer())  # a temporary of this write alone, fsynced, then renamed
    return path


class NonFiniteWeights(ValueError):
    """A checkpoint whose floating weights are not all finite (the run that saved it diverged)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _load_refusal(err: BaseException) -> str:
    """What torch's ``weights_only`` refusal says is wrong, on one line.  Its first lines are
    a notice about ``weights_only``; the reason follows ``WeightsUnpickler error:`` ("Can
    only append to lists ...", "Unsupported global: GLOBAL posix.mkdir ..."), or is the line
    naming a refused global; else the first line."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    if marker in text:
        after = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if after:
            return one_line(after[0], _QUOTED_CHARS)
    named = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None)
    return one_line(named or (lines[0] if lines else type(err).__name__), _QUOTED_CHARS)


def _name(key) -> str:
    """A key of the file as text for a message: as it is when printable, else its repr (a
    tampered key holding a line break never breaks the one-line refusal)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _optimizer_problem(entry) -> str | None:
    """Why ``entry`` (a checkpoint's ``optimizer``) is not an optimiser's state dict, or None."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict) or \
            not isinstance(entry.get("param_groups"), list) or \
            not all(isinstance(g, dict) for g in entry["param_groups"]):
        return "optimizer is not an optimiser's state (a dict of 'state' and a list of 'param_groups')"
    for group in entry["param_groups"]:  # Adam's: its first step had raised on them (ca_rev173)
        betas = group.get("betas", (0.9, 0.999))
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            return f"optimizer's betas {betas!r} are not two numbers in [0, 1)"
    for values in entry["state"].values():
        step = values.get("step") if isinstance(values, dict) else None
        if step is not None and not ((isinstance(step, (int, float)) and not isinstance(step, bool)) or (
                isinstance(step, torch.Tensor) and step.dim() == 0 and not step.is_complex()
                and step.dtype != torch.bool)):
            return f"optimizer's step {step!r} is not a number"
    return None


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict, checked: file type first, then a ``weights_only`` load (no
    code can run), then the structure.  ValueError, one line, for anything else.

    ``format``, ``config`` (a dict), ``model`` (a dict of tensors) and ``epoch`` (an integer
    >= 0) must be there; ``metrics`` (a list of dicts, one per epoch), ``optimizer`` and
    ``train_config`` may be missing (a file holding only a model's weights, for scoring), and
    are checked where present: a missing ``metrics`` reads as no epoch's rows."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a convex-attention checkpoint (format {FORMAT}): not a torch.save "
                         f"archive; it is corrupt or another kind of file")
    damaged = _damaged_record(path)
    if damaged:  # torch.load checks no CRC: changed weight bytes would load as another model
        raise ValueError(f"{path!r} is a damaged convex-attention checkpoint: {damaged}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted file is reported, never raised raw
        raise ValueError(f"{path!r} is not a convex-attention checkpoint (format {FORMAT}): refused to load it "
                         f"({_load_refusal(err)}). Checkpoints hold only tensors and plain containers; "
                         f"other objects are never loaded because unpickling them can run code") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a convex-attention checkpoint (format {FORMAT})")
    problems = []
    if not isinstance(state.get("config"), dict):
        problems.append("no model configuration")
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        problems.append("no weights (a dict of tensors)")
    elif complex_ := [k for k, v in weights.items() if v.is_complex()]:
        # (loaded into the float32 model, its imaginary part was dropped with a warning: ca_rev173)
        problems.append(f"weight {complex_[0]!r} is complex")
    epoch = state.get("epoch")
    if type(epoch) is not int or epoch < 0:
        problems.append(f"epoch {epoch!r} is not a non-negative integer")
    else:
        best = state.get("best_epoch")
        if best is not None and (type(best) is not int or not 0 <= best <= epoch):
            problems.append(f"best_epoch {best!r} is not an epoch from 0 to {epoch}")  # (a traceback: ca_rev173)
    metrics = state.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        problems.append("metrics are not a list of rows")
    else:  # each an epoch's row: a resume reads its epoch (it raised KeyError in the middle of the work)
        wrong = [i for i, m in enumerate(metrics) if type(m.get("epoch")) is not int or m["epoch"] < 0]
        if wrong:
            problems.append(f"metrics row {wrong[0]} has no epoch (a non-negative integer)")
        elif type(epoch) is int:
            # one row per epoch trained, in order, none past the checkpoint's (a resume wrote rows past it
            # again: epochs 1, 2, 2, 3, ca_rev173)
            seen = [m["epoch"] for m in metrics]
            if any(b <= a for a, b in zip(seen, seen[1:])) or (seen and seen[-1] > epoch):
                problems.append(f"metrics rows of epochs {seen[:6]}{'…' if len(seen) > 6 else ''} are not one per "
                                f"epoch in order up to the checkpoint's epoch {epoch}")
    if state.get("train_config") is not None and not isinstance(state["train_config"], dict):
        problems.append("train_config is not a dict")
    optimizer_problem = _optimizer_problem(state.get("optimizer"))
    if optimizer_problem:
        problems.append(optimizer_problem)
    if problems:
        raise ValueError(f"{path!r} is a damaged convex-attention checkpoint: {'; '.join(problems)}")
    odd = _unusable_tensors(state)
    if odd:
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        raise ValueError(f"{path!r} is a damaged convex-attention checkpoint: {', '.join(odd[:3])}{more}; a checkpoint "
                         f"holds dense tensors with their values (training never saves a meta tensor, which has "
                         f"none, nor a sparse one)")
    try:
        ModelConfig.from_dict(state["config"]).validate()
    except (ConfigError, TypeError, ValueError) as err:
        raise ValueError(f"{path!r} holds an invalid model configuration: {_first_line(err)}") from None
    assert isinstance(weights, dict)  # else "no weights" was a problem, raised above
    _check_finite_weights(path, weights)
    return state


def _damaged_record(path) -> str:
    """Why the archive's records do not match their CRC-32s (``""`` when every one does): read
    whole, as ``zipfile.testzip`` does."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            unchecked = bad is not None and all(info.CRC == 0 for info in archive.infolist() if info.file_size)
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in zipfile, zlib or the OS
        return f"its archive cannot be read ({_first_line(err)})"
    if unchecked:  # (save_checkpoint writes them always)
        return ("its records carry no CRC-32s (saved under torch.serialization.set_crc32_options(False)), so it "
                "cannot be checked for damage; save it again with save_checkpoint")
    return f"record {bad!r} does not match its CRC-32 (changed on disk)" if bad is not None else ""


def _unusable_tensors(value, where: str = "") -> list[str]:
    """The tensors anywhere in ``value`` (a loaded checkpoint) that are not dense tensors with
    values (``"model['w'] is a meta tensor"``): every later step (the finiteness check, loading
    the weights or the optimiser) would fail on them with a raw error."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            return [f"{where or 'a tensor'} is a meta tensor (no values)"]
        if value.layout != torch.strided:
            return [f"{where or 'a tensor'} is a {str(value.layout).replace('torch.', '')} tensor, not a dense one"]
        return []
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _unusable_tensors(v, f"{where}[{k!r}]" if where else _name(k))]
    if isinstance(value, (list, tuple)):
        return [bad for i, v in enumerate(value) for bad in _unusable_tensors(v, f"{where}[{i}]")]
    return []


def _check_finite_weights(path, weights: dict) -> None:
    """NonFiniteWeights naming the tensors (and how many of their values) that are NaN or Inf,
    as the float32 model will hold them: a float64 weight beyond float32's range loaded as Inf
    (ca_rev143)."""
    bad = []
    for name, tensor in weights.items():
        if tensor.is_floating_point() or tensor.is_complex():
            held = tensor.float() if tensor.dtype == torch.float64 else tensor
            count = int((~torch.isfinite(held)).sum())
            if count:
                beyond = " or beyond float32, the model's type" if held is not tensor else ""
                bad.append(f"{_name(name)} ({count} of {tensor.numel()} values NaN or Inf{beyond})")
    if bad:
        more = f" and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else ""
        raise NonFiniteWeights(f"{path!r} holds weights that are not all finite: {', '.join(bad[:3])}{more}; the run "
                               f"that saved it diverged, so it is not trained further, explained or scored (use a "
                               f"checkpoint of an earlier epoch, or train again)")


def _model_config(state: dict) -> ModelConfig:
    return ModelConfig.from_dict(state["config"])


def load_checkpoint(path: str, model, optimizer=None, map_location="cpu", state: dict | None = None) -> dict:
    """Load weights (and optimiser state) into ``model``; returns the checkpoint dict
    (``state``: one already read by :func:`read_checkpoint`).

    Raises ValueError naming the differing fields when the checkpoint belongs to another
    architecture."""
    state = state if state is not None else read_checkpoint(path, map_location)
    model = _unwrap(model)
    mine, theirs = model.config.architecture(), _model_config(state).architecture()
    diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path!r} is of another architecture ({detail})")
    failures = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError)
    try:
        model.load_state_dict(state["model"])
    except failures as err:
        # torch's first line names the model only; the next one says what does not fit (missing keys, a shape)
        raise ValueError(f"{path!r}: its weights do not fit its own configuration "
                         f"({one_line(str(err) or type(err).__name__, _QUOTED_CHARS)})") from None
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
    except failures as err:  # (an SGD state given to Adam read "its weights do not fit": a review's near-miss)
        raise ValueError(f"{path!r}: its optimiser state does not fit this {type(optimizer).__name__} optimiser "
                         f"({one_line(str(err) or type(err).__name__, _QUOTED_CHARS)})") from None
    if optimizer is not None:
        check_optimizer_fits(path, state, model)
    return state


def check_optimizer_fits(path: str, state: dict, model) -> None:
    """ValueError, one line, where the optimiser state of the checkpoint ``state`` (read by
    :func:`read_checkpoint`) does not fit ``model``'s parameters, as training builds its
    optimiser on them (in ``model.parameters()`` order): a parameter's state tensor (Adam's
    moments) of another shape than the parameter, or a parameter number the model lacks.
    torch loads such a state without a word, and the first step fails."""
    entry = state.get("optimizer")
    if entry is None:
        return
    shapes = [tuple(p.shape) for p in _unwrap(model).parameters()]
    numbers = [n for group in entry["param_groups"] for n in group.get("params", [])]
    problem = None
    if sorted(numbers) != list(range(len(shapes))):
        problem = f"it lists {len(numbers)} parameters, the model has {len(shapes)}"
    else:
        for number, values in sorted(entry["state"].items(), key=lambda kv: str(kv[0])):
            if type(number) is not int or not 0 <= number < len(shapes) or not isinstance(values, dict):
                problem = f"a state of parameter {number!r}, which the model lacks"
                break
            # every state tensor but the step count is shaped like its parameter (a 0-d moment had passed
            # as a scalar: ca_rev173)
            odd = [(name, tuple(v.shape)) for name, v in values.items()
                   if isinstance(v, torch.Tensor) and name != "step" and tuple(v.shape) != shapes[number]]
            if odd:
                problem = f"parameter {number}'s {odd[0][0]} has shape {odd[0][1]}, the parameter {shapes[number]}"
                break
    if problem:
        raise ValueError(f"{path!r}: its optimiser state does not fit the model's parameters ({problem}); it is "
                         f"damaged or another model's")


def _load(path: str, map_location, kinds: tuple) -> tuple:
    """Read the checkpoint once, build the model it holds (one of ``kinds``: the attention
    model, the plain CNN) and load its weights: ``(model, state)``."""
    state = read_checkpoint(path, map_location)
    return model_from_state(path, state, kinds, map_location), state


def model_from_state(path: str, state: dict, kinds: tuple = (AttentionUNet,), map_location="cpu"):
    """The model a checkpoint already read (:func:`read_checkpoint`) holds, with its weights
    loaded: one of ``kinds`` (the attention model, the plain CNN).  ValueError, one line,
    for a checkpoint of another kind, or weights that do not fit its configuration."""
    plain = is_plain_cnn_checkpoint(state)
    cls = PlainCNN if plain else AttentionUNet
    if cls not in kinds:
        what = "a plain CNN" if plain else "an attention model"
        wanted = " or ".join("a plain CNN" if k is PlainCNN else "an attention model" for k in kinds)
        raise ValueError(f"{path!r} is a checkpoint of {what}, not of {wanted}")
    try:  # the options' values are checked against the structure as the model is built
        model = cls(config=_model_config(state))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path!r} holds an invalid model configuration: {one_line(str(err), _QUOTED_CHARS)}") \
            from None
    load_checkpoint(path, model, map_location=map_location, state=state)
    return model


def load_model(path: str, map_location="cpu") -> tuple[AttentionUNet, dict]:
    """Rebuild the attention model a checkpoint was saved from and load its weights:
    ``(model, state)``; ValueError for a plain CNN's checkpoint."""
    return _load(path, map_location, (AttentionUNet,))


def load_plain_cnn(path: str, map_location="cpu") -> tuple[PlainCNN, dict]:
    """``(model, state)`` from a checkpoint of a :class:`PlainCNN` (checked like every checkpoint)."""
    return _load(path, map_location, (PlainCNN,))


def load_any_model(path: str, map_location="cpu") -> tuple:
    """``(model, state)``: an attention model or a plain CNN, whichever the checkpoint holds
    (the file is read once)."""
    return _load(path, map_location, (AttentionUNet, PlainCNN))
