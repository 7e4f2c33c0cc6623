"""Data sets: each decodes its images once into uint8 tensors and hands out batch loaders (see base.py)."""

from trainlab.data.base import EpochBatches, ImageData, Split
from trainlab.data.builtin import TorchvisionData
from trainlab.data.digits import Digits
from trainlab.data.fake import FakeData
from trainlab.data.files import ImageFolderData, TinyImageNet


def check_root(node) -> None:
    """The checks on a data set's folder that need no image read, made before a run directory exists:
    the folder exists, and the demo data set is never pointed at a folder of the user's."""
    from pathlib import Path

    from trainlab.core.errors import DataError
    from trainlab.data.digits import check_root as check_digits_root
    from trainlab.data.digits import default_root

    target, root = str(node.get("_target_", "")), node.get("root") if "root" in node else None
    if target.endswith(".Digits"):
        check_digits_root(Path(str(root)) if root else default_root())
    elif target.endswith(".TorchvisionData"):
        from trainlab.data.builtin import missing_files_hint, torchvision_class

        cls = torchvision_class(node.get("name"))
        if root and not node.get("download") and not Path(str(root)).expanduser().is_dir():
            raise DataError(f"dataset.root {root} does not exist: {missing_files_hint(cls.__name__, Path(str(root)))},"
                            " or pass dataset.download=true on a machine with network")
    elif root:
        from trainlab.data.archive import archive_root, is_archive
        from trainlab.data.files import TINY_HINT, require_folder

        tiny = target.endswith(".TinyImageNet")
        path = Path(str(root)).expanduser()
        require_folder(path, TINY_HINT if tiny else "point it at the folder (or a .zip, .tar, .tar.gz or .tgz) that "
                                                    "holds the data")
        if is_archive(path):  # readable, and (Tiny-ImageNet) in its layout: indexed once, before any folder exists
            top = archive_root(path, "wnids.txt")
            if tiny and not (top / "wnids.txt").is_file():
                raise DataError(f"{top} is not in the tiny-imagenet-200 layout: wnids.txt is missing; {TINY_HINT}")


__all__ = ["check_root", "Digits", "EpochBatches", "FakeData", "ImageData", "ImageFolderData", "Split", "TinyImageNet",
           "TorchvisionData"]
