"""The CPU op timings behind training/fused_lora.py and the bf16 attention choice (docs/performance.md).

Masking a bf16 activation (masked_fill, where, the bitwise AND of fused_lora.zero_dropped), and SDPA
forward + backward for one SmolLM2 layer at MNTP's shape (8 x 9 heads / 3 KV heads x 128 tokens x 64):
the math kernel on bf16 (what `precision: bf16` trains with), the flash kernel on float32 copies, the
flash kernel on bf16, float32 flash; plus each bf16 path's error to float32 attention on the same
rounded inputs, with and without the math kernel's bf16 reductions; and transformers' RMSNorm forward +
backward (61 a SmolLM2 step) against a hand-written backward, to size what fusing it could save. Mean of
repeated calls, 2 threads, freed memory kept (as the training loop runs).

    python bench/train_ops.py [--tag T]   # prints a table, writes bench/results/train-ops-<date>[-T].json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lm2vec.io import write_json_atomic
from lm2vec.training.fused_lora import zero_dropped
from lm2vec.training.memory import keep_freed_memory

HERE = Path(__file__).resolve().parent


def mean_ms(fn, calls: int = 30) -> float:
    fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e3


def masking() -> dict:
    """(2048, 576) bf16 activation, 5% dropped."""
    values = torch.randn(2048, 576, dtype=torch.bfloat16)
    keep = torch.rand(2048, 576) > 0.05
    return {"masked_fill_ms": mean_ms(lambda: values.masked_fill(~keep, 0)),
            "where_ms": mean_ms(lambda: torch.where(keep, values, 0)),
            "bitwise_and_ms (zero_dropped)": mean_ms(lambda: zero_dropped(values, keep))}


def attention_step(dtype, backend, cast: bool, reduce_bf16: bool = False):
    q = torch.randn(8, 128, 9, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    k = torch.randn(8, 128, 3, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    v = torch.randn(8, 128, 3, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    grad = torch.randn(8, 9, 128, 64, dtype=dtype)

    def run():
        torch._C._set_math_sdp_allow_fp16_bf16_reduction(reduce_bf16)
        with sdpa_kernel([backend]):
            inputs = (q.float(), k.float(), v.float()) if cast else (q, k, v)
            F.scaled_dot_product_attention(*inputs, enable_gqa=True).to(dtype).backward(grad)
        torch._C._set_math_sdp_allow_fp16_bf16_reduction(False)
    return run


def attention_error(backend, reduce_bf16: bool, logit_scale: float) -> dict:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, heads, 128, 64, generator=generator) * s for heads, s in
               ((9, logit_scale), (3, logit_scale), (3, 1.0)))
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    torch._C._set_math_sdp_allow_fp16_bf16_reduction(reduce_bf16)
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True).float()
    torch._C._set_math_sdp_allow_fp16_bf16_reduction(False)
    return {"relative": ((out - reference).norm() / reference.norm()).item(), "largest": (out - reference).abs().max().item()}


class HandWrittenRMSNorm(torch.autograd.Function):
    """Llama's RMSNorm (normalise in float32, round, times weight) with its input gradient in one node;
    the weight is frozen, as in LoRA training. Forward equals transformers' bit for bit."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x.float() * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad_normed, normed = (grad * weight).float(), x.float() * rstd
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        return (grad_normed - normed * dot).mul_(rstd).to(x.dtype), None, None


def rms_norm_timings(dtype) -> tuple[float, float]:
    """(transformers, hand-written) ms for one SmolLM2 RMSNorm at MNTP's shape (8 x 128 x 576), input gradient only."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype).requires_grad_(False)
    x = torch.randn(8, 128, 576, dtype=dtype, requires_grad=True)
    grad = torch.randn(8, 128, 576, dtype=dtype)
    return (mean_ms(lambda: torch.autograd.grad(norm(x), x, grad), calls=50),
            mean_ms(lambda: torch.autograd.grad(HandWrittenRMSNorm.apply(x, norm.weight, 1e-5), x, grad), calls=50))


def rms_norm() -> dict:
    out = {}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"transformers, {name}"], out[f"hand-written backward, {name}"] = rms_norm_timings(dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="appended to the result's file name")
    args = parser.parse_args()
    if args.tag is not None and not args.tag.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--tag {args.tag!r}: letters, digits, '-' and '_' only (it names a file)")
    torch.set_num_threads(2)
    keep_freed_memory()
    math, flash = SDPBackend.MATH, SDPBackend.FLASH_ATTENTION
    paths = {"math, bf16 (trained with)": (torch.bfloat16, math, False, False),
             "math, bf16 reductions": (torch.bfloat16, math, False, True),
             "flash on float32 copies": (torch.bfloat16, flash, True, False),
             "flash, bf16": (torch.bfloat16, flash, False, False),
             "flash, float32 (float32 training)": (torch.float32, flash, False, False)}
    timings = {name: mean_ms(attention_step(*spec), calls=20) for name, spec in paths.items()}
    errors = {f"{name}, logit scale {scale:g}": attention_error(backend, reduce, scale)
              for name, backend, reduce in (("math bf16", math, False), ("math bf16 reductions", math, True),
                                            ("flash bf16", flash, False)) for scale in (1.0, 3.0)}
    result = {"date": datetime.date.today().isoformat(), "device": f"CPU {platform.machine()}, 2 threads",
              "masking": masking(), "attention_fwd_bwd_ms_per_layer": timings, "attention_error_to_float32": errors,
              "rms_norm_fwd_bwd_ms": rms_norm()}
    for section in ("masking", "attention_fwd_bwd_ms_per_layer", "attention_error_to_float32", "rms_norm_fwd_bwd_ms"):
        print(section)
        for name, value in result[section].items():
            print(f"  {name:45} {value if isinstance(value, dict) else round(value, 3)}")
    out = HERE / "results" / f"train-ops-{result['date']}{'-' + args.tag if args.tag else ''}.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
