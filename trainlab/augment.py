"""Batched augmentation and normalisation on tensors, on whatever device the batch is on.

Per-image PIL transforms cost more than the model on a small CPU; here one batch is augmented with a
handful of tensor ops. Randomness comes from a generator seeded per (seed, epoch), so runs repeat exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainlab.errors import require


class BatchAugment:
    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0, flip: bool = False,
                 rotation: float = 0.0, color_jitter: float = 0.0):
        require(int(crop_padding) >= 0, f"augment.crop_padding must be >= 0 (got {crop_padding})")
        require(0.0 <= float(color_jitter) < 1.0, f"augment.color_jitter must be in [0, 1) (got {color_jitter})")
        self.crop_padding, self.flip = int(crop_padding), bool(flip)
        self.rotation, self.color_jitter = float(rotation), float(color_jitter)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - mean)/std == x * scale + shift; computed once per device, not per batch (measured:
        # recomputing them per batch made the multiply several times slower on a CPU).
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (x/255 - mean) / std, as one multiply and one in-place add."""
        if images.device not in self._affine:
            self._affine[images.device] = ((1.0 / (255.0 * self._std)).to(images.device),
                                           (-self._mean / self._std).to(images.device))
        scale, shift = self._affine[images.device]
        return (images.float() * scale).add_(shift)

    def train(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a uint8 batch and normalise it."""
        if self.crop_padding or self.flip:
            images = random_crop_flip(images, self.crop_padding, self.flip, generator)
        if not (self.rotation or self.color_jitter):
            return self.normalize(images)
        x = images.float() / 255.0
        if self.rotation:
            x = random_rotate(x, self.rotation, generator)
        if self.color_jitter:
            x = random_color_jitter(x, self.color_jitter, generator)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return (x - mean) / std

    def describe(self) -> dict:
        return {"crop_padding": self.crop_padding, "flip": self.flip, "rotation": self.rotation,
                "color_jitter": self.color_jitter, "mean": self._mean.flatten().tolist(),
                "std": self._std.flatten().tolist()}


def _uniform(n: int, low: float, high: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator=None) -> torch.Tensor:
    """Zero-pad by `padding`, take a random HxW window per image, and flip half of them horizontally
    (torchvision's RandomCrop(padding=p) then RandomHorizontalFlip, per image, on a uint8 batch)."""
    n, c, h, w = images.shape
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    flips = (torch.rand(n, device=device, generator=generator) < 0.5) if flip \
        else torch.zeros(n, dtype=torch.bool, device=device)
    if device.type != "cpu":
        return _crop_flip_gather(images, padding, dy, dx, flips)
    # On a CPU, slicing each image is ~10x faster than one big gather (the index tensors cost more than the copy).
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    crops = [padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist()))]
    return torch.stack([crop.flip(-1) if f else crop for crop, f in zip(crops, flips.tolist())])


def _crop_flip_gather(images: torch.Tensor, padding: int, dy, dx, flips) -> torch.Tensor:
    """The same crop and flip as one gather (GPUs: one kernel instead of one per image)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    cols = torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + dx[:, None]
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols[:, None, None, :]]


def random_rotate(x: torch.Tensor, degrees: float, generator=None) -> torch.Tensor:
    """Rotate each float image by a uniform angle in [-degrees, degrees], filling with zeros."""
    angle = _uniform(x.shape[0], -degrees, degrees, x.device, generator) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_color_jitter(x: torch.Tensor, strength: float, generator=None) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1-s, 1+s] per image (torchvision's ColorJitter order)."""
    n = x.shape[0]
    factors = _uniform(3 * n, 1 - strength, 1 + strength, x.device, generator).view(3, n, 1, 1, 1)
    x = (x * factors[0]).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = ((x - gray.mean(dim=(2, 3), keepdim=True)) * factors[1] + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return ((x - gray) * factors[2] + gray).clamp(0, 1)
