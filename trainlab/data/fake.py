"""Tiny synthetic images made in memory: each class is a fixed random colour pattern plus noise."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import torch

from trainlab.data.base import ImageData, Split, channel_stats


@dataclass(eq=False, kw_only=True)
class FakeData(ImageData):
    num_classes: InitVar[int] = field()  # makes `classes`; field(): not the inherited property as a default
    train_size: int
    val_size: int
    seed: int

    def __post_init__(self, num_classes: int):
        super().__post_init__()
        self.sizes = {"train": int(self.train_size), "val": int(self.val_size), "test": int(self.val_size)}
        self.seed = int(self.seed)
        self.classes = [f"class{k:03d}" for k in range(int(num_classes))]
        self.class_names = list(self.classes)

    def setup(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        g = torch.Generator().manual_seed(self.seed)
        s = self.image_size
        patterns = torch.rand(self.num_classes, 3, 4, 4, generator=g) * 200 + 20
        patterns = torch.nn.functional.interpolate(patterns, size=(s, s), mode="nearest")
        for name in splits:
            offset = ("train", "val", "test").index(name)  # a split looks the same whatever else is loaded
            n = self.sizes[name]
            labels = torch.arange(n) % self.num_classes
            noise = torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(self.seed + 1 + offset)) * 25
            images = (patterns[labels] + noise).clamp(0, 255).to(torch.uint8)
            self.splits[name] = Split(images, None if name == "test" else labels,
                                      [f"fake://{name}/{i}" for i in range(n)])
        if "train" in self.splits:
            self.mean, self.std = channel_stats(self.splits["train"].images)
