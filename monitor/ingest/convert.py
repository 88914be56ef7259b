"""Fitting a decoded input to its model: resizing and colour conversion on pixel tensors.

Pure tensor code on one C×H×W float image in [0, 1] (no I/O, no database): what a serving stack
would do to a 512×512 photo or a grayscale JPEG before a 3×224×224 model sees it, as a
``ConvertRule`` (``monitor.ingest.convert_rules``) allows. Resizing is antialiased bilinear
(``torch.nn.functional.interpolate(..., antialias=True)``, as torchvision's ``Resize`` on
tensors); ``crop`` is torchvision's ``Resize(shorter side) + CenterCrop``. Colour conversion:
L→RGB repeats the channel, RGB→L is ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, as Pillow's
``convert("L")``), and an alpha channel (RGBA, LA) is composited over white, as a browser shows a
transparent image on a white page (Pillow's ``convert("RGB")`` would drop it, showing whatever
colour the transparent pixels happen to hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from monitor.ingest.convert_rules import RESIZED, ConvertRule

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> the colour mode they hold
LUMA_601 = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Conversion:
    """What was done to one input, as stored in ``input_scores.conversion``:
    ``resized 512×512→224×224 (crop); L→RGB`` (sizes are H×W)."""

    steps: tuple[str, ...]

    @property
    def text(self) -> str:
        return "; ".join(self.steps)


def needs(image_shape: tuple[int, ...], target: tuple[int, int, int]) -> tuple[bool, bool]:
    """(needs resizing, needs colour conversion) to turn ``image_shape`` into ``target``."""
    return tuple(image_shape[1:]) != tuple(target[1:]), image_shape[0] != target[0]


def convertible_colour(channels: int, target: int) -> bool:
    """Whether colour conversion reaches ``target`` channels (L or RGB) from ``channels``."""
    return channels in MODES and target in (1, 3)


def convert_image(
    image: torch.Tensor, target: tuple[int, int, int], rule: ConvertRule
) -> tuple[torch.Tensor, Conversion | None]:
    """``image`` (C×H×W in [0, 1]) brought towards ``target`` (C, H, W) as far as ``rule``
    allows, and what was done (None: nothing). The caller checks the result's shape: a rule
    without ``colour`` leaves the channels, one with ``resize = "none"`` leaves the size."""
    resize, colour = needs(tuple(image.shape), target)
    resize = resize and rule.resize != "none"
    colour = colour and rule.colour and convertible_colour(image.shape[0], target[0])
    steps: list[str] = []
    fewer = target[0] < image.shape[0]  # convert colour first when it leaves less to resize
    if colour and fewer:
        image, step = to_channels(image, target[0])
        steps.append(step)
    if resize:
        before = image.shape[1:]
        image = resize_image(image, (target[1], target[2]), rule.resize)
        steps.append(f"{RESIZED} {_size(before)}→{_size(image.shape[1:])} ({rule.resize})")
    if colour and not fewer:
        image, step = to_channels(image, target[0])
        steps.append(step)
    return image, Conversion(tuple(steps)) if steps else None


def to_channels(image: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """``image`` as L (1) or RGB (3) channels, and the step's text (``RGBA→RGB (alpha over
    white)``)."""
    source = MODES[image.shape[0]]
    note = ""
    if image.shape[0] in (2, 4):  # LA, RGBA: composite over white, then go on without alpha
        colour, alpha = image[:-1], image[-1:]
        image = colour * alpha + (1.0 - alpha)
        note = " (alpha over white)"
    if image.shape[0] == 3 and channels == 1:
        weights = torch.tensor(LUMA_601, dtype=image.dtype, device=image.device)
        image = torch.tensordot(weights, image, dims=1).unsqueeze(0)
    elif image.shape[0] == 1 and channels == 3:
        image = image.expand(3, -1, -1)
    return image.clamp(0.0, 1.0).contiguous(), f"{source}→{MODES[channels]}{note}"


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``image`` resized to ``size`` (H, W): ``stretch`` resizes to it; ``crop`` scales the
    image to cover it (shorter side to the model's size, as torchvision's ``Resize(int)``:
    the other side truncated), then cuts the centre out (torchvision's ``CenterCrop``)."""
    height, width = image.shape[1:]
    if mode == "stretch":
        return _interpolate(image, size)
    scaled = (
        (size[0], max(size[1], int(size[0] * width / height)))
        if size[0] / height >= size[1] / width  # the height is the side that limits
        else (max(size[0], int(size[1] * height / width)), size[1])
    )
    image = _interpolate(image, scaled)
    top = round((scaled[0] - size[0]) / 2.0)
    left = round((scaled[1] - size[1]) / 2.0)
    return image[:, top : top + size[0], left : left + size[1]].contiguous()


def _interpolate(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of one C×H×W image (unchanged when it has that size)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    out = F.interpolate(
        image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out.squeeze(0).clamp_(0.0, 1.0)


def _size(shape: torch.Size | tuple[int, ...]) -> str:
    return "×".join(str(int(d)) for d in shape)
