"""Attention scores of a trained model, as a score generator for the benchmarks
(``convex-attention bench --generator model --checkpoint PATH``; the command layer
registers :func:`model_scores` with the harness, which never imports this wing).

The checkpoint is read like every checkpoint (:func:`~convex_attention.paper.models.read_checkpoint`:
tensors and plain containers only, nothing in it can run code)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..hierarchy import Hierarchy
from ..io.settings import SEED_MAX
from .config import DATA_SEED_MAX, SYNTHETIC_SOURCES, ModelConfig, TrainConfig
from .data import build_datasets
from .models import NonFiniteOutput, load_model, read_checkpoint
from .protocol import keys_meet, seed_keys, split_seed
from .train import stored_train_config

__all__ = ["model_scores", "checkpoint_shapes", "check_model_sweep", "check_score_seed"]


def checkpoint_shapes(checkpoint: str) -> list[tuple[int, ...]]:
    """The attention levels' grid shapes of a checkpoint (without building the model)."""
    cfg = ModelConfig.from_dict(read_checkpoint(checkpoint)["config"])
    return [(cfg.image_size // 2 ** (k - 1),) * 2 for k in cfg.attention_blocks]


# the score generator draws its images at seed SCORE_SEED_OFFSET + seed (training draws the
# model's training images at its data seed, its validation images at data seed + VAL_SEED_OFFSET)
SCORE_SEED_OFFSET = 20_000
VAL_SEED_OFFSET = 10_000


def _scoring_setup(checkpoint: str, state: dict) -> tuple[TrainConfig, str]:
    """``(the stored training configuration, the synthetic source the images come from)``:
    the source the model was trained on, or the default synthetic one for a model of files."""
    stored = stored_train_config(checkpoint, state) or TrainConfig()
    # images of the synthetic source the model was trained on (any other source needs files;
    # a synthetic source ignores a data root, which older runs could record beside it)
    source = stored.data if stored.data in SYNTHETIC_SOURCES else TrainConfig().data
    return stored, source


def _training_streams(stored: TrainConfig, source: str) -> list[tuple[range, str]]:
    """``[(generator keys, what the model saw there)]``: the keys of its training and validation
    images, where those are the synthetic images the generator draws from (``train``'s
    streams, and the experiment protocol's training and validation splits at its data seed)."""
    if stored.data != source:
        return []  # trained on files: no synthetic image of its was ever drawn
    seed = stored.data_seed_used
    streams = [(seed_keys(seed, stored.n_train), "training"), (seed_keys(seed + VAL_SEED_OFFSET, stored.n_val),
                                                               "validation")]
    if seed <= DATA_SEED_MAX:  # the experiment trains on its own splits of this data seed (split_sizes: n_train, n_val)
        for split, what, n in (("train", "training", stored.n_train), ("val", "validation", stored.n_val)):
            streams.append((seed_keys(split_seed(stored.data, seed, stored.difficulty, split), n), what))
    return streams


def _score_seed_problem(streams: list[tuple[range, str]], draws) -> str:
    """Why scoring ``draws`` (``(seed, images)`` pairs: the first ``images`` images of generator
    seed ``20000 + seed``) would score the model's own images ("" when it would not): their
    keys ``seed · 1000003 + i`` meet a training or validation stream's, or are congruent to
    one modulo 2**32, which torch's generator keeps (:func:`~.protocol.keys_meet`; a seed
    whose keys were the training images' shifted by one had passed: ca_rev143)."""
    for s, images in draws:
        keys = seed_keys(SCORE_SEED_OFFSET + s, max(1, images))
        what = next((what for trained, what in streams if keys_meet(trained, keys)), None)
        if what is not None:
            return f"the images of seed {s} (generator seed {SCORE_SEED_OFFSET + s}) are the model's own {what} images"
    return ""


def _free_seed(streams: list[tuple[range, str]], seed: int, draws) -> int | None:
    """The seed nearest ``seed`` (above first), other than ``seed``, at which every draw of
    ``draws`` (``(offset, images)``, the seeds drawn relative to it) avoids ``streams`` and
    stays within the seeds the generator takes; None where none is found near it.  A seed near
    ``SEED_MAX`` is looked for below ``SEED_MAX − reach`` (it had named the refused seed itself
    there: ca_rev145)."""
    reach = max(offset for offset, _ in draws)
    start = min(seed, SEED_MAX - reach)

    def free(s: int) -> bool:
        return s != seed and 0 <= s and s + reach <= SEED_MAX and not _score_seed_problem(
            streams, [(s + offset, images) for offset, images in draws])

    candidates = (s for step in range(0, 4 * len(streams) * len(draws) + 2) for s in (start + step, start - step))
    return next((s for s in candidates if free(s)), None)


def check_score_seed(checkpoint: str, seed: int, span: int = 1, state: dict | None = None,
                     flag: str = "--seed", images: int = 1, more=()) -> None:
    """ValueError, naming a seed to use instead where one is found near it, when the images the generator draws for
    seeds ``seed .. seed + span - 1`` (``images`` of each), and ``more`` (``(offset, images)``
    pairs: a sweep's example at ``seed + 100``), are the checkpoint's own training or
    validation images."""
    state = state if state is not None else read_checkpoint(checkpoint)
    stored, source = _scoring_setup(checkpoint, state)
    streams = _training_streams(stored, source)
    draws = [(offset, images) for offset in range(span)] + list(more)
    problem = _score_seed_problem(streams, [(seed + offset, n) for offset, n in draws])
    if problem:
        uses = (f" (a sweep draws seed {seed}, seed {seed + 1} for its training instances"
                + "".join(f" and seed {seed + offset} for its example" for offset, _ in more) + ")") if span > 1 else ""
        instead = _free_seed(streams, seed, draws)
        raise ValueError(f"{flag} {seed}: {problem}{uses}, and scores on images the model was trained or selected "
                         f"on say nothing of new images; " + (f"use {flag} {instead}" if instead is not None
                                                               else f"choose another {flag}"))


def model_scores(h: Hierarchy, batch: int, seed: int = 0, scale: float = 1.0, checkpoint: str | None = None,
                 **_) -> list[Tensor]:
    """The heads' scores of ``checkpoint``'s model on ``batch`` synthetic images.

    The images come from the synthetic dataset with the difficulty and size the model was
    trained with (its stored training configuration, else the defaults), at generator seed
    ``20000 + seed``; a seed whose images are the model's own training or validation images
    is refused (ValueError naming one to use instead).  Returns ``L`` float64 tensors
    ``(B, *h.shapes[k])``; ``h`` must match the model's levels.
    """
    if checkpoint is None:
        raise ValueError("the model score generator needs a checkpoint")
    shapes = checkpoint_shapes(checkpoint)
    if [tuple(s) for s in h.shapes] != shapes:
        raise ValueError(f"the checkpoint's attention levels are {shapes}, the sweep asks for {h.shapes}: use "
                         f"--dims 2 --factor 2 --sizes {shapes[0][0]} --levels {len(shapes)}")
    model, state = load_model(checkpoint)
    model.eval()
    check_score_seed(checkpoint, seed, state=state, images=batch)
    stored, source = _scoring_setup(checkpoint, state)
    data = build_datasets(source, None, model.config.image_size, model.config.in_channels, batch, 1,
                          stored.difficulty, SCORE_SEED_OFFSET + seed)[0]  # (`_` is **_, the unused options)
    images = torch.stack([data[i][0] for i in range(batch)])
    with torch.no_grad():
        scores = model(images).scores
    bad = [k for k, s in enumerate(scores) if not bool(torch.isfinite(s).all())]
    if bad:  # as predict refuses such outputs (they had reached the sweep as its instance: ca_rev143)
        raise NonFiniteOutput(f"{checkpoint!r}: the model's attention scores of level(s) {bad} hold NaN or Inf on "
                              f"the generator's images (seed {seed}): its heads overflow, so it is not scored")
    return [scale * s.to(torch.float64) for s in scores]


def check_model_sweep(checkpoint: str, sizes, levels, dims, factor, seed: int | None = None,
                      images: int = 1) -> None:
    """Refuse (ValueError) a sweep the checkpoint's model cannot score: grids that differ from
    its attention levels, images the synthetic generator cannot draw at the model's size, or
    (given the sweep's ``seed``) a seed whose images, or those of ``seed + 1`` (the sweep's
    training instances) or ``seed + 100`` (its example), are the model's own training or
    validation images; ``images``: the most a sweep draws at a seed (its largest batch or
    training instances)."""
    state = read_checkpoint(checkpoint)
    cfg = ModelConfig.from_dict(state["config"])
    shapes = [(cfg.image_size // 2 ** (k - 1),) * 2 for k in cfg.attention_blocks]
    if (list(sizes), list(levels), list(dims), factor) != ([shapes[0][0]], [len(shapes)], [2], 2):
        raise ValueError(f"the checkpoint's attention levels are {shapes}: run the model generator with "
                         f"--sizes {shapes[0][0]} --levels {len(shapes)} --dims 2 --factor 2")
    stored, source = _scoring_setup(checkpoint, state)
    try:  # the generator's own checks of its options, without drawing an image
        build_datasets(source, None, cfg.image_size, cfg.in_channels, 1, 1, stored.difficulty, SCORE_SEED_OFFSET)
    except ValueError as err:
        trained = f"trained on {stored.data} data" + (f" ({stored.data_root})" if stored.data_root else "")
        raise ValueError(f"the model generator cannot score {checkpoint!r} ({trained}, {cfg.image_size}x"
                         f"{cfg.image_size} images): it feeds the model {source} images of the model's size, and "
                         f"{err}; use a checkpoint of a model of 32x32 images or more") from None
    if seed is not None:  # the sweep's instances, its training instances, and its example (seed + 100, one image)
        check_score_seed(checkpoint, seed, span=2, state=state, images=images, more=((100, 1),))
