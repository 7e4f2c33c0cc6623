"""Batched augmentation and normalisation on tensors, on whatever device the batch is on.

Per-image PIL transforms cost more than the model on a small CPU; here one batch is augmented with a
handful of tensor ops. Randomness comes from a generator seeded per (seed, epoch), so runs repeat exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainlab.core.errors import require

AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")


class Normalize:
    """uint8 batches to the model's input: (x/255 - mean) / std per channel, a grayscale batch repeated into the
    3 channels an RGB model takes (`channels`: what the model takes; None: the data's). What evaluation and
    prediction apply; training adds `BatchAugment`'s policy on top."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int | None = None):
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels = int(channels) if channels else len(self._mean.flatten())
        require(self.channels == self._mean.numel() or (self._mean.numel() == 1 and self.channels == 3),
                f"the model takes {self.channels} channels but the data has {self._mean.numel()}: "
                "set model.in_channels=null (the data's channels)")
        # (x/255 - mean)/std == x * scale + shift; computed once per device, not per batch (measured:
        # recomputing them per batch made the multiply several times slower on a CPU).
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a grayscale batch into the 3 channels an RGB model takes (a view: no copy)."""
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] != self.channels else x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 (x/255 - mean) / std, as one multiply and one in-place add."""
        if images.device not in self._affine:
            self._affine[images.device] = ((1.0 / (255.0 * self._std)).to(images.device),
                                           (-self._mean / self._std).to(images.device))
        scale, shift = self._affine[images.device]
        return self._to_model((images.float() * scale).add_(shift))


@dataclass(eq=False, kw_only=True)
class BatchAugment(Normalize):
    """Everything that happens to a training batch between the loader and the model, in torchvision's order:
    crop/flip, RandAugment or TrivialAugment (uint8), rotation and colour jitter, normalisation, random
    erasing (normalised), then MixUp/CutMix (`mix`, which also makes the soft targets).

    One field per key of conf/augment/*.yaml, where their values and meanings are written (no defaults here:
    each value lives once, in conf/); `mean`, `std` and `channels` come from the runner (see `Normalize`)."""

    mean: Sequence[float]
    std: Sequence[float]
    channels: int | None
    crop_padding: int
    flip: bool
    rotation: float
    color_jitter: float
    auto_augment: str
    random_erasing: float
    mixup_alpha: float
    cutmix_alpha: float

    def __post_init__(self):
        require(int(self.crop_padding) >= 0, f"augment.crop_padding must be >= 0 (got {self.crop_padding})")
        require(0.0 <= float(self.color_jitter) < 1.0,
                f"augment.color_jitter must be in [0, 1) (got {self.color_jitter})")
        require(self.auto_augment in AUTO_AUGMENTS,
                f"augment.auto_augment must be one of {', '.join(AUTO_AUGMENTS)} (got {self.auto_augment!r})")
        require(0.0 <= float(self.random_erasing) <= 1.0,
                f"augment.random_erasing is a probability in [0, 1] (got {self.random_erasing})")
        require(float(self.mixup_alpha) >= 0 and float(self.cutmix_alpha) >= 0, "augment.mixup_alpha and "
                f"augment.cutmix_alpha must be >= 0 (got {self.mixup_alpha}, {self.cutmix_alpha})")
        self.crop_padding, self.flip = int(self.crop_padding), bool(self.flip)
        self.rotation, self.color_jitter = float(self.rotation), float(self.color_jitter)
        self.random_erasing = float(self.random_erasing)
        self.mixup_alpha, self.cutmix_alpha = float(self.mixup_alpha), float(self.cutmix_alpha)
        self._policy = None
        if self.auto_augment != "none":
            from torchvision.transforms import v2

            self._policy = v2.RandAugment() if self.auto_augment == "randaugment" else v2.TrivialAugmentWide()
        Normalize.__init__(self, self.mean, self.std, self.channels)

    def train(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a uint8 batch and normalise it."""
        if self.crop_padding or self.flip:
            images = random_crop_flip(images, self.crop_padding, self.flip, generator)
        if self._policy is not None:
            # One policy draw per image (torchvision's v2 ops draw once per call); they use the global RNG,
            # which trainlab seeds per epoch and checkpoints, so runs and resumes still repeat exactly.
            images = torch.stack([self._policy(image) for image in images])
        if not (self.rotation or self.color_jitter):
            x = self.normalize(images)
        else:
            x = images.float() / 255.0
            if self.rotation:
                x = random_rotate(x, self.rotation, generator)
            if self.color_jitter:
                x = random_color_jitter(x, self.color_jitter, generator)
            mean, std = self._mean.to(x.device), self._std.to(x.device)
            x = self._to_model((x - mean) / std)
        if self.random_erasing:
            x = random_erase(x, self.random_erasing, generator)
        return x

    @property
    def mixes(self) -> bool:
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def mix(self, x: torch.Tensor, target: torch.Tensor, num_classes: int,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp / CutMix of a normalised batch with itself rolled by one (torchvision's pairing). Returns the
        mixed images and the soft targets (class probabilities) the loss takes; with both alphas set, each
        batch takes one of the two at random. Without them: (x, target) as they are."""
        if not self.mixes:
            return x, target
        both = self.cutmix_alpha > 0 and self.mixup_alpha > 0
        # With both, a coin picks one per batch. It stays on the device (reading it back would stall a GPU every
        # step), so both are computed and the coin selects: two element-wise passes, cheap next to the model.
        coin = torch.rand((), generator=generator, device=_gen_device(generator)).to(x.device) < 0.5 if both \
            else torch.tensor(self.cutmix_alpha > 0, device=x.device)
        alpha = torch.where(coin, self.cutmix_alpha, self.mixup_alpha).to(x.dtype)
        # Beta(alpha, alpha) from two Gamma draws, kept on the device (validate_args=False: checking the
        # parameters would read them back to the host).
        g = torch.distributions.Gamma(alpha.expand(2), 1.0, validate_args=False).sample()
        lam = g[0] / g.sum()
        # F.one_hot reads the targets' range back to check it: a scatter does not.
        onehot = torch.zeros(target.shape[0], num_classes, dtype=x.dtype, device=x.device).scatter_(
            1, target.view(-1, 1), 1.0)
        if both:
            cut, cut_lam = cutmix_(x, lam, generator)
            x, lam = torch.where(coin, cut, x * lam + x.roll(1, 0) * (1 - lam)), torch.where(coin, cut_lam, lam)
        elif self.cutmix_alpha:
            x, lam = cutmix_(x, lam, generator)
        else:
            x = x * lam + x.roll(1, 0) * (1 - lam)
        return x, onehot * lam + onehot.roll(1, 0) * (1 - lam)

    def describe(self) -> dict:
        return {"crop_padding": self.crop_padding, "flip": self.flip, "rotation": self.rotation,
                "color_jitter": self.color_jitter, "auto_augment": self.auto_augment,
                "random_erasing": self.random_erasing, "mixup_alpha": self.mixup_alpha,
                "cutmix_alpha": self.cutmix_alpha, "mean": self._mean.flatten().tolist(),
                "std": self._std.flatten().tolist(), "channels": self.channels}


def _gen_device(generator: torch.Generator | None):
    return generator.device if generator is not None else "cpu"


def cutmix_(x: torch.Tensor, lam: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a box of the rolled batch into every image (one box per batch, as torchvision's CutMix); the box
    covers about 1 - lam of the image, and lam is corrected to the area it really covers (clipped at edges)."""
    n, _, h, w = x.shape
    device = x.device
    centre = torch.rand(2, generator=generator, device=_gen_device(generator)).to(device)
    cy, cx = centre[0] * h, centre[1] * w
    half = (1 - lam).sqrt() / 2
    y0, y1 = (cy - half * h).clamp(0, h), (cy + half * h).clamp(0, h)
    x0, x1 = (cx - half * w).clamp(0, w), (cx + half * w).clamp(0, w)
    rows = torch.arange(h, device=device, dtype=x.dtype) + 0.5
    cols = torch.arange(w, device=device, dtype=x.dtype) + 0.5
    box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    mixed = torch.where(box, x.roll(1, 0), x)
    return mixed, 1 - box.sum() / (h * w)


def random_erase(x: torch.Tensor, p: float, generator=None, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
    """torchvision's RandomErasing (value 0, after normalisation) for a whole batch at once: each image, with
    probability p, gets one rectangle of 2-33% of its area and aspect ratio 0.3-3.3 set to zero."""
    n, _, h, w = x.shape
    device = x.device
    gd = _gen_device(generator)
    u = torch.rand(4, n, generator=generator, device=gd).to(device)
    area = (u[0] * (scale[1] - scale[0]) + scale[0]) * h * w
    aspect = torch.exp(u[1] * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0]))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (u[2] * (h - eh + 1)).floor()
    left = (u[3] * (w - ew + 1)).floor()
    erase = torch.rand(n, generator=generator, device=gd).to(device) < p
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]
    return x.masked_fill(mask, 0.0)


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
    if x.shape[1] == 1:  # grayscale: no saturation to change
        return ((x - x.mean(dim=(2, 3), keepdim=True)) * factors[1] + x.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = ((x - gray.mean(dim=(2, 3), keepdim=True)) * factors[1] + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return ((x - gray) * factors[2] + gray).clamp(0, 1)
