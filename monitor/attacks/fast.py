"""Opt-in fast mode for attacks on CUDA: channels_last memory, bf16 autocast, torch.compile.

The attack code is unchanged; the model is wrapped. Gradients still flow to the input in fp32
(the wrapper casts logits back to float), so the attacks' steps and projections are exact; only
the model's arithmetic is bf16. Measure the robust-accuracy difference against fp32 before
relying on it (``benchmarks/attacks.py --device cuda`` prints both).
"""

from __future__ import annotations

import torch
from torch import nn


class FastModel(nn.Module):
    """``model`` run under bf16 autocast with channels_last inputs; logits returned as float32."""

    def __init__(self, model: nn.Module, *, bf16: bool = True, channels_last: bool = True) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x).float()


def accelerate(
    model: nn.Module, *, compile: bool = True, bf16: bool = True, channels_last: bool = True
) -> nn.Module:
    """A faster stand-in for ``model`` in attacks (same logits up to bf16 rounding).

    With ``channels_last`` the model's parameters are converted in place (as ``Module.to`` does).
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast: nn.Module = FastModel(model, bf16=bf16, channels_last=channels_last)
    if compile:
        fast = torch.compile(fast, dynamic=True)
    return fast
