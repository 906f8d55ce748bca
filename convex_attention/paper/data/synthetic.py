"""Seeded synthetic weakly-annotated lesion datasets ("MRI-like", offline, fast).

Two generators share one head model: ``channels`` modalities (default 4, think FLAIR,
T1, T1ce, T2) of an elliptical head, textured tissue, a bright skull ring, a smooth
multiplicative bias field, noise, and a per-image per-modality normalisation over the
head.  Image ``i`` depends only on ``(seed, i)``: a dataset is deterministic and lazy.
Items are ``(image (C, H, W) float32, label int64, mask (H, W) bool)``; the mask marks
lesion pixels only and is for evaluation: training uses :func:`labels_only`.

``"rim"``: rim-enhancing lesions among lesion mimics (:class:`SyntheticRimLesions`, the default)
--------------------------------------------------------------------------------------------------

A benchmark where a classifier *must* look at spatial arrangement, so that attention is
necessary and a model-free map cannot localise the lesions.

* **Structures.**  Every image holds the same number ``N = 1 + M`` of lesion-like
  structures, in both classes.  A lesion image (label 1) holds one lesion and ``M``
  mimics; a normal image holds ``N`` mimics.  ``M = floor(mimic_rate)``, plus one with
  probability ``frac(mimic_rate)``.  The lesion is a random one of the placed structures
  (so its position has the mimics' distribution).
* **One intensity signature for all.**  A structure has two compartments: a *core*
  (gains ``+0.5 / -0.8 / -0.3 / +1.2`` in FLAIR / T1 / T1ce / T2: necrosis with oedema)
  and a *rim* (``+0.7 / -0.2 / +1.3 / +0.5``: contrast enhancement).  Its pixels replace
  the tissue: the brain's mean level per modality plus the compartment's gains, times a
  per-pixel factor ``1 + 0.3 eps`` (heterogeneity, i.i.d. per pixel).  Lesions and
  mimics draw outline, area, core share (35-55 %), amplitude and gains from one
  distribution, and nothing spatially correlated (texture, bias field) is left inside a
  structure, so the values of its pixels, as a multiset, have the same distribution
  whatever its kind: intensity statistics (extremes included) and any per-pixel channel
  combination see lesions and mimics alike.  Noise is added to the whole image after.
* **The label is spatial.**  The kinds differ only in *where* the core and rim pixels
  go inside the structure's outline (pixels are ranked by a key and the first
  ``core share x area`` become core):

  - ``lesion``: by depth: a necrotic core enclosed by an enhancing rim (the radiological
    hallmark of a high-grade glioma).  The rim is one pixel thick at least from 56² on
    in all but about one lesion in 500 (a core pixel on a lesion's outline: none in 966
    lesions at 56² and 64², difficulty 0 and 0.5; one pixel in one of 483 lesions at each
    size at difficulty 1, seed 7, images 37 at 56² and 266 at 64²: ca_rev261);
    below, the smallest lesions' rims are thinner than a pixel in places and their core
    touches the tissue, as an inverted mimic's does (at 48² and difficulty 1, 2 of 25 rim
    lesions and 6 of 60 brightest ones; at 32², about half).  Keeping the lesion's core share
    equal to the mimics' (so that its pixel values say nothing) comes first, so such
    lesions are kept as they are: use 64² or more where the enclosure must hold;
  - mimic ``inverted``: by reversed depth: an enhancing centre with a core-signature
    halo (the enclosure is inverted: core pixels touch the tissue);
  - mimic ``split``: along a random line: the two compartments side by side;
  - mimic ``mottled``: by a smooth random field: the compartments interleaved in patches.

  Telling them apart needs context at the scale of the structure (``inverted`` is the
  most local: a few pixels show which compartment touches the tissue; ``split`` and
  ``mottled`` need the outline as a whole).  A 1x1 convolution cannot.
* **Lesion-to-lesion variation.**  Each structure's amplitude is drawn from
  ``(1 - 0.55 * difficulty) * U[0.8, 1.0]`` and each compartment's channel gains are
  multiplied by ``exp(N(0, 0.2^2))`` independently per channel, so both the brightness
  and the channel signature vary from lesion to lesion.
* **Sizes follow the paper's area rule.**  BraTS slices are kept when the tumour covers
  more than 1000 px of 240 x 240, so every structure (lesion or mimic) covers
  ``A_min = ceil(1000 * (S / 240)^2)`` pixels or more (285 px at S = 128, 40 px at
  S = 48), drawn from ``A_min * U[1, 2 - 0.8 * difficulty]``.  The outline is a lobulated
  disc (radius ``1 + sum_k a_k cos(k theta + phi_k)``, k = 2..4, ``a_k <= 0.08``); the
  area is exact (the ``area`` pixels of lowest normalised radius).  Structures neither
  overlap nor touch; a structure that finds no room inside the brain is dropped,
  whatever its kind (``dropped`` in ``render``; none at S >= 48 with the defaults, in 8 to
  11 images of 100 at S = 32 (25 and 33 of 300, seeds 0 and 7); at difficulty 0, whose
  structures are larger, 7 structures in 500 images at 48², 12 in 1000 at 56² and 2 in
  1000 at 64², seed 7: ca_rev261).

Knobs: ``difficulty`` in [0, 1] (amplitude ``1 - 0.55 d``, noise ``0.03 + 0.12 d``,
sizes closer to the minimum), ``mimic_rate`` in [0, 8] (mimics per lesion image; default
3), ``mimic_types`` (a subset of ``MIMIC_TYPES``; hold one out by training without it and
evaluating on ``SyntheticRimLesions(..., mimic_types=("mottled",))``) and
``lesion_fraction`` (share of lesion images).  ``render(index)`` also returns each
pixel's compartment and structure, and each structure's kind.  With ``mimic_rate = 0``
a lesion image holds its lesion alone: intensity statistics still cannot tell the
classes apart, but a per-pixel map finds the lesion (check (b) below fails).

The validity checks of :mod:`convex_attention.paper.validity` (``convex-attention data
check``) measure what this design promises: location-free statistics near chance, and
no per-pixel map that singles the lesions out among the mimics.

``"brightest"``: the lesion decides only when it is the brightest structure (:class:`SyntheticBrightestLesions`)
------------------------------------------------------------------------------------------------------------

The ``"rim"`` structures with a relative label, built so that a uniform pool has to learn
what softmax attention gets for free (docs/experiment.md, History):

* **One lesion in every image**, among ``mimic_rate`` mimics (default 5), so presence says
  nothing.  Label 1 when the lesion is the brightest structure; the mask marks it then,
  and is empty in normal images.
* **Amplitudes share a per-image offset** (:data:`BRIGHTEST`): structure ``j`` has
  amplitude ``strength * (0.3 + o + u_j)``, ``o ~ U[0, 2]`` per image; the brightest has
  ``u = 1``, the others ``u ~ U[0.4, 0.8]``; in a normal image a random mimic is the
  brightest and the lesion has ``u ~ U[0.55, 0.8]``.  Scores linear in brightness give the
  same softmax whatever ``o`` is; a uniform pool needs a gate that grows exponentially over
  the offset's range.
* **No per-pixel shortcut.**  Per-pixel noise is additive (std 1.0 per channel in raw
  tissue units) rather than multiplicative, and 12 bright specks (a seventh of the
  minimum area, amplitudes like the brightest structure's, one signature each) lie in the
  tissue: a per-pixel channel combination ranks them with the lesion.  The channel gains
  vary less between structures (``exp(N(0, 0.1^2))``) so that brightness is the
  structure's own.  Images are normalised by median and IQR over the head, which the
  structures barely move, so the offset stays.

On the development split this rule came closest to the old check (c) of all the rules
tried, but did not pass it (docs/experiment.md, History).  Under the rule that replaced it,
(c′) the maps drive the ranking, its dev stage accepted it, and it is the benchmark of the
committed test run (docs/experiment.md).

``"blobs"``: the previous generator (:class:`SyntheticLesions`), kept for comparison
-------------------------------------------------------------------------------------

Positive images carry 1-3 lesions: smooth irregular blobs with one fixed channel
signature (``1.0 / -0.6 / 0.3 / 0.9``), bright in FLAIR and T2 and dark in T1; every image
carries distractors bright in one or two channels only.  ``difficulty`` lowers the lesion
contrast and size and adds noise and distractors.  Its labels can be read from
location-free intensity statistics (the validity check fails on it), and many of its
lesions are smaller than the area rule allows.
"""
from __future__ import annotations

import math
from collections.abc import Sized
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypedDict, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import IMAGES_PER_SEED, MIMIC_TYPES

__all__ = ["SyntheticLesions", "SyntheticRimLesions", "SyntheticBrightestLesions", "render_image", "render_rim_image",
           "synthetic_dataset", "labels_only", "min_lesion_area", "GENERATORS", "MIMIC_TYPES", "LABEL_RULES",
           "BRIGHTEST", "DECIDING_CHANNELS"]

#: Per generator, the channels an example figure shows, ``(index, label)``, and what they
#: show: what separates a lesion from a mimic (``rim``: where the enhancing rim lies; ``brightest``:
#: the brightness), so a reader can judge a map against it.
DECIDING_CHANNELS = {
    "rim": (((0, "ch. 0 (FLAIR-like)"), (2, "ch. 2 (T1ce-like)")),
            "ch. 0 (FLAIR-like) shows every structure, lesion or mimic; ch. 2 (T1ce-like) shows the enhancing "
            "rim, which encloses a dark core in a lesion only (mimics: inverted, split or mottled)"),
    "brightest": (((0, "ch. 0 (FLAIR-like)"), (3, "ch. 3 (T2-like)")),
                  "the label is 1 when the lesion is the brightest structure: compare the structures' brightness "
                  "in ch. 0 (FLAIR-like) and ch. 3 (T2-like)"),
    "blobs": (((0, "ch. 0 (FLAIR-like)"), (2, "ch. 2 (T1-like)")),
              "lesions are bright in ch. 0 and ch. 3 and dark in ch. 1; distractors are bright in one or two "
              "channels only"),
}


@lru_cache(maxsize=32)
def _gaussian_fft(size: int, sigma: float) -> Tensor:
    freq = torch.fft.fftfreq(size)
    f2 = freq[:, None] ** 2 + freq[None, :] ** 2
    return torch.exp(-2 * (math.pi * sigma) ** 2 * f2)


def _smooth_noise(g: torch.Generator, n: int, size: int, sigma: float) -> Tensor:
    """``n`` maps of Gaussian-smoothed white noise, each rescaled to unit std."""
    noise = torch.randn(n, size, size, generator=g)
    out = torch.fft.ifft2(torch.fft.fft2(noise) * _gaussian_fft(size, sigma)).real
    return out / out.flatten(1).std(1).clamp(min=1e-8).view(n, 1, 1)


def _blob(g: torch.Generator, xx: Tensor, yy: Tensor, cx: float, cy: float, radius: float) -> Tensor:
    """Smooth irregular blob in [0, 1]: a union of 2–4 anisotropic Gaussians."""
    out = torch.zeros_like(xx)
    for _ in range(int(torch.randint(2, 5, (1,), generator=g))):
        ox, oy = (torch.rand(2, generator=g) - 0.5) * radius
        rx, ry = radius * (0.5 + 0.6 * torch.rand(2, generator=g))
        angle = float(torch.rand(1, generator=g)) * math.pi
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = xx - (cx + ox), yy - (cy + oy)
        u, v = c * dx + s * dy, -s * dx + c * dy
        out = torch.maximum(out, torch.exp(-0.5 * ((u / rx) ** 2 + (v / ry) ** 2)))
    return out


def _tile(values, channels: int) -> Tensor:
    """A per-modality constant for 4 modalities, repeated to ``channels``: ``(channels,)``."""
    return torch.tensor(list(values) * ((channels + 3) // 4))[:channels]


def _head(g: torch.Generator, S: int, channels: int):
    """The head without lesions: ``(xx, yy, img (C, S, S), brain (S, S), skull (S, S), ellipse)``.

    ``xx, yy`` are coordinates in [-1, 1]; ``brain`` and ``skull`` are soft masks in
    [0, 1]; ``ellipse`` is ``(ax, ay, angle)``, the brain's semi-axes (times 0.93) and
    rotation.
    """
    lin = torch.linspace(-1, 1, S)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")

    # head: a slightly rotated ellipse, the brain inside, a skull ring around it
    ax, ay = 0.78 + 0.1 * torch.rand(2, generator=g)
    angle = float(torch.rand(1, generator=g) - 0.5) * 0.4
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    r = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    brain = torch.sigmoid((0.93 - r) * 60)
    skull = torch.exp(-((r - 1.0) / 0.035) ** 2)

    # tissue: two smooth textures mixed per modality (grey / white matter) plus fine grain
    coarse = _smooth_noise(g, 2, S, sigma=S / 16)
    fine = _smooth_noise(g, channels, S, sigma=1.2)
    matter = torch.sigmoid(2.5 * coarse[0])
    base = _tile([0.55, 0.7, 0.5, 0.6], channels)
    contrast = _tile([0.25, -0.3, 0.15, 0.3], channels)
    img = base.view(-1, 1, 1) + contrast.view(-1, 1, 1) * matter + 0.08 * fine
    img = img * brain + _tile([0.3, 1.0, 0.4, 0.2], channels).view(-1, 1, 1) * skull
    return xx, yy, img, brain, skull, (float(ax), float(ay), angle)


def _bias(g: torch.Generator, S: int) -> Tensor:
    """A smooth multiplicative bias field (coil inhomogeneity): ``(S, S)``, around 1."""
    return torch.exp(0.25 * _smooth_noise(g, 1, S, sigma=S / 5)[0])


def _finish(g: torch.Generator, img: Tensor, brain: Tensor, skull: Tensor, difficulty: float,
            bias: Tensor | None = None, robust: bool = False) -> Tensor:
    """Bias field (unless ``bias`` is given: already applied), noise and the per-modality
    normalisation over the head (mean and std; with ``robust``, median and IQR / 1.349, which
    the structures barely move): ``(C, S, S)`` float32."""
    channels, S = img.shape[0], img.shape[-1]
    if bias is None:
        img = img * _bias(g, S)
    img = img + (0.03 + 0.12 * difficulty) * torch.randn(channels, S, S, generator=g)
    head = (brain + skull) > 0.5
    if robust:
        q = torch.quantile(img[:, head], torch.tensor([0.25, 0.5, 0.75], dtype=img.dtype), dim=1)
        mean, std = q[1].view(-1, 1, 1), ((q[2] - q[0]) / 1.349).clamp(min=1e-6).view(-1, 1, 1)
    else:
        mean = img[:, head].mean(1).view(-1, 1, 1)
        std = img[:, head].std(1).clamp(min=1e-6).view(-1, 1, 1)
    return (((img - mean) / std) * head).float()


def render_image(seed: int, index: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                 lesion_fraction: float = 0.5) -> tuple[Tensor, int, Tensor]:
    """The ``index``-th image of the dataset with this ``seed``: ``(image, label, mask)``."""
    g = torch.Generator().manual_seed(seed * IMAGES_PER_SEED + index)
    S = image_size
    label = int(torch.rand(1, generator=g) < lesion_fraction)
    xx, yy, img, brain, skull, _ = _head(g, S, channels)

    mask = torch.zeros(S, S, dtype=torch.bool)
    lesion_gain = _tile([1.0, -0.6, 0.3, 0.9], channels).view(-1, 1, 1)
    strength = 1.0 - 0.65 * difficulty
    if label:
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            radius = (0.06 + 0.12 * float(torch.rand(1, generator=g))) * (1.0 - 0.45 * difficulty)
            rho, phi = 0.55 * float(torch.rand(1, generator=g)) ** 0.5, 2 * math.pi * float(torch.rand(1, generator=g))
            blob = _blob(g, xx, yy, rho * math.cos(phi), rho * math.sin(phi), radius) * brain
            amp = strength * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
            img = img + amp * lesion_gain * blob
            marked = blob > 0.5
            if not marked.any() and float(blob.max()) > 0:  # a lesion smaller than a pixel (S near 16)
                marked = blob == blob.max()  # still marks its peak: a lesion image's mask is never empty
            mask |= marked
    # distractors: bright structures that are not lesions
    n_distract = int(torch.poisson(torch.tensor(1.0 + 3.0 * difficulty), generator=g))
    for _ in range(n_distract):
        kind = int(torch.randint(0, 3 if difficulty >= 0.3 else 2, (1,), generator=g))
        rho, phi = 0.7 * float(torch.rand(1, generator=g)) ** 0.5, 2 * math.pi * float(torch.rand(1, generator=g))
        cx, cy = rho * math.cos(phi), rho * math.sin(phi)
        if kind == 0:  # round spot, bright in T1ce only
            sigma = 0.03 + 0.03 * float(torch.rand(1, generator=g))
            spot = torch.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sigma ** 2)
            gain = torch.zeros(channels)
            gain[2 % channels] = 0.9
        elif kind == 1:  # vessel-like curve, bright in FLAIR and T1ce
            t = torch.rand(1, generator=g) * 2 * math.pi
            curve = torch.sin(3 * (xx * math.cos(t) + yy * math.sin(t)) + float(t)) * 0.15
            dist = (xx * -math.sin(t) + yy * math.cos(t) - curve - (cx * -math.sin(t) + cy * math.cos(t))).abs()
            spot = torch.exp(-(dist / 0.015) ** 2) * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.12)
            gain = torch.zeros(channels)
            gain[0] = 0.6
            gain[2 % channels] = 0.8
        else:  # FLAIR-bright blob, normal in T2 and T1: looks like a lesion in one modality
            spot = _blob(g, xx, yy, cx, cy, 0.05 + 0.08 * float(torch.rand(1, generator=g)))
            gain = torch.zeros(channels)
            gain[0] = strength * 0.9
        img = img + gain.view(-1, 1, 1) * spot * brain

    img = _finish(g, img, brain, skull, difficulty)
    return img, label, mask & (brain > 0.5)


class SyntheticLesions(Dataset):
    """``n`` images ``(image, label, mask)``; see the module docstring.

    Args:
        n: number of images.
        image_size: side of the square images (default 128).
        channels: modalities (default 4).
        difficulty: 0 (easy) … 1 (hard).
        lesion_fraction: probability that an image has lesions (label 1).
        seed: the dataset's seed; image ``i`` depends on ``(seed, i)`` only.
    """

    def __init__(self, n: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                 lesion_fraction: float = 0.5, seed: int = 0):
        if n <= 0:
            raise ValueError(f"a dataset needs at least one image, got n={n}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        _check_fractions(difficulty, lesion_fraction)
        _check_channels(channels)
        self.n, self.image_size, self.channels = n, image_size, channels
        self.difficulty, self.lesion_fraction, self.seed = difficulty, lesion_fraction, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        img, label, mask = render_image(self.seed, index, self.image_size, self.channels, self.difficulty,
                                        self.lesion_fraction)
        return img, torch.tensor(label), mask


#: Channel gains of the two compartments (FLAIR, T1, T1ce, T2), in raw tissue units.
CORE_SIGNATURE = (0.5, -0.8, -0.3, 1.2)
RIM_SIGNATURE = (0.7, -0.2, 1.3, 0.5)
HETEROGENEITY = 0.3  # per-pixel relative spread of a structure's gains
_LOBE_MAX = 0.08  # each of the 3 lobulation harmonics: at most 8 % of the radius
LABEL_RULES = ("presence", "brightest")
#: The "brightest" rule (:class:`SyntheticBrightestLesions`): amplitudes ``base + o + u``, with
#: the per-image offset ``o ~ U[0, offset_max]``; the decisive structure has ``u = 1``, the
#: others ``u ~ U[others]``, the lesion of a normal image ``u ~ U[lesion_in_normal]``;
#: additive per-pixel noise (per channel, in raw tissue units) instead of the multiplicative
#: heterogeneity; ``specks`` small bright structures of ``speck_area`` x the minimum area.
class _BrightestRule(TypedDict):
    offset_max: float
    base: float
    others: tuple[float, float]
    lesion_in_normal: tuple[float, float]
    gain_jitter: float
    pixel_noise: float
    specks: int
    speck_area: float
    speck_u: tuple[float, float]


BRIGHTEST: _BrightestRule = {"offset_max": 2.0, "base": 0.3, "others": (0.4, 0.8), "lesion_in_normal": (0.55, 0.8),
             "gain_jitter": 0.1, "pixel_noise": 1.0, "specks": 12, "speck_area": 0.15, "speck_u": (0.6, 1.1)}


def min_lesion_area(image_size: int) -> int:
    """The paper's area rule at this image size: ``ceil(1000 * (S / 240)^2)`` pixels.

    The paper keeps BraTS slices (240 x 240) whose tumour covers more than 1000 pixels; a
    lesion in an ``S x S`` image covers at least that share of the image.
    """
    return int(math.ceil(1000.0 * (image_size / 240.0) ** 2 - 1e-9))


def _is_bool(x) -> bool:
    return isinstance(x, (bool, np.bool_))


def _check_channels(channels) -> None:
    """Both generators' rule (the rim generator took ``True`` as one channel)."""
    if _is_bool(channels) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")


def _check_fractions(difficulty, lesion_fraction) -> None:
    """ValueError unless both are numbers in [0, 1] (a bool, NumPy's too, read as 0 or 1: refused)."""
    for name, value in (("difficulty", difficulty), ("lesion_fraction", lesion_fraction)):
        if _is_bool(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_rim_options(image_size: int, channels: int, difficulty: float, lesion_fraction: float,
                       mimic_rate: float, mimic_types) -> tuple[str, ...]:
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32 (lesions of the area rule need room), "
                         f"got {image_size!r}")
    _check_channels(channels)
    _check_fractions(difficulty, lesion_fraction)
    if _is_bool(mimic_rate) or not (math.isfinite(mimic_rate) and 0.0 <= mimic_rate <= 8.0):
        raise ValueError(f"mimic_rate must be in [0, 8] (mimics per lesion image), got {mimic_rate}")
    if isinstance(mimic_types, str):
        mimic_types = (mimic_types,)
    types = tuple(mimic_types)
    unknown = [t for t in types if t not in MIMIC_TYPES]
    if unknown or not types:
        raise ValueError(f"mimic_types must be a non-empty subset of {MIMIC_TYPES}, got {types!r}")
    return tuple(dict.fromkeys(types))


def _place(g: torch.Generator, extents: list[float], ax: float, ay: float, cos_a: float, sin_a: float,
           h: float, tries: int = 200, restarts: int = 25) -> list:
    """Centres ``(cx, cy)`` (or ``None``: no room) for discs of radius ``extents`` (pixels)
    inside the brain ellipse, at least one pixel apart.  Random sequential placement (the
    first of ``tries`` uniform candidates that fits), restarted from scratch when a disc
    finds no room (small images are crowded); the best attempt is kept."""
    best: list = []
    for _ in range(restarts):
        centres: list = []
        for extent in extents:
            # the draws come from the seeded torch stream; the arithmetic on them is numpy's, the
            # same IEEE float64 operations at a fraction of torch's per-call cost on 200 numbers
            cand = (2 * torch.rand(tries, 2, generator=g, dtype=torch.float64) - 1).numpy()
            u = cos_a * cand[:, 0] + sin_a * cand[:, 1]
            v = -sin_a * cand[:, 0] + cos_a * cand[:, 1]
            room = (0.93 - np.sqrt((u / ax) ** 2 + (v / ay) ** 2)) * min(ax, ay) / h  # pixels to the edge
            ok = room >= extent + 0.5
            placed = [(c, e) for c, e in zip(centres, extents) if c is not None]
            if placed:  # every placed disc at once (the same arithmetic per pair as one at a time)
                others = np.array([c for c, _ in placed])  # (P, 2)
                needed = np.array([extent + e + 1.0 for _, e in placed])  # (P,)
                gap = np.sqrt(((cand[:, None, :] - others) ** 2).sum(2)) / h  # (tries, P)
                ok &= (gap >= needed).all(1)
            hits = np.flatnonzero(ok)
            centres.append(tuple(cand[hits[0]].tolist()) if len(hits) else None)
        if all(c is not None for c in centres):
            return centres
        if sum(c is not None for c in centres) > sum(c is not None for c in best):
            best = centres
    return best or [None] * len(extents)


def render_rim_image(seed: int, index: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                     lesion_fraction: float = 0.5, mimic_rate: float = 3.0, mimic_types=MIMIC_TYPES,
                     details: bool = False, label_rule: str = "presence"):
    """The ``index``-th image of the ``"rim"`` dataset with this ``seed`` (module docstring).

    Returns ``(image (C, S, S) float32, label, mask (S, S) bool)``, or with
    ``details=True`` a dict with those under ``image``, ``label``, ``mask`` and also
    ``compartment`` ((S, S) int8: 0 tissue, 1 core signature, 2 rim signature),
    ``structure`` ((S, S) int16: the structure's number, -1 for tissue), ``kinds``
    (each structure's kind: ``"lesion"`` or a mimic type), ``areas`` (pixels),
    ``dropped`` (structures that found no room; 0 in practice from S = 48 on at difficulty
    0.5 or more, about one per 100 images at 48² and 56² at difficulty 0) and
    ``decisive`` ((S, S) bool): the structure that decides the label (under the presence
    rule the lesion, in lesion images only; under the brightest rule the brightest
    structure, in every image: the lesion when the label is 1, a mimic when it is 0).

    ``label_rule``: ``"presence"`` (the ``"rim"`` benchmark: label 1 when a lesion is
    present) or ``"brightest"`` (:class:`SyntheticBrightestLesions`: every image holds one
    lesion; label 1 when it is the brightest structure; ``details`` also gives each
    structure's ``amplitudes``, the image's ``offset`` and its ``specks``).
    """
    types = _check_rim_options(image_size, channels, difficulty, lesion_fraction, mimic_rate, mimic_types)
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {LABEL_RULES}, got {label_rule!r}")
    brightest = label_rule == "brightest"
    g = torch.Generator().manual_seed(seed * IMAGES_PER_SEED + index)
    S = image_size
    label = int(torch.rand(1, generator=g) < lesion_fraction)
    xx, yy, img, brain, skull, (ax, ay, angle) = _head(g, S, channels)
    inside = brain > 0.5
    bias = _bias(g, S)
    img = img * bias
    level = img[:, inside].mean(1, keepdim=True)  # (C, 1): the brain's mean level per modality
    h = 2.0 / (S - 1)  # pixel pitch in [-1, 1] coordinates
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    whole, frac = divmod(float(mimic_rate), 1.0)
    n_structures = 1 + int(whole) + int(float(torch.rand(1, generator=g)) < frac)
    a_min = min_lesion_area(S)
    max_factor = 2.0 - 0.8 * difficulty
    strength = 1.0 - 0.55 * difficulty
    core_sig, rim_sig = _tile(CORE_SIGNATURE, channels), _tile(RIM_SIGNATURE, channels)

    canvas = _Canvas(img.reshape(channels, -1), level, inside, xx, yy, h, S, core_sig, rim_sig)  # a view
    mask = torch.zeros(S * S, dtype=torch.bool)
    placed = _place_structures(g, n_structures, a_min, max_factor, ax, ay, cos_a, sin_a, h)
    dropped = n_structures - len(placed)
    if not placed:  # unreachable from S = 32 on: the first structure always fits
        raise RuntimeError(f"image {index} of seed {seed}: no room for a structure at image_size {S}")
    lesion_slot = int(torch.randint(len(placed), (1,), generator=g)) if label or brightest else -1
    amplitudes, offset = None, 0.0
    if brightest:
        amplitudes, offset = _brightest_amplitudes(g, len(placed), lesion_slot, label)
        amplitudes = [strength * a for a in amplitudes]
        # the rule defines the label: a lesion that is the only structure placed is the brightest
        label = int(max(range(len(placed)), key=amplitudes.__getitem__) == lesion_slot)

    kinds: list[str] = []
    areas: list[int] = []
    for slot, (area, lobes, centre) in enumerate(placed):
        kind = "lesion" if slot == lesion_slot else types[int(torch.randint(len(types), (1,), generator=g))]
        pixels = _draw_structure(g, canvas, len(kinds), kind, area, lobes, centre, strength,
                                 amplitudes[slot] if amplitudes is not None else None)
        if kind == "lesion" and label:
            mask[pixels] = True
        kinds.append(kind)
        areas.append(area)
    flat, structure, compartment = canvas.flat, canvas.structure, canvas.compartment

    specks = _add_specks(g, flat, level, inside, structure, xx, yy, a_min, offset, strength,
                         (core_sig, rim_sig)) if brightest else 0
    img = _finish(g, img, brain, skull, difficulty, bias=bias, robust=brightest)
    mask = mask.view(S, S)
    if not details:
        return img, label, mask
    # the structure that decides the label: the brightest (either label) under the
    # brightest rule; the lesion (lesion images only) under the presence rule
    if brightest:
        assert amplitudes is not None  # drawn above, under the brightest rule
        deciding = max(range(len(kinds)), key=amplitudes.__getitem__)
    else:
        deciding = lesion_slot if label else -1
    out = {"image": img, "label": label, "mask": mask, "compartment": compartment.view(S, S),
           "structure": structure.view(S, S), "kinds": kinds, "areas": areas, "dropped": dropped,
           "decisive": (structure == deciding).view(S, S) if deciding >= 0 else torch.zeros(S, S, dtype=torch.bool)}
    if brightest:
        out.update(amplitudes=amplitudes, offset=offset, specks=specks)
    return out


@dataclass
class _Canvas:
    """What the structures of one image are drawn on: the image's pixels ``flat`` ``(C, S·S)``
    (a view, written in place), the brain's mean ``level`` ``(C, 1)``, the brain mask, the
    pixel coordinates and pitch, the compartments' signatures, and the per-pixel record of
    which structure (``-1``: tissue) and compartment (0 tissue, 1 core, 2 rim) each pixel is."""

    flat: Tensor
    level: Tensor
    inside: Tensor
    xx: Tensor
    yy: Tensor
    h: float
    S: int
    core_sig: Tensor
    rim_sig: Tensor
    structure: Tensor = field(init=False)
    compartment: Tensor = field(init=False)

    def __post_init__(self):
        self.structure = torch.full((self.S * self.S,), -1, dtype=torch.int16)
        self.compartment = torch.zeros(self.S * self.S, dtype=torch.int8)


def _place_structures(g: torch.Generator, n: int, a_min: int, max_factor: float, ax: float, ay: float,
                      cos_a: float, sin_a: float, h: float) -> list:
    """Geometry first, kinds after placement: a structure that finds no room is dropped
    whatever its kind, and the lesion is one of the placed structures.  Returns
    ``[(area, lobes, centre)]`` of the placed ones."""
    slots = []
    for _ in range(n):
        area = int(math.ceil(a_min * (1.0 + (max_factor - 1.0) * float(torch.rand(1, generator=g)))))
        lobes = _LOBE_MAX * torch.rand(3, generator=g)
        slots.append((area, lobes, math.sqrt(area / math.pi) * (1.0 + float(lobes.sum())) + 0.5))
    centres = _place(g, [extent for *_, extent in slots], ax, ay, cos_a, sin_a, h)
    return [(area, lobes, c) for (area, lobes, _), c in zip(slots, centres) if c is not None]


def _draw_structure(g: torch.Generator, canvas: _Canvas, number: int, kind: str, area: int, lobes: Tensor,
                    centre: tuple, strength: float, amplitude: float | None) -> Tensor:
    """Draw one structure (its outline of exactly ``area`` pixels, split into core and rim
    by its ``kind``) and return its pixels.  ``amplitude``: the "brightest" rule's (with
    additive per-pixel noise); ``None``: the presence rule's random amplitude with
    multiplicative heterogeneity."""
    c, h, S = canvas, canvas.h, canvas.S
    channels = c.flat.shape[0]
    cx, cy = centre
    radius = math.sqrt(area / math.pi)  # pixels
    phases = 2 * math.pi * torch.rand(3, generator=g)
    dx, dy = (c.xx - cx) / h, (c.yy - cy) / h
    theta = torch.atan2(dy, dx)
    k = torch.arange(2, 5, dtype=theta.dtype).view(-1, 1, 1)
    outline = 1.0 + (lobes.view(-1, 1, 1) * torch.cos(k * theta + phases.view(-1, 1, 1))).sum(0)
    depth = (torch.sqrt(dx ** 2 + dy ** 2) / (radius * outline)).reshape(-1)
    depth = depth.masked_fill(~c.inside.reshape(-1) | (c.structure >= 0), math.inf)
    pixels = torch.topk(depth, area, largest=False).indices  # the outline: exactly `area` pixels
    core_share = 0.35 + 0.2 * float(torch.rand(1, generator=g))
    if amplitude is not None:
        amp, jitter = amplitude, BRIGHTEST["gain_jitter"]
    else:
        amp, jitter = strength * (0.8 + 0.2 * float(torch.rand(1, generator=g))), 0.2
    core_gain = amp * c.core_sig * torch.exp(jitter * torch.randn(channels, generator=g))
    rim_gain = amp * c.rim_sig * torch.exp(jitter * torch.randn(channels, generator=g))
    # the kinds differ only in which pixels of the outline become core
    if kind == "lesion":
        key = depth[pixels]
    elif kind == "inverted":
        key = -depth[pixels]
    elif kind == "split":
        psi = 2 * math.pi * float(torch.rand(1, generator=g))
        key = (math.cos(psi) * dx + math.sin(psi) * dy).reshape(-1)[pixels]
    else:  # mottled
        key = _smooth_noise(g, 1, S, sigma=max(1.0, 0.4 * radius)).reshape(-1)[pixels]
    order = torch.argsort(key, stable=True)
    n_core = int(round(core_share * area))
    # every kind has n_core core pixels, the lesion too where its rim is thinner than a pixel
    # (below 56², module docstring): a lesion with fewer would differ from a mimic in its
    # pixel values, which intensity statistics and per-pixel maps would then read
    core, rim = pixels[order[:n_core]], pixels[order[n_core:]]
    # The structure replaces the tissue: the brain's mean level plus the compartment's
    # gains, with i.i.d. per-pixel heterogeneity.  Nothing spatially correlated is left
    # inside (no texture, no bias field), so every arrangement of core and rim pixels
    # yields the same distribution of pixel values, extremes included.
    if amplitude is not None:  # additive noise: the relative order of two structures is not read off one pixel
        c.flat[:, core] = c.level + core_gain.view(-1, 1)
        c.flat[:, rim] = c.level + rim_gain.view(-1, 1)
        c.flat[:, pixels] += BRIGHTEST["pixel_noise"] * torch.randn(channels, area, generator=g)
    else:
        gain = 1.0 + HETEROGENEITY * torch.randn(area, generator=g)
        c.flat[:, core] = c.level + core_gain.view(-1, 1) * gain[order[:n_core]]
        c.flat[:, rim] = c.level + rim_gain.view(-1, 1) * gain[order[n_core:]]
    c.compartment[core], c.compartment[rim] = 1, 2
    c.structure[pixels] = number
    return pixels


def _brightest_amplitudes(g: torch.Generator, n: int, lesion_slot: int, label: int) -> tuple[list, float]:
    """The "brightest" rule's amplitudes (before ``strength``) of ``n`` structures and the
    image's offset: the lesion is the brightest (``u = 1``) in a lesion image; in a normal
    image a random mimic is, and the lesion is among the others (``BRIGHTEST``)."""
    cfg = BRIGHTEST
    offset = cfg["offset_max"] * float(torch.rand(1, generator=g))
    lo, hi = cfg["others"]
    u = (lo + (hi - lo) * torch.rand(n, generator=g)).tolist()
    if label or n == 1:
        u[lesion_slot] = 1.0
    else:
        top = [i for i in range(n) if i != lesion_slot][int(torch.randint(n - 1, (1,), generator=g))]
        u[top] = 1.0
        lo, hi = cfg["lesion_in_normal"]
        u[lesion_slot] = lo + (hi - lo) * float(torch.rand(1, generator=g))
    return [cfg["base"] + offset + x for x in u], offset


def _add_specks(g, flat, level, inside, structure, xx, yy, a_min, offset, strength, signatures) -> int:
    """``BRIGHTEST["specks"]`` small structures, as bright as the decisive one, one signature
    each, written into ``flat`` where no structure is: a per-pixel map ranks them with the
    lesion, a map that sees a structure's extent does not.  Returns how many found room."""
    cfg = BRIGHTEST
    channels = flat.shape[0]
    free = inside.reshape(-1) & (structure < 0)
    xs, ys = xx.reshape(-1), yy.reshape(-1)
    area = max(3, int(a_min * cfg["speck_area"]))
    placed = 0
    for _ in range(cfg["specks"]):
        candidates = torch.nonzero(free).squeeze(1)
        if len(candidates) < area:
            break
        centre = candidates[int(torch.randint(len(candidates), (1,), generator=g))]
        dist = ((xs - xs[centre]) ** 2 + (ys - ys[centre]) ** 2).masked_fill(~free, math.inf)
        pixels = torch.topk(dist, area, largest=False).indices
        signature = signatures[int(torch.randint(2, (1,), generator=g))]
        lo, hi = cfg["speck_u"]
        amp = strength * (cfg["base"] + offset + lo + (hi - lo) * float(torch.rand(1, generator=g)))
        flat[:, pixels] = level + amp * signature.view(-1, 1) + \
            cfg["pixel_noise"] * torch.randn(channels, area, generator=g)
        free[pixels] = False
        placed += 1
    return placed


class SyntheticRimLesions(Dataset):
    """Rim-enhancing lesions among lesion mimics (``"rim"``, the default benchmark).

    ``n`` images ``(image (C, S, S), label, mask (S, S))``; see the module docstring.

    Args:
        n: number of images.
        image_size: side ``S`` of the square images (default 128; at least 32).
        channels: modalities (default 4; the signatures repeat beyond 4).
        difficulty: 0 (easy) ... 1 (hard): amplitude, noise and size.
        lesion_fraction: probability that an image holds a lesion (label 1).
        seed: the dataset's seed; image ``i`` depends on ``(seed, i)`` only.
        mimic_rate: mimics per lesion image (0 ... 8; default 3); a normal image holds one more.
        mimic_types: the mimic kinds drawn from (a subset of ``MIMIC_TYPES``).
    """

    label_rule = "presence"  # label 1 when a lesion is present

    def __init__(self, n: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                 lesion_fraction: float = 0.5, seed: int = 0, mimic_rate: float = 3.0,
                 mimic_types=MIMIC_TYPES):
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"a dataset needs at least one image, got n={n}")
        self.mimic_types = _check_rim_options(image_size, channels, difficulty, lesion_fraction, mimic_rate,
                                              mimic_types)
        self.n, self.image_size, self.channels = n, image_size, channels
        self.difficulty, self.lesion_fraction, self.seed = difficulty, lesion_fraction, seed
        self.mimic_rate = float(mimic_rate)

    def __len__(self) -> int:
        return self.n

    def _render(self, index: int, details: bool):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return render_rim_image(self.seed, index, self.image_size, self.channels, self.difficulty,
                                self.lesion_fraction, self.mimic_rate, self.mimic_types, details=details,
                                label_rule=self.label_rule)

    def __getitem__(self, index: int):
        img, label, mask = self._render(index, False)
        return img, torch.tensor(label), mask

    def render(self, index: int) -> dict:
        """Image ``index`` with its structures: see :func:`render_rim_image` (``details=True``)."""
        return self._render(index, True)

    def decisive_mask(self, index: int) -> Tensor:
        """``(S, S)`` bool: the pixels of the structure that decides image ``index``'s label
        (the lesion in a lesion image under the presence rule; the brightest structure,
        lesion or mimic, under the brightest rule)."""
        return self._render(index, True)["decisive"]


class SyntheticBrightestLesions(SyntheticRimLesions):
    """The lesion decides only when it is the brightest structure (``"brightest"``).

    Like :class:`SyntheticRimLesions` (its arguments; ``mimic_rate`` defaults to 5: up to six
    structures; one that finds no room is dropped, ``render(i)["dropped"]``: at 64² and
    difficulty 0.3, 200 images held 5 structures (140), 6 (46) or 4 (14); at 128², 6 (170) or
    5 (30)), but every image holds exactly one lesion, so presence says nothing: the label is
    1 when the lesion is the brightest structure of the image, and the mask marks it then (an
    empty mask in normal images).  A lesion placed alone is the brightest, so such an image is
    a lesion image whatever ``lesion_fraction`` says; ``mimic_rate`` below 1, which makes that
    the common case (label 1 in about three images of four at 0.5), is refused.  Structure amplitudes share a per-image
    offset (``BRIGHTEST``), so no fixed threshold finds the brightest: a softmax over scores
    linear in brightness is unchanged by the offset, a uniform pool must learn a gate that
    grows exponentially over the offset's range (docs/experiment.md, History).  Per-pixel
    noise is additive, the images are normalised by median and IQR (so the offset stays),
    and small bright specks share the signatures, so no per-pixel map finds the lesion.
    """

    label_rule = "brightest"

    def __init__(self, n: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                 lesion_fraction: float = 0.5, seed: int = 0, mimic_rate: float = 5.0,
                 mimic_types=MIMIC_TYPES):
        try:  # the number, whatever holds it (a 0-d array, a tensor, a bool); the parent refuses what is none
            below_one = float(mimic_rate) < 1
        except (TypeError, ValueError):
            below_one = False
        if below_one:
            raise ValueError(f"mimic_rate must be at least 1 for the brightest rule (an image without a mimic is a "
                             f"lesion image whatever lesion_fraction says), got {mimic_rate}")
        super().__init__(n, image_size, channels, difficulty, lesion_fraction, seed, mimic_rate, mimic_types)


GENERATORS = {"rim": SyntheticRimLesions, "blobs": SyntheticLesions, "brightest": SyntheticBrightestLesions}


def synthetic_dataset(generator: str = "rim", *args, **kwargs) -> Dataset:
    """A synthetic dataset by generator name: ``"rim"`` (default), ``"blobs"`` (the previous
    one) or ``"brightest"`` (the lesion decides only when it is the brightest structure)."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown synthetic generator {generator!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[generator](*args, **kwargs)


class labels_only(Dataset):  # noqa: N801 - reads as a function at the call site
    """A view of a dataset that yields ``(image, label)`` only: masks never reach training
    (a dataset with an ``image_label(index)`` method, the folder's, never reads them)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, index: int):
        image_label = getattr(self.dataset, "image_label", None)
        if image_label is not None:
            return image_label(index)
        item = self.dataset[index]
        return item[0], item[1]
