"""The benchmark sweep's settings, each declared once (:func:`convex_attention.io.settings.setting`).

A :class:`SweepConfig` is one sweep: its axes (tuples: every combination is a cell), the
score generator and the measurement settings.  The ``bench`` command's options, their
ranges, defaults and help are derived from these declarations, and :func:`check_sweep`
checks a sweep before anything is measured (each setting against its kind, then what
depends on several: grid sizes that divide, temperatures the core accepts in each dtype,
tensors that fit in memory, backends and devices that exist here).

This module is light (no torch at import): building the command line's parser reads it.
"""
from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass

from ..io.files import check_fresh_out_dir
from ..io.settings import (
    SEED,
    SEED_MAX,
    Choice,
    ConfigError,
    Int,
    Many,
    Real,
    Text,
    check_settings,
    declared,
    int_in,
    normalise_settings,
    setting,
)

__all__ = ["SweepConfig", "VerifyConfig", "check_sweep", "check_values",
           "fit_instances", "capped_instances", "quick_sweep",
           "SCALE_MAX", "DTYPES", "GENERATOR_NAMES", "MAX_ELEMENTS", "MIN_FIT_INSTANCES", "METHOD_NAMES",
           "BACKEND_NAMES", "STRUCTURES", "STAR_ARMS", "STAR_FACTOR", "REGION_FACTOR", "check_structure",
           "check_size_of_every_structure", "add_study_arguments", "check_study_arguments", "run_study",
           "structure_maps", "structure_cells", "check_device", "CVX_BATCH", "DIFFCP_BATCH"]

# Scores reach about 6 × scale (Gaussian tails, lesion peaks); 1e3 keeps every swept dtype,
# float16 (largest finite value 65504) included, far from overflow.
SCALE_MAX = 1e3
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: The score generators a sweep may name (:data:`convex_attention.bench.generators.GENERATORS`
#: holds their functions; ``model`` is supplied by the experiment wing when asked for).
GENERATOR_NAMES = ("gaussian", "lesion", "model")
#: The largest batch × cells of one cell's scores: 2**31 values (8 GiB in float32), beyond
#: which no tensor of the cell could be allocated on the machines this runs on.
MAX_ELEMENTS = 2 ** 31
MIN_FIT_INSTANCES = 4

#: Samples per timed call of a batched cvxpylayers backend (moreau, cuclarabel, mpax) by
#: default, at most the batch measured: moreau was cheapest per sample in calls of 16 at 64²
#: (docs/benchmarks.md: 2-6x cheaper than in calls of 1-4; 64 cost more, and failed on two
#: graph families), and a GPU run's batch of 1024 would otherwise time moreau on 1024 samples.
CVX_BATCH = 16
#: Samples per timed call of a diffcp backend by default: diffcp solves sample by sample, so
#: its time per sample is flat in the batch (docs/benchmarks.md: 250 ms at 32² axial for
#: batches 1-8, 9.7-10.1 s at 64² mixed for 1-4), and 16 samples would take minutes a call.
DIFFCP_BATCH = 2

#: The structure families a sweep may name (:mod:`convex_attention.bench.structures` builds their
#: graphs; the facts below are the arithmetic the checks need, kept here so that the command
#: line's parser stays free of torch).
STRUCTURES = ("chain", "star", "axial", "grid_regions", "mixed")
#: Maps in a star, pooled onto one map of side size / STAR_FACTOR.
STAR_ARMS = 4
STAR_FACTOR = 4
#: The shared grid of grid_regions and mixed has side size / REGION_FACTOR, and as many regions as cells.
REGION_FACTOR = 8


def structure_maps(structure: str, dims: int, levels: int) -> int:
    """The number of maps ``M`` of a family's graph (``levels`` for a chain)."""
    return {"chain": levels, "star": STAR_ARMS + 1, "axial": dims + 1, "grid_regions": 3, "mixed": 4}[structure]


def structure_cells(structure: str, size: int, dims: int, levels: int = 2, factor: int = 2) -> int:
    """The total cells of a family's graph (at most: a region that no cell falls into is dropped)."""
    grid = (size // REGION_FACTOR) ** dims
    return {"chain": lambda: sum((size // factor ** k) ** dims for k in range(levels)),
            "star": lambda: STAR_ARMS * size ** dims + (size // STAR_FACTOR) ** dims,
            "axial": lambda: size ** dims + dims * size,
            "grid_regions": lambda: size ** dims + 2 * grid,
            "mixed": lambda: size ** dims + (size // 2) ** dims + 2 * grid}[structure]()


def check_structure(structure: str, size: int, dims: int, levels: int = 2, factor: int = 2) -> None:
    """ValueError, naming the fix, when ``structure`` has no graph at this size and dimensionality."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
    if structure == "chain":
        if size % factor ** (levels - 1) != 0:
            raise ValueError(f"size {size} does not divide: {levels} levels with factor {factor} need a multiple of "
                             f"{factor ** (levels - 1)}")
    elif structure == "star":
        if size % STAR_FACTOR != 0:
            raise ValueError(f"--structure star pools maps of side {size} onto side {size} / {STAR_FACTOR}: each "
                             f"size must be a multiple of {STAR_FACTOR}")
    elif structure == "axial":
        if dims < 2:
            raise ValueError("--structure axial pools a map onto each of its axes: it needs --dims 2 or 3")
    elif structure == "grid_regions" and dims < 2:  # (accepted before ca_rev265)
        # two partitions of a line into intervals never form a cycle: every 1-D draw was a tree of
        # cells, and a quarter of them at side 16 had the grid blocks for regions
        raise ValueError("--structure grid_regions draws regions that cut across the grid: in 1-D they are "
                         "intervals, a tree of cells with the grid's blocks; it needs --dims 2 or 3")
    elif size % REGION_FACTOR != 0 or size < 2 * REGION_FACTOR:
        raise ValueError(f"--structure {structure} has a shared grid of side size / {REGION_FACTOR} (and as many "
                         f"regions): each size must be a multiple of {REGION_FACTOR}, at least {2 * REGION_FACTOR}; "
                         f"got {size}")


def add_study_arguments(parser: argparse.ArgumentParser, outputs, draws: int) -> None:
    """The options every study script over the structures shares (benchmarks/study_*.py):
    ``--out`` (the folder of ``outputs``), ``--draws`` per family and set, ``--size`` (checked
    by :func:`check_size_of_every_structure`), ``--seed`` and ``--overwrite``."""
    parser.add_argument("--out", required=True, help=f"folder for {' and '.join(outputs)}")
    parser.add_argument("--draws", metavar="N", type=int_in(1, 100_000, "draws"), default=draws,
                        help=f"draws per family and set, from 1 to 100000 (default {draws})")
    parser.add_argument("--size", metavar="N", type=int_in(1, 4096, "size"), default=16,
                        help="map side, one every family draws (a multiple of 8 from 16 to 4096; default 16)")
    parser.add_argument("--seed", metavar="N", type=int_in(0, SEED_MAX, "seed"), default=7,
                        help=f"seed of the draws, from 0 to {SEED_MAX} (default 7)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace the {' and '.join(outputs)} of an earlier study in --out (without it such a "
                             f"folder is refused, exit 2)")


def check_study_arguments(parser, args: argparse.Namespace, outputs) -> list[str]:
    """The shared options of :func:`add_study_arguments` checked before any work, each failure a
    usage error (exit 2): ``--size`` (:func:`check_size_of_every_structure`) and ``--out`` (no
    earlier study's ``outputs`` there without ``--overwrite``, a folder that can be written,
    made here).  Returns the folders of ``--out`` this made (for :func:`run_study`)."""
    made = parser.folders_to_make(args.out)
    try:  # the families' own rule (a multiple of 16 was asked: 24 draws every family, a review)
        check_size_of_every_structure(args.size)
        check_fresh_out_dir(args.out, outputs, args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    return made


def run_study(parser, out: str, study, made: list[str] | tuple = ()) -> int:
    """A study script's run of ``study()`` (its exit status) into ``out``: a failure after the
    checks is one line on stderr, exit 1, Ctrl-C one line, exit 130, and the folders ``made`` for
    it (:func:`check_study_arguments`' return) are removed again if left empty
    (``parser.run_failed``, ``parser.run_interrupted``: a traceback had ended the study scripts,
    ca_rev141, ca_rev171; the folder, made by the checks, had never been seen as made: ca_rev172)."""
    os.makedirs(out, exist_ok=True)
    try:
        return study()
    except KeyboardInterrupt:  # (a traceback had ended them: ca_rev171)
        return parser.run_interrupted(f"what the study wrote, if anything, is in {out}", made)
    except Exception as err:  # noqa: BLE001  (one line, exit 1, as every command)
        return parser.run_failed(err, made)


def check_size_of_every_structure(size: int) -> None:
    """ValueError unless every structure draws 2-D maps of side ``size`` (a study over all of
    them: a multiple of 8, at least 16), in one message for the ``--size`` of the script that
    asks (one family's own message names another command's flags)."""
    try:
        for structure in STRUCTURES:
            check_structure(structure, size, dims=2)
    except ValueError:
        raise ValueError(f"--size must be one every family draws: a multiple of 8, at least 16; got {size}") from None


#: The built-in methods (:data:`convex_attention.METHODS`) and cvxpylayers backends
#: (:data:`convex_attention.cvx.BACKENDS`) by name, for the help only: the registry and the
#: backend table import torch, and building the parser (``--help``) must not.  The checks
#: ask the registry and the table themselves; tests/test_sweep.py keeps these lists equal.
METHOD_NAMES = ("softmax", "exact", "cvxpylayers", "dual", "learned_dual")
BACKEND_NAMES = ("diffcp-clarabel", "diffcp-scs", "moreau", "cuclarabel", "mpax")


def _registry() -> dict:
    from ..methods import REGISTRY  # the core's registry, which brings torch: loaded when a value is checked

    return REGISTRY


def _backends() -> tuple:
    from ..cvx import BACKENDS  # the backend table lives with the cvxpylayers wrapper

    return BACKENDS


def fit_instances(config: SweepConfig, n_cells: int) -> int:
    """Training instances of a cell of ``n_cells`` cells: ``fit_instances``, fewer where
    ``fit_max_values`` caps instances × cells (never fewer than :data:`MIN_FIT_INSTANCES`)."""
    return capped_instances(config.fit_instances, config.fit_max_values, n_cells)


def capped_instances(instances: int, max_values: int | None, n_cells: int) -> int:
    """:func:`fit_instances` of ``instances`` training instances under the cap ``max_values``
    (``None``: no cap) on instances × ``n_cells`` cells."""
    if max_values is None:
        return instances
    return max(min(instances, max_values // n_cells), min(MIN_FIT_INSTANCES, instances))


_METHOD_NAMES = Choice(lambda: tuple(_registry()), listed=METHOD_NAMES)
_BACKEND_NAMES = Choice(lambda: _backends(), listed=BACKEND_NAMES)


def _check_cells(config: SweepConfig) -> None:
    """Every size divides through its levels (or its structure's grids), and every cell's
    scores (and the training instances of the learned duals) fit in memory."""
    for structure, size, levels, dims in itertools.product(config.structures, config.sizes, config.levels,
                                                           config.dims):
        check_structure(structure, size, dims, levels, config.factor)
    registry = _registry()
    learned = any(registry[m].needs_duals for m in config.methods if m in registry)
    for structure, size, levels, dims, batch in itertools.product(config.structures, config.sizes, config.levels,
                                                                  config.dims, config.batches):
        cells = structure_cells(structure, size, dims, levels, config.factor)
        shape = f"{levels} levels" if structure == "chain" else f"structure {structure}"
        if batch * cells > MAX_ELEMENTS:
            raise ValueError(f"batch {batch} x {cells} cells (size {size}, {dims}-D, {shape}) is "
                             f"{batch * cells:.3g} values per tensor, above the {MAX_ELEMENTS:.3g} any cell may hold; "
                             f"use smaller --sizes, --dims or --batch")
        train = fit_instances(config, cells)
        if learned and train * cells > MAX_ELEMENTS:
            raise ValueError(f"--fit-instances {config.fit_instances}: {train} training instances x {cells} cells "
                             f"(size {size}, {dims}-D, {shape}) is {train * cells:.3g} values, above the "
                             f"{MAX_ELEMENTS:.3g} any cell may hold; use a smaller --fit-instances or set "
                             f"--fit-max-values")


@dataclass
class SweepConfig:
    """One sweep: its axes, the score generator and the measurement settings.

    ``cvx_backends``: the cvxpylayers backends to time, each its own row (``None``: every
    installed one, :func:`convex_attention.cvx.available_backends`).  ``amortised_steps``:
    Adam steps training the amortised dual on ``fit_instances`` training instances.
    ``fit_max_values``: a cap on training instances × cells per cell (the training set of
    large cells shrinks to fit, to at least :data:`MIN_FIT_INSTANCES` instances); ``None``:
    no cap.
    """

    methods: tuple = setting(METHOD_NAMES, Many(_METHOD_NAMES, distinct=True), "methods to run")
    structures: tuple = setting(("chain",), Many(Choice(STRUCTURES), distinct=True),
                                "structure families: chain (levels of grids), star (4 maps of side N onto one of side "
                                "N/4), axial (a map onto its rows and columns), grid_regions (a map onto its grid of "
                                "side N/8 and as many regions cutting across it), mixed (maps of side N and N/2 onto a "
                                "shared grid and shared regions); --levels shapes the chain only",
                                flag="--structure")
    sizes: tuple = setting((8, 16, 32, 64, 128, 256), Many(Int(low=1, high=1 << 20), distinct=True),
                           "finest grid side; level k has side N / factor^k")
    levels: tuple = setting((2, 3), Many(Int(low=2, high=16), distinct=True),
                            "numbers of levels L (each needs the finest side divisible by factor^(L-1))")
    batches: tuple = setting((16,), Many(Int(low=1, high=1 << 20), distinct=True),
                             "batch sizes (samples per solve)", flag="--batch")
    dims: tuple = setting((2,), Many(Int(low=1, high=3), distinct=True), "grid dimensionality (1, 2 or 3)")
    temperatures: tuple = setting((1.0,), Many(Real(low=0.0, low_open=True), distinct=True),
                                  "one temperature shared by all levels, per sweep value (positive, finite)",
                                  flag="--temperature")
    dtypes: tuple = setting(("float32",), Many(Choice(DTYPES), distinct=True),
                            "dtypes of the scores (half precision is computed in float32)", flag="--dtype")
    devices: tuple = setting(("cpu",), Many(Text(what="cpu, cuda or cuda:N"), distinct=True),
                             "devices (cpu, cuda, cuda:N)",
                             flag="--device", shown="cpu, plus cuda when present")
    generator: str = setting("lesion", Choice(GENERATOR_NAMES),
                             "score generator: i.i.d. Gaussian, lesion-like blobs, or a trained model's scores")
    scale: float = setting(1.0, Real(low=0.0, high=SCALE_MAX, low_open=True),
                           "score scale of the generator (scores reach about 6 x scale)")
    checkpoint: str | None = setting(None, Text(optional=True, what="a checkpoint path"),
                                     "model checkpoint for --generator model")
    factor: int = setting(2, Int(low=2, high=64), "pooling factor per dimension between levels")
    repeats: int = setting(10, Int(low=1, high=100_000),
                           "timed repetitions per method and cell (a cvxpylayers cell is timed cvx_repeats times "
                           "after one untimed solve, whatever --repeats and --warmup say: bench.json's config "
                           "records it)")
    warmup: int = setting(3, Int(low=1, high=100_000),
                          "untimed repetitions per cell (after one global warm-up before the first cell; not for "
                          "cvxpylayers cells)")
    threads: int = setting(1, Int(low=1, high=1024),
                           "torch threads the sweep computes with, recorded in bench.json and on every figure; one "
                           "thread keeps the timings comparable on a shared machine, where threads wait on each "
                           "other")
    budget: float = setting(60.0, Real(low=0.0, high=1e7, low_open=True),
                            "seconds a cvxpylayers cell may take: estimated from the cells measured so far before "
                            "it starts, then from its first (untimed) solve; cells over it are recorded as skipped "
                            "with the estimate or that solve's time")
    cvx_max_cells: int = setting(6000, Int(low=1, high=1 << 30), "cap on problem size (total cells) for cvxpylayers")
    cvx_batch: int = setting(CVX_BATCH, Int(low=1, high=100_000),
                             "samples timed per cell of a batched cvxpylayers backend (moreau, cuclarabel), "
                             "at most the cell's batch: moreau is cheapest per sample in calls of about 16 "
                             "(docs/benchmarks.md)")
    diffcp_batch: int = setting(DIFFCP_BATCH, Int(low=1, high=100_000),
                                "samples timed per cell of a diffcp backend (diffcp-clarabel, diffcp-scs), at most "
                                "the cell's batch: diffcp solves sample by sample, so its time per sample does not "
                                "fall with the batch")
    cvx_repeats: int = setting(2, Int(low=1, high=100_000), "timed repetitions per cvxpylayers cell", flag="")
    cvx_backends: tuple | None = setting(None, Many(_BACKEND_NAMES, optional=True, distinct=True),
                                         "cvxpylayers backends, each its own row (one that cannot run here is a "
                                         "usage error)", shown="every installed one")
    fit_instances: int = setting(128, Int(low=1, high=1 << 20),
                                 "training instances for the fitted shared λ of learned_dual")
    fit_max_values: int | None = setting(None, Int(low=1, high=1 << 40, optional=True),
                                         "cap on training instances x cells per cell: large cells train the fitted "
                                         "and amortised λ on fewer instances (at least 4)", shown="no cap")
    fit_steps: int = setting(150, Int(low=1, high=1 << 20), "Adam steps fitting the shared λ")
    amortised_steps: int = setting(300, Int(low=1, high=1 << 20), "Adam steps training the amortised dual's network")
    dual_tol: float = setting(1e-6, Real(low=0.0, high=1.0, low_open=True), "tolerance of the dual solver", flag="")
    seed: int = setting(0, SEED, "seed of the score generator (training instances use seed+1)")
    max_cells: int | None = setting(None, Int(low=1, high=1 << 30, optional=True),
                                    "stop after this many new cells (resume later with --resume)", shown="no limit")

    def __post_init__(self):
        normalise_settings(self)

    def cells(self):
        """The sweep's cells, structure by structure (a chain-only sweep keeps the order it always
        had).  A chain has one cell per level count; every other structure one cell whose
        ``levels`` is its number of maps."""
        for structure in self.structures:
            levels_axis = self.levels if structure == "chain" else (None,)
            for dims, size, levels, batch, temp, dtype, device in itertools.product(
                    self.dims, self.sizes, levels_axis, self.batches, self.temperatures, self.dtypes, self.devices):
                maps = levels if levels is not None else structure_maps(structure, dims, 0)
                yield {"structure": structure, "generator": self.generator, "scale": float(self.scale),
                       "dims": int(dims), "size": int(size), "levels": int(maps), "batch": int(batch),
                       "temperature": float(temp), "dtype": dtype, "device": device, "seed": int(self.seed)}


@dataclass
class VerifyConfig:
    """``convex-attention verify``'s settings: how many random instances, their seed, and
    how long a user's dual solver may take per instance (it runs in a process of its own,
    :mod:`convex_attention.bench.isolation`; past ``timeout`` that process is stopped and
    the instance fails)."""

    n: int = setting(24, Int(low=1, high=100_000),
                     "number of random instances, cycling through the ten kinds (six chains, then star, axial, "
                     "grid_regions, mixed): --n 10 or more draws every kind")
    seed: int = setting(0, SEED, "seed of the random instances")
    timeout: float = setting(60.0, Real(low=0.0, high=86_400.0, low_open=True),
                             "seconds one instance's call of --dual-solver may take (and its module to import); "
                             "past it the solver's process is stopped and the instance's checks fail")

    def __post_init__(self):
        normalise_settings(self)


def quick_sweep(**given) -> SweepConfig:
    """The ``--quick`` sweep: small sizes, 2-D and 3-D, 2 and 3 levels (docs/benchmarks.md
    gives its measured wall time), with ``given`` settings replacing its own."""
    return SweepConfig(**{**dict(sizes=(4, 8, 16, 32), levels=(2, 3), batches=(8,), dims=(2, 3),
                                 temperatures=(1.0,), dtypes=("float32",), repeats=5, warmup=2, budget=15.0,
                                 cvx_max_cells=1500, diffcp_batch=1, cvx_repeats=1, fit_instances=64,
                                 fit_max_values=2 ** 16, fit_steps=100, amortised_steps=150), **given})


def check_sweep(config: SweepConfig) -> None:
    """Reject a sweep that cannot run, before anything is measured (ValueError naming the
    option, the accepted range and the fix): every setting against its kind, then the
    cells (sizes that divide, tensors that fit), the temperatures the core accepts in each
    swept dtype, the devices that exist here (each once), and a checkpoint for the model
    generator, and for it alone."""
    check_values(config)
    if config.checkpoint is not None and config.generator != "model":
        raise ValueError(f"--checkpoint needs --generator model (the checkpoint's model makes the scores); "
                         f"--generator {config.generator} does not read it: leave --checkpoint out")
    _check_cells(config)
    _check_with_the_core(config)
    if config.generator == "model" and not config.checkpoint:
        raise ValueError("--generator model needs --checkpoint (a model trained by `convex-attention train`)")


def check_values(config: SweepConfig) -> None:
    """Every setting of ``config`` against its kind (ValueError naming the option): the
    first of :func:`check_sweep`'s checks."""
    try:
        check_settings(config)
    except ConfigError as err:
        option = next((s for s in _options() if s[0] == err.field), (err.field, f"--{err.field}"))[1]
        # a setting off the command line (flag ""): the message names it already, as Python spells it
        raise ValueError(f"{option}: {err}" if option else str(err)) from None


def _options():
    return [(n, s.option(n)) for n, s in declared(SweepConfig).items()]


def _check_with_the_core(config: SweepConfig) -> None:
    """The checks that need torch and the core: the temperatures each dtype accepts and the
    devices (a backend named in ``cvx_backends`` that cannot run here is refused by the command
    line; one left out of it is not timed)."""
    import torch

    from ..validation import check_temperatures

    maps = sorted({structure_maps(s, d, levels) for s in config.structures for d in config.dims
                   for levels in config.levels})
    for t in config.temperatures:
        for levels, dt in itertools.product(maps, config.dtypes):
            try:  # the core's accepted range for this dtype and number of levels (maps)
                check_temperatures([float(t)] * levels, levels, dtype=getattr(torch, dt))
            except ValueError as err:
                raise ValueError(f"--temperature {t:g} with {levels} levels in {dt}: {err}") from err
    seen: dict = {}
    for dev in config.devices:
        check_device(dev)
        same = seen.setdefault(device_identity(dev), dev)
        if same != dev:  # e.g. cuda and cuda:0: every cell measured twice, as two rows
            raise ValueError(f"--device {same} {dev}: the same device, listed twice; list each device once")


def environment_device(devices) -> str:
    """The device of ``devices`` whose environment bench.json records: the first that is not
    the CPU (its GPU is what the figures' footers name and what a resume must find again),
    else the first.  A run over ``--device cpu cuda`` recorded the CPU's, naming no GPU at all."""
    import torch

    return next((d for d in devices if torch.device(d).type != "cpu"), devices[0])


def device_identity(dev: str) -> tuple[str, int]:
    """``(type, index)`` of the device ``dev`` names, whatever its spelling: ``cpu`` and
    ``cpu:0`` are one device, as are ``cuda`` and ``cuda:<current>``.  Parsed only: the
    device need not be on this machine (a stored run's may not be)."""
    import torch

    device = torch.device(dev)
    if device.index is not None:
        return device.type, device.index
    # the default device of its type: cuda is cuda:<current>, cpu is cpu:0
    current = torch.cuda.current_device() if device.type == "cuda" and torch.cuda.is_available() else 0
    return device.type, current


def check_device(dev: str, flag: str = "--device"):
    """``torch.device(dev)`` for a device this machine has (cpu, cuda or cuda:N); ValueError
    naming the option ``flag`` otherwise, before any work."""
    import torch

    from ..io.environment import device_unavailable

    try:
        device = torch.device(dev)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {dev!r} for {flag}; use cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {dev!r} for {flag}; use cpu, cuda or cuda:N")
    reason = device_unavailable(device)
    if reason is not None:
        raise ValueError(f"{flag} {dev}: {reason}; use {flag} cpu")
    return device
