"""Dropout whose masks cost a quarter of the random numbers: for LoRA's input dropout on CPUs.

LoRA drops each adapter's *input* (LLM2Vec: p = 0.05 on every projection), so a SimCSE step on
SmolLM2-135M draws about 300 million mask elements. On a CPU `nn.Dropout` draws one random number per
element (about 5 ns each here), which was 26% of a bf16 SimCSE step (bench/results/train-profile-*).
This module draws one 64-bit number per four elements and compares each 16-bit quarter with a
threshold: the same Bernoulli masks in distribution (p rounded to a multiple of 1/65536, and the kept
values scaled by the rounded keep rate, so the output stays unbiased), a third of the time. On other
devices (CUDA's fused dropout is already fast) it is `F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # a mask element is one signed 16-bit quarter of a 64-bit random number


class FastDropout(nn.Module):
    """`nn.Dropout(p)` for CPU tensors, drawing masks from the global RNG (so `torch.manual_seed`
    replays them, which GradCache relies on)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dropped_levels = round(p * LEVELS)  # quarters below -32768 + this are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return torch.where(self.keep_mask(x.shape), x * (LEVELS / (LEVELS - self.dropped_levels)), 0)

    def keep_mask(self, shape: torch.Size) -> torch.Tensor:
        """Boolean mask of `shape`, True with probability 1 - dropped_levels / 65536."""
        count = shape.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
        quarters = draws.view(torch.int16)[:count]  # (4 * draws,) uniform in [-32768, 32767]
        return (quarters >= -(LEVELS // 2) + self.dropped_levels).view(shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` child of a `lora_dropout` container for a FastDropout of the same rate;
    returns how many were swapped."""
    swapped = 0
    for name, module in model.named_modules():
        if not name.endswith("lora_dropout"):
            continue
        for key, child in module.items():
            if type(child) is nn.Dropout:
                module[key] = FastDropout(child.p)
                swapped += 1
    return swapped
