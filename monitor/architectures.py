"""Small image classifiers for the demo, the tests and the benchmarks.

Every model takes pixel-space input in [0, 1] (N×C×H×W) and returns logits; normalisation is a
layer inside the model, as the registry contract requires.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with fixed per-channel constants."""

    def __init__(self, mean: float = 0.5, std: float = 0.5, channels: int = 1) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), float(mean)))
        self.register_buffer("std", torch.full((1, channels, 1, 1), float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def digits_cnn(classes: int = 10) -> nn.Module:
    """Demo CNN v1 for 8×8 grey digits: two 3×3 convolutions, one pooling, two dense layers."""
    return nn.Sequential(
        Standardize(),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def digits_cnn_wide(classes: int = 10) -> nn.Module:
    """Demo CNN v2: wider, three convolutions, global average pooling."""
    return nn.Sequential(
        Standardize(),
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def cnn28(classes: int = 10, channels: int = 1) -> nn.Module:
    """A LeNet-sized CNN for 28×28 inputs (benchmarks and larger tests)."""
    return nn.Sequential(
        Standardize(channels=channels),
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def small_cnn_rgb(classes: int = 10) -> nn.Module:
    """A small strided CNN for colour images of any size from 32×32 up (224×224 benchmarks):
    three strided convolutions, then a 4×4 average pool that keeps where features are (a
    digit's shape spans the image; global pooling would see only stroke fragments); about
    11 MFLOPs at 224×224."""
    return nn.Sequential(
        Standardize(channels=3),
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, classes),
    )


class _BasicBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_cifar(classes: int = 10) -> nn.Module:
    """ResNet-18 for 32×32 RGB inputs (the CIFAR variant: 3×3 stem, no max-pool)."""
    stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    return _resnet18(stem, classes)


def resnet18_imagenet(classes: int = 10) -> nn.Module:
    """ResNet-18 for 224×224 RGB inputs (the ImageNet variant: 7×7 stride-2 stem and a 3×3
    stride-2 max-pool, so the blocks see 56×56); about 1.8 GFLOPs a forward pass."""
    stem = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    return _resnet18(stem, classes)


def _resnet18(stem: list[nn.Module], classes: int) -> nn.Sequential:
    """Normalisation, ``stem``, four stages of two basic blocks, global pooling, a dense layer."""
    layers: list[nn.Module] = [Standardize(0.45, 0.25, channels=3), *stem]
    inp = 64
    for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_BasicBlock(inp, out, stride), _BasicBlock(out, out, 1)]
        inp = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


class InputRounding(nn.Module):
    """Rounds pixels to ``levels`` steps before the model: a gradient-masking layer.

    Its gradient is zero almost everywhere, so gradient attacks stall while the model stays as
    vulnerable as before: the textbook case that credibility checks must catch.
    """

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


ARCHITECTURES = {
    "digits-cnn": digits_cnn,
    "digits-cnn-wide": digits_cnn_wide,
    "cnn28": cnn28,
    "resnet18": resnet18_cifar,
    "resnet18-imagenet": resnet18_imagenet,
    "small-cnn-rgb": small_cnn_rgb,
}
