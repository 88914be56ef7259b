"""Datasets as pixel-space tensors: x float32 in [0, 1] shaped N×C×H×W, y int64 labels.

Built in: ``digits`` (scikit-learn's bundled 8×8 digits, no download) and ``digits28`` (the same
images resized bilinearly to 28×28). Otherwise a ``.npz`` file with arrays ``x`` and ``y`` (and
optionally ``classes``), or a folder with one subfolder of images per class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from monitor.detect.scores import as_float
from monitor.errors import DatasetError

BUILTIN = ("digits", "digits28")
TEST_FRACTION = 0.3
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class Dataset:
    """Images and labels in pixel space, plus where they came from."""

    name: str
    pixels: torch.Tensor  # float32 in [0, 1], or uint8 0–255 as stored (4× smaller)
    y: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def x(self) -> torch.Tensor:
        """All images as float32 in [0, 1] (a copy when stored as uint8)."""
        return as_float(self.pixels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def batches(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float images, labels) ``size`` at a time: only one batch is converted at once."""
        for start in range(0, len(self), size):
            yield as_float(self.pixels[start : start + size]), self.y[start : start + size]

    def head(self, limit: int | None) -> Dataset:
        """The first ``limit`` samples (stratified order is kept: built-ins are shuffled)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise DatasetError(f"--limit must be positive, not {limit}.")
        return Dataset(self.name, self.pixels[:limit], self.y[:limit], self.classes)


def load_dataset(spec: str, split: str = "test") -> Dataset:
    """Load a built-in dataset (``split`` test, train or all), a ``.npz`` file or an image
    folder (files and folders have no splits)."""
    if split not in ("train", "test", "all"):
        raise DatasetError(f"split must be 'train', 'test' or 'all', not {split!r}.")
    if spec in BUILTIN:
        size = 28 if spec == "digits28" else 8
        if split == "all":
            parts = [_digits(s, size) for s in ("test", "train")]
            x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            x, y = _digits(split, size)
        return Dataset(spec, x, y, tuple(str(i) for i in range(10)))
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor an existing path."
        )
    if path.is_dir():
        return _image_folder(path)
    if path.suffix == ".npz":
        return _npz(path)
    raise DatasetError(f"{path} is not a .npz file or an image folder.")


@lru_cache(maxsize=4)
def _digits(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        bunch.target,
        test_size=TEST_FRACTION,
        stratify=bunch.target,
        random_state=SPLIT_SEED,
    )
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    if size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def validate_arrays(x: np.ndarray, y: np.ndarray, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and convert arrays to pixel-space tensors; every problem is one DatasetError."""
    if x.size == 0 or len(x) == 0:
        raise DatasetError(f"{where} holds no images.")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{where}: images must be float in [0, 1] or uint8, not {x.dtype}.")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DatasetError(
            f"{where}: images must be shaped N×C×H×W (C 1 or 3), N×H×W×C or N×H×W, not {x.shape}."
        )
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise DatasetError(f"{where}: images contain NaN or infinite values.")
    low, high = (0.0, 1.0) if x.dtype == np.uint8 else (float(x.min()), float(x.max()))
    if low < 0.0 or high > 1.0:
        raise DatasetError(
            f"{where}: pixel values must lie in [0, 1], found [{low:.3g}, {high:.3g}]; "
            "scale them first (normalisation belongs inside the model)."
        )
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels must be a 1-D integer array, not {y.dtype} {y.shape}.")
    if len(y) != len(x):
        raise DatasetError(f"{where}: {len(x)} images but {len(y)} labels.")
    if y.min() < 0:
        raise DatasetError(f"{where}: labels must be non-negative, found {int(y.min())}.")
    if x.dtype != np.uint8:  # uint8 stays uint8 (``Dataset.pixels``), float becomes float32
        x = x.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def check_labels(dataset: Dataset, n_classes: int, model: str) -> None:
    """Raise when a label is beyond what the model can predict."""
    top = int(dataset.y.max())
    if top >= n_classes:
        raise DatasetError(
            f"dataset {dataset.name} has label {top} but {model} predicts only {n_classes} classes."
        )


def _npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise DatasetError(f"{path} lacks the array(s) {', '.join(sorted(missing))}.")
            x, y = data["x"], data["y"]
            classes = tuple(str(c) for c in data["classes"]) if "classes" in data.files else None
    except DatasetError:
        raise
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} as .npz: {err}.") from err
    tx, ty = validate_arrays(x, y, str(path))
    if classes is None:
        classes = tuple(str(i) for i in range(int(ty.max()) + 1))
    elif int(ty.max()) >= len(classes):
        raise DatasetError(f"{path}: label {int(ty.max())} but only {len(classes)} class names.")
    return Dataset(str(path), tx, ty, classes)


def _image_folder(root: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class subfolders (expected {root}/CLASS/IMAGE.png).")
    images, labels, first_size, mode = [], [], None, None
    files = [
        (label, f)
        for label, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DatasetError(f"{root} has class folders but no images in them.")
    modes = set()
    opened = []
    for label, file in files:
        try:
            with Image.open(file) as img:
                img.load()
                modes.add("L" if img.mode in ("1", "L", "I;16", "I") else "RGB")
                opened.append((label, file, img.copy()))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"cannot read image {file}: {err}.") from err
    mode = "L" if modes == {"L"} else "RGB"
    for label, file, img in opened:
        array = np.asarray(img.convert(mode), dtype=np.uint8)
        if first_size is None:
            first_size = array.shape[:2]
        elif array.shape[:2] != first_size:
            raise DatasetError(
                f"{file} is {array.shape[1]}×{array.shape[0]} but other images are "
                f"{first_size[1]}×{first_size[0]}; resize them to one size first."
            )
        images.append(array[None] if mode == "L" else array.transpose(2, 0, 1))
        labels.append(label)
    x, y = validate_arrays(np.stack(images), np.asarray(labels), str(root))
    return Dataset(str(root), x, y, tuple(classes))


def dataset_digest(spec: str) -> str | None:
    """SHA-256 of a dataset's contents (a file's bytes; a folder's relative paths and bytes),
    so that new images or labels under the same path are a new audit; None for built-ins.
    Read once per (path, size, modification time) of each file."""
    if spec in BUILTIN:
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor an existing path."
        )
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        rel = "" if file == path else file.relative_to(path).as_posix()
        digest.update(
            f"{rel}\0{_file_digest(str(file), stat.st_size, stat.st_mtime_ns)}\0".encode()
        )
    return digest.hexdigest()[:32]


@lru_cache(maxsize=4096)
def _file_digest(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
