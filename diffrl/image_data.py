"""Image data: scikit-learn's digits, a folder of images (torchvision ``ImageFolder``) and uint8 arrays.

Models see float images (N, C, H, W) in [-1, 1]; files and saved samples are uint8 in [0, 255].
Digits' 0..16 grey levels map to [-1, 1] as x / 8 - 1. Held-out splits are fixed (seed
``SPLIT_SEED``, not a run's seed), so every run and baseline is scored on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import BatchSampler

__all__ = [
    "DIGITS", "SPLIT_SEED", "ImageData", "ImageBatches", "to_unit", "to_uint8", "load_digits_images",
    "read_image_array", "read_image_folder", "split_images", "is_image_data", "load_image_data",
]

DIGITS = "digits"
SPLIT_SEED = 0
_ARRAY_KEYS = ("images", "x", "arr_0")


@dataclass
class ImageData:
    """Splits (N, C, H, W) float32 in [-1, 1]; class labels (N,) where the data set has them (digits)."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    val_labels: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.shape[1:])


def to_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], any shape."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded), any shape."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_digits_images() -> ImageData:
    """scikit-learn's 1797 digits as (N, 1, 8, 8) in [-1, 1]: a stratified fixed split of
    360 test (20%), 180 validation (10%) and 1257 training images, with labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8.0 - 1.0
    labels = torch.from_numpy(digits.target).long()
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=360, stratify=labels.numpy(), random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=180, stratify=labels.numpy()[rest], random_state=SPLIT_SEED)
    return ImageData(images[train], images[val], images[test], labels[train], labels[test], labels[val])


def read_image_array(path: str | Path) -> Tensor:
    """A uint8 .npy / .npz array of images, (N, H, W, C), (N, C, H, W) or (N, H, W), as uint8 (N, C, H, W).

    C must be 1 or 3; a .npz holds one array or one under the key images, x or arr_0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image array not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in _ARRAY_KEYS if k in keys), None)
            if key is None:
                raise ValueError(f"{path.name}: cannot tell which array holds the images; keys {keys}, expected one of {_ARRAY_KEYS}")
            array = archive[key]
    elif path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        raise ValueError(f"expected a .npy or .npz image array, got {path.name}")
    if array.dtype != np.uint8:
        raise ValueError(f"{path.name}: expected uint8 images in [0, 255], got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        pass
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path.name}: expected images (N, H, W, C), (N, C, H, W) or (N, H, W) with C = 1 or 3, got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def read_image_folder(path: str | Path, image_size: int | None = None, channels: int = 3) -> Tensor:
    """Every image under ``path`` (torchvision ``ImageFolder``: one subfolder per class) as uint8
    (N, channels, H, W); ``image_size`` resizes the short side and centre-crops to a square."""
    from torchvision import datasets, transforms

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    steps: list = [transforms.Lambda(lambda im: im.convert("L" if channels == 1 else "RGB"))]
    if image_size is not None:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    dataset = datasets.ImageFolder(str(path), transform=transforms.Compose([*steps, transforms.PILToTensor()]))
    images = [dataset[i][0] for i in range(len(dataset))]
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"{path}: images have different sizes {sorted(sizes)[:4]}; set image.image_size to resize them")
    return torch.stack(images)


def split_images(images: Tensor, n_eval: int) -> ImageData:
    """uint8 (N, C, H, W) -> a fixed seeded split into test and validation (``n_eval`` each, at most
    a fifth of N) and training (the rest), in [-1, 1]."""
    n_eval = min(n_eval, images.shape[0] // 5)
    if n_eval < 2:
        raise ValueError(f"{images.shape[0]} images are too few to hold out validation and test splits")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    x = to_unit(images[perm])
    return ImageData(x[2 * n_eval :], x[n_eval : 2 * n_eval], x[:n_eval])


def is_image_data(name: str) -> bool:
    """True for digits, a folder, a .npz, or a .npy holding a 3-D or 4-D uint8 array (other .npy are point data)."""
    path = Path(name)
    if name == DIGITS or path.is_dir() or path.suffix == ".npz":
        return True
    if path.suffix != ".npy" or not path.is_file():
        return False
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return array.ndim in (3, 4) and array.dtype == np.uint8


def load_image_data(name: str, n_eval: int = 10_000, image_size: int | None = None, channels: int = 3) -> ImageData:
    """digits, an image folder, or a uint8 .npy / .npz array; see the loaders above."""
    if name == DIGITS:
        return load_digits_images()
    path = Path(name)
    if path.is_dir():
        return split_images(read_image_folder(path, image_size, channels), n_eval)
    if path.suffix in (".npy", ".npz"):
        return split_images(read_image_array(path), n_eval)
    raise FileNotFoundError(f"image data not found: {name!r} is not digits, an existing folder or a .npy / .npz file")


class ImageBatches(BatchSampler):
    """Random minibatches (B, C, H, W) with replacement; with ``hflip`` each image is mirrored left-right
    with probability 1/2. Flips come from the same seeded generator (exact resume)."""

    def __init__(self, images: Tensor, batch_size: int, seed: int, hflip: bool = False) -> None:
        super().__init__(images, batch_size, seed)
        self.hflip = hflip

    def __next__(self) -> Tensor:
        x = super().__next__()
        if self.hflip:
            flip = (torch.rand(x.shape[0], generator=self.generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x
