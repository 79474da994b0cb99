"""Fashion-MNIST from Debian's `dataset-fashion-mnist`: 70,000 real 28x28 grey images, 10 classes.

The package installs the original IDX files (gzipped) under `/usr/share/datasets/fashion-mnist/`;
they are read here directly (an IDX file is a 4-byte magic number - two zero bytes, a type
code, the number of dimensions - then each dimension as a big-endian int32, then the raw
values), so neither a download nor torchvision is needed.

Splits: `test` is the 10,000-image test file; `train` and `val` cut the 60,000-image training
file, `val_size` images held out by a seeded choice. `augment` (training) pads by `shift`
pixels, crops back to 28x28 at a random offset and flips half of the images left to right,
with plain torch ops, in the DataLoader's worker processes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from elasticml.errors import UserError

FOLDER = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530
"""Pixel mean and deviation of the training images (scaled to [0, 1])."""
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or `.gz`) as an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            blob = handle.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None
    if len(blob) < 4 or blob[:2] != b"\0\0" or blob[2] not in _TYPES:
        raise UserError(f"{path}: not an IDX file")
    dims = blob[3]
    shape = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_TYPES[blob[2]])
    body = blob[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"{path}: {len(body)} bytes of data for shape {shape} (truncated?)")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def find(root: str, name: str) -> Path | None:
    for candidate in (Path(root) / f"{name}.gz", Path(root) / name):
        if candidate.is_file():
            return candidate
    return None


class FashionMNIST(Dataset):
    """`(image [1, 28, 28] float, label)` pairs of one split."""

    def __init__(self, split: str = "train", root: str = FOLDER, val_size: int = 5000,
                 seed: int = 0, augment: bool = False, shift: int = 1,
                 normalize: bool = True) -> None:
        problem = self.preflight(split=split, root=root, val_size=val_size)
        if problem:
            raise UserError(problem)
        images_file, labels_file = FILES["test" if split == "test" else "train"]
        images = torch.from_numpy(read_idx(find(root, images_file)).copy())
        labels = torch.from_numpy(read_idx(find(root, labels_file)).astype(np.int64))
        if len(images) != len(labels):
            raise UserError(f"{root}: {len(images)} images but {len(labels)} labels")
        if split != "test":
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
            rows = order[:val_size] if split == "val" else order[val_size:]
            images, labels = images[rows.sort().values], labels[rows.sort().values]
        self.images, self.labels = images, labels
        self.augment, self.shift, self.normalize = augment, shift, normalize

    @staticmethod
    def preflight(split: str = "train", root: str = FOLDER, val_size: int = 5000,
                  **_: object) -> str | None:
        """Why the dataset cannot be built, found without reading it (None: it can)."""
        if split not in ("train", "val", "test"):
            return f"split '{split}' is not one of train, val, test"
        if not 0 < val_size < 60000:
            return f"val_size must be between 1 and 59999, got {val_size}"
        for name in FILES["test" if split == "test" else "train"]:
            if find(root, name) is None:
                return (f"Fashion-MNIST not found in {root} ({name}[.gz] is missing): "
                        "apt-get install dataset-fashion-mnist")
        return None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255.0)[None]
        if self.augment:
            image = _shift_and_flip(image, self.shift)
        if self.normalize:
            image = (image - MEAN) / STD
        return image, self.labels[index]


def _shift_and_flip(image: torch.Tensor, pad: int) -> torch.Tensor:
    """A random crop of the image padded by `pad` zeros, flipped left-right half the time."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    image = padded[:, top:top + image.shape[1], left:left + image.shape[2]]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image
