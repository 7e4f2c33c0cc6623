"""Data sets: each decodes its images once into uint8 tensors and hands out batch loaders (see base.py)."""

from trainlab.data.base import EpochBatches, ImageData, Split
from trainlab.data.builtin import TorchvisionData
from trainlab.data.digits import Digits
from trainlab.data.fake import FakeData
from trainlab.data.files import ImageFolderData, TinyImageNet

__all__ = ["Digits", "EpochBatches", "FakeData", "ImageData", "ImageFolderData", "Split", "TinyImageNet",
           "TorchvisionData"]
