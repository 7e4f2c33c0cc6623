"""Batched augmentation against per-image references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from trainlab.augment import _crop_flip_gather, random_color_jitter, random_crop_flip, random_rotate
from trainlab.core.config import component


def test_crop_and_flip_match_per_image_torchvision_ops():
    images = torch.randint(0, 256, (40, 3, 10, 12), dtype=torch.uint8)
    out = random_crop_flip(images, 3, True, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the draws the batched op made
    dy, dx = torch.randint(0, 7, (40,), generator=g), torch.randint(0, 7, (40,), generator=g)
    flips = torch.rand(40, generator=g) < 0.5
    assert 8 < int(flips.sum()) < 32
    for i in range(40):
        reference = TF.crop(TF.pad(images[i], [3, 3, 3, 3], fill=0), int(dy[i]), int(dx[i]), 10, 12)
        if flips[i]:
            reference = TF.horizontal_flip(reference)
        assert torch.equal(out[i], reference), i
    # The GPU path (one gather) computes the same batch.
    assert torch.equal(_crop_flip_gather(images, 3, dy, dx, flips), out)


def test_flip_alone_flips_about_half_and_only_horizontally():
    images = torch.randint(0, 256, (200, 3, 4, 5), dtype=torch.uint8)
    out = random_crop_flip(images, 0, True, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, TF.horizontal_flip(i)) for o, i in zip(out, images)]
    same = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 70 < sum(flipped) < 130


def test_rotation_by_zero_degrees_is_identity_and_jitter_stays_in_range():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(random_rotate(x, 1e-6), x, atol=1e-4)
    y = random_color_jitter(x, 0.4, torch.Generator().manual_seed(1))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(x, y)


def test_normalisation_uses_dataset_mean_and_std():
    aug = component("augment", "none", mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.25], channels=None)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = TF.normalize(images.float() / 255, [0.1, 0.2, 0.3], [0.5, 0.5, 0.25])
    assert torch.allclose(aug.normalize(images), expected, atol=1e-6)
    assert torch.allclose(aug.train(images), expected, atol=1e-6)  # no augmentation configured: same as eval


def test_same_generator_seed_gives_the_same_batch():
    aug = component("augment", "strong", mean=[0.5] * 3, std=[0.25] * 3, channels=None, rotation=10, color_jitter=0.2)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    a = aug.train(images, torch.Generator().manual_seed(7))
    b = aug.train(images, torch.Generator().manual_seed(7))
    c = aug.train(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert F.mse_loss(a, aug.normalize(images)) > 0
