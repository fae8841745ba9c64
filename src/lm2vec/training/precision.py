"""Training precision: which dtype the frozen base weights live in, and whether autocast runs.

LoRA trains a few million parameters on top of a frozen base. Keeping that base in bf16 means every
matmul runs on the hardware's bf16 units with no per-op cast (autocast re-casts float32 weights at
every op, which is why it paid only 1.17-1.33x on this CPU), while the trainable LoRA weights, the loss
and the optimiser stay in float32, so updates are not rounded away.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16_units() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo), where bf16 matmuls are fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' on bf16 hardware (CUDA with bf16, or a CPU with bf16 units), else 'fp32';
    'no' is 'fp32'; other values are returned as they are."""
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_bf16_units() else "fp32"
    return "fp32" if precision == "no" else precision


def base_dtype(resolved: str) -> torch.dtype:
    """The dtype the frozen base weights are loaded in."""
    return torch.bfloat16 if resolved == "bf16" else torch.float32


def autocast_context(resolved: str, device: torch.device | str):
    """torch.autocast for the autocast modes; nothing for fp32 and for bf16 base weights."""
    if resolved not in ("bf16-autocast", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16-autocast" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
