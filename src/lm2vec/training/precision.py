"""Training precision: which dtype the frozen base weights live in, and whether autocast runs.

LoRA trains a few million parameters on top of a frozen base. `bf16` keeps that base in bf16, so its
matmuls run on the hardware's bf16 units with no per-op cast (autocast over float32 weights re-casts
them at every op, which is why `bf16-autocast` paid only 1.17-1.33x on this CPU). The adapters' master
weights, the optimiser and the losses stay in float32, so updates are not rounded away; the adapters'
own matmuls run under bf16 autocast (their small weights cast per op, as in any mixed-precision
training), which spares casting every activation to float32 and back.
"""

from __future__ import annotations

import contextlib
import functools
import os
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


MATH_ATTENTION_MAX_LENGTH = 512  # above this, the math kernel's (T x T) attention maps cost too much memory


def autocast_context(resolved: str, device: torch.device | str, model: torch.nn.Module | None = None,
                     max_length: int = MATH_ATTENTION_MAX_LENGTH):
    """What a training forward and backward run under: nothing for fp32; torch.autocast for the autocast
    modes; for bf16 base weights, bf16 autocast with peft's float32 input casts off (`model`'s adapters)
    and, on a CPU with sequences up to MATH_ATTENTION_MAX_LENGTH, lm2vec's bf16 attention
    (training/cpu_attention.py: ~2x faster than SDPA's math kernel at MNTP's shape, 2026-12-04), with SDPA's math
    kernel for what it does not cover (2.5x faster than the CPU flash kernel's bf16 backward at 128
    tokens, 2026-12-03)."""
    device_type = torch.device(device).type
    if resolved == "bf16":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from lm2vec.training.cpu_attention import bf16_cpu_attention
        from lm2vec.training.lora import lora_inputs_uncast

        stack = contextlib.ExitStack()
        if model is not None:
            stack.enter_context(lora_inputs_uncast(model))
        stack.enter_context(torch.autocast(device_type=device_type, dtype=torch.bfloat16))
        if device_type == "cpu" and max_length <= MATH_ATTENTION_MAX_LENGTH:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            if os.environ.get("LM2VEC_BF16_ATTENTION", "1") != "0":  # 0: the math kernel only (benchmarks)
                stack.enter_context(bf16_cpu_attention())
        return stack
    if resolved not in ("bf16-autocast", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16-autocast" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)
