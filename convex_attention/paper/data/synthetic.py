"""A seeded synthetic weakly-annotated lesion dataset ("MRI-like", offline, fast).

Each image has ``channels`` modalities (default 4, think FLAIR, T1, T1ce, T2) of an
elliptical head: textured tissue, a bright skull ring and a smooth multiplicative
intensity bias.  Positive images (label 1) carry 1–3 lesions: smooth irregular blobs,
bright in FLAIR and T2 and dark in T1.  Every image, positive or not, carries
*distractors*: bright structures that are not lesions (round T1ce-bright spots,
vessel-like curves, and from medium difficulty on, FLAIR-bright blobs that are normal in
T2), so that "a bright spot" does not decide the label.

``difficulty`` in [0, 1] lowers the lesion contrast and size and raises the noise and the
number of distractors.  Image ``i`` depends only on ``(seed, i)``: the dataset is
deterministic and can be generated lazily, thousands of 128×128 images per minute.

Items are ``(image (C, H, W) float32, label int64, mask (H, W) bool)``.  The mask is for
evaluation only; training uses :func:`labels_only`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticLesions", "render_image", "labels_only"]


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


def render_image(seed: int, index: int, image_size: int = 128, channels: int = 4, difficulty: float = 0.5,
                 lesion_fraction: float = 0.5) -> tuple[Tensor, int, Tensor]:
    """The ``index``-th image of the dataset with this ``seed``: ``(image, label, mask)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    S = image_size
    label = int(torch.rand(1, generator=g) < lesion_fraction)
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
    base = torch.tensor([0.55, 0.7, 0.5, 0.6] * ((channels + 3) // 4))[:channels]
    contrast = torch.tensor([0.25, -0.3, 0.15, 0.3] * ((channels + 3) // 4))[:channels]
    img = base.view(-1, 1, 1) + contrast.view(-1, 1, 1) * matter + 0.08 * fine
    img = img * brain + torch.tensor([0.3, 1.0, 0.4, 0.2] * ((channels + 3) // 4))[:channels].view(-1, 1, 1) * skull

    mask = torch.zeros(S, S, dtype=torch.bool)
    lesion_gain = torch.tensor([1.0, -0.6, 0.3, 0.9] * ((channels + 3) // 4))[:channels].view(-1, 1, 1)
    strength = 1.0 - 0.65 * difficulty
    if label:
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            radius = (0.06 + 0.12 * float(torch.rand(1, generator=g))) * (1.0 - 0.45 * difficulty)
            rho, phi = 0.55 * float(torch.rand(1, generator=g)) ** 0.5, 2 * math.pi * float(torch.rand(1, generator=g))
            blob = _blob(g, xx, yy, rho * math.cos(phi), rho * math.sin(phi), radius) * brain
            amp = strength * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
            img = img + amp * lesion_gain * blob
            mask |= blob > 0.5
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

    bias = torch.exp(0.25 * _smooth_noise(g, 1, S, sigma=S / 5)[0])
    img = img * bias + (0.03 + 0.12 * difficulty) * torch.randn(channels, S, S, generator=g)
    # per-modality normalisation over the head
    head = (brain + skull) > 0.5
    mean = img[:, head].mean(1).view(-1, 1, 1)
    std = img[:, head].std(1).clamp(min=1e-6).view(-1, 1, 1)
    img = ((img - mean) / std) * head
    return img.float(), label, mask & (brain > 0.5)


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
        if not 0.0 <= difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
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


class labels_only(Dataset):  # noqa: N801 - reads as a function at the call site
    """A view of a dataset that yields ``(image, label)`` only: masks never reach training."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item[0], item[1]
