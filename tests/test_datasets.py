from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.datasets import check_labels, load_dataset
from monitor.errors import DatasetError


def test_digits_is_pixel_space_with_a_fixed_stratified_split() -> None:
    test, train = load_dataset("digits"), load_dataset("digits", "train")
    assert test.x.shape == (540, 1, 8, 8) and train.x.shape == (1257, 1, 8, 8)
    assert test.x.dtype == torch.float32 and test.y.dtype == torch.int64
    assert float(test.x.min()) == 0.0 and float(test.x.max()) == 1.0
    counts = torch.bincount(test.y, minlength=10)
    totals = counts + torch.bincount(train.y, minlength=10)
    assert ((counts - 0.3 * totals).abs() <= 1).all()  # stratified: 30% of each class
    assert torch.equal(load_dataset("digits").x, test.x)  # fixed split


def test_digits28_is_the_same_images_resized() -> None:
    small, big = load_dataset("digits"), load_dataset("digits28")
    assert big.x.shape == (540, 1, 28, 28)
    assert torch.equal(small.y, big.y)
    assert float(big.x.min()) >= 0.0 and float(big.x.max()) <= 1.0
    down = torch.nn.functional.interpolate(big.x, size=(8, 8), mode="area")
    assert torch.corrcoef(torch.stack([down.flatten(), small.x.flatten()]))[0, 1] > 0.9


def _npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_in_several_layouts(tmp_path: Path) -> None:
    x = np.random.rand(6, 5, 5, 3).astype(np.float32)
    data = load_dataset(_npz(tmp_path, x=x, y=np.arange(6) % 2, classes=np.array(["a", "b"])))
    assert data.x.shape == (6, 3, 5, 5) and data.classes == ("a", "b")
    grey = load_dataset(_npz(tmp_path, x=(x[..., 0] * 255).astype(np.uint8), y=np.zeros(6, int)))
    assert grey.x.shape == (6, 1, 5, 5) and float(grey.x.max()) <= 1.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((0, 1, 4, 4), np.float32), "y": np.zeros(0, int)}, "holds no images"),
        ({"x": np.zeros((3, 7, 4, 4), np.float32), "y": np.zeros(3, int)}, "must be shaped"),
        ({"x": np.zeros((3, 4), np.float32), "y": np.zeros(3, int)}, "must be shaped"),
        ({"x": np.zeros((3, 1, 4, 4), np.int32), "y": np.zeros(3, int)}, "float in"),
        ({"x": np.full((3, 1, 4, 4), 2.0, np.float32), "y": np.zeros(3, int)}, "lie in \\[0, 1\\]"),
        ({"x": np.full((3, 1, 4, 4), np.nan, np.float32), "y": np.zeros(3, int)}, "NaN"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(2, int)}, "3 images but 2"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.array([0, -1, 2])}, "non-negative"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(3, float)}, "integer"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32)}, "lacks the array"),
    ],
)
def test_npz_errors_are_one_sentence(tmp_path: Path, arrays, message) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(_npz(tmp_path, **arrays))


def test_labels_beyond_the_model(tmp_path: Path) -> None:
    data = load_dataset(_npz(tmp_path, x=np.zeros((2, 1, 4, 4), np.float32), y=np.array([0, 12])))
    with pytest.raises(DatasetError, match="label 12 but m predicts only 10 classes"):
        check_labels(data, 10, "m")


def _folder(tmp_path: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "L") -> Path:
    root = tmp_path / "images"
    for label, shapes in sizes.items():
        (root / label).mkdir(parents=True)
        for i, shape in enumerate(shapes):
            pixels = np.random.randint(0, 256, (*shape[::-1], 3) if mode == "RGB" else shape[::-1])
            Image.fromarray(pixels.astype(np.uint8), mode=mode).save(root / label / f"{i}.png")
    return root


def test_image_folder_reads_one_class_per_subfolder(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"cat": [(6, 4)] * 2, "dog": [(6, 4)] * 3}, mode="RGB")
    data = load_dataset(str(root))
    assert data.classes == ("cat", "dog")
    assert data.x.shape == (5, 3, 4, 6)
    assert data.y.tolist() == [0, 0, 1, 1, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": [(4, 4), (5, 4)]})
    with pytest.raises(DatasetError, match="resize them to one size"):
        load_dataset(str(root))
    (root / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*1\.png"):
        load_dataset(str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="neither a built-in"):
        load_dataset("cifar-nope")
