"""The CPU op timings behind training/fused_lora.py and the bf16 attention choice (docs/performance.md).

Masking a bf16 activation (masked_fill, where, the bitwise AND of fused_lora.zero_dropped), and SDPA
forward + backward for one SmolLM2 layer at MNTP's shape (8 x 9 heads / 3 KV heads x 128 tokens x 64):
lm2vec's bf16 attention (training/cpu_attention.py, what `precision: bf16` trains with since
2026-12-04), the math kernel on bf16 (before), the flash kernel on float32 copies, the flash kernel on
bf16, float32 flash, and at SimCSE's shape (64 x 32 tokens, attention dropout 0.3) lm2vec's against the
math kernel; plus each bf16 path's error to float32 attention on the same rounded inputs (output and
the three input gradients), with and without the math kernel's bf16 reductions, on random inputs and
on SmolLM2-135M's own q, k, v (every layer, 32 STS Benchmark dev sentences, --data-dir); and transformers' RMSNorm forward +
backward (61 a SmolLM2 step) against a hand-written backward, to size what fusing it could save. Mean of
repeated calls, 2 threads, freed memory kept (as the training loop runs).

    python bench/train_ops.py [--tag T] [--data-dir D]   # prints a table, writes bench/results/train-ops-<date>[-T].json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lm2vec.io import write_json_atomic
from lm2vec.training.cpu_attention import Bf16Attention, additive_mask
from lm2vec.training.fused_lora import zero_dropped
from lm2vec.training.memory import keep_freed_memory

HERE = Path(__file__).resolve().parent
STS_DEV = Path("sts") / "STSBenchmark" / "sts-dev.csv"


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


def sdpa(backend, cast: bool = False, reduce_bf16: bool = False, dropout: float = 0.0):
    """An attention function (q, k, v) -> output through SDPA's `backend`, on float32 copies if `cast`."""

    def attend(q, k, v, mask=None):
        torch._C._set_math_sdp_allow_fp16_bf16_reduction(reduce_bf16)
        with sdpa_kernel([backend]):
            inputs = (q.float(), k.float(), v.float()) if cast else (q, k, v)
            out = F.scaled_dot_product_attention(*inputs, attn_mask=mask, enable_gqa=True, dropout_p=dropout).to(q.dtype)
        torch._C._set_math_sdp_allow_fp16_bf16_reduction(False)
        return out
    return attend


def lm2vec_bf16(dropout: float = 0.0):
    def attend(q, k, v, mask=None):
        additive = additive_mask(mask, False, q.shape[2], k.shape[2])
        return Bf16Attention.apply(q, k, v, additive, q.shape[-1] ** -0.5, dropout)
    return attend


def attention_step(attend, dtype, batch: int = 8, tokens: int = 128):
    """Forward + backward of one SmolLM2 layer's attention (9 query heads, 3 key/value heads, 64 wide)."""
    q = torch.randn(batch, tokens, 9, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    k = torch.randn(batch, tokens, 3, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    v = torch.randn(batch, tokens, 3, 64, dtype=dtype).transpose(1, 2).requires_grad_(True)
    grad = torch.randn(batch, 9, tokens, 64, dtype=dtype)
    return lambda: attend(q, k, v).backward(grad)


def relative_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def attention_error(attend, logit_scale: float) -> dict:
    """Relative error of the output and of dq, dk, dv to float32 attention on random bf16 inputs."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, heads, 128, 64, generator=generator).mul_(s).bfloat16() for heads, s in
               ((9, logit_scale), (3, logit_scale), (3, 1.0)))
    return errors_on(attend, q, k, v, None, torch.randn(8, 9, 128, 64, generator=generator).bfloat16())


def errors_on(attend, q, k, v, mask, grad) -> dict:
    """Relative error of the output and of dq, dk, dv to float32 attention on the same bf16 inputs."""
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    exact = [t.float().requires_grad_(True) for t in (q, k, v)]  # float32 leaves: unrounded gradients
    reference = F.scaled_dot_product_attention(*exact, attn_mask=mask, enable_gqa=True)
    reference.backward(grad.float())
    out = attend(*ours, mask).float()
    out.backward(grad.float())
    errors = {"relative": relative_gap(out, reference), "largest": (out - reference).abs().max().item()}
    errors.update({f"d{name} relative": relative_gap(a.grad, b.grad) for name, a, b in zip("qkv", ours, exact)})
    return errors


def captured_attention_inputs(data_dir: Path, count: int = 32) -> list[tuple]:
    """(q, k, v, mask) of every layer of SmolLM2-135M in bf16 (bidirectional, as trained) on the first
    `count` STS Benchmark dev sentences: real activations, with the attention sinks of a real decoder."""
    from transformers import AttentionInterface

    from lm2vec.core.encoder import Encoder
    from lm2vec.data.scored_pairs import load_scored_pairs

    texts = load_scored_pairs(data_dir / STS_DEV).sentence1[:count]
    encoder = Encoder.from_pretrained("smollm2-135m", dtype=torch.bfloat16, device="cpu", bidirectional=True)
    mapping, captured = AttentionInterface._global_mapping, []
    original = mapping["sdpa"]

    def capture(module, q, k, v, mask, **kwargs):
        captured.append((q.detach(), k.detach(), v.detach(), mask))
        return original(module, q, k, v, mask, **kwargs)
    mapping["sdpa"] = capture
    try:
        with torch.no_grad():
            encoder.embed(encoder.collate(encoder.tokenize([(None, text) for text in texts])))
    finally:
        mapping["sdpa"] = original
    return captured


def real_activation_errors(data_dir: Path) -> dict:
    """Median and largest error over SmolLM2's 30 layers, each path against float32 attention."""
    layers, generator = captured_attention_inputs(data_dir), torch.Generator().manual_seed(0)
    grads = [torch.randn(q.shape, generator=generator).bfloat16() for q, *_ in layers]
    result = {}
    for name, attend in (("lm2vec bf16 attention", lm2vec_bf16()), ("math bf16", sdpa(SDPBackend.MATH))):
        per_layer = [errors_on(attend, q, k, v, mask, grad) for (q, k, v, mask), grad in zip(layers, grads)]
        result[name] = {key: {"median": statistics.median(e[key] for e in per_layer), "largest": max(e[key] for e in per_layer)}
                        for key in ("relative", "dq relative", "dk relative", "dv relative")}
    return result


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
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"),
                        help="STS Benchmark dev sentences for the errors on SmolLM2's own activations")
    args = parser.parse_args()
    if args.tag is not None and not args.tag.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--tag {args.tag!r}: letters, digits, '-' and '_' only (it names a file)")
    if not (args.data_dir / STS_DEV).is_file():
        parser.error(f"--data-dir {args.data_dir}: no {STS_DEV} there (the shared data folder)")
    torch.set_num_threads(2)
    keep_freed_memory()
    math, flash = SDPBackend.MATH, SDPBackend.FLASH_ATTENTION
    bf16 = torch.bfloat16
    paths = {"lm2vec bf16 attention (trained with)": attention_step(lm2vec_bf16(), bf16),
             "math, bf16 (trained with before 2026-12-04)": attention_step(sdpa(math), bf16),
             "math, bf16 reductions": attention_step(sdpa(math, reduce_bf16=True), bf16),
             "flash on float32 copies": attention_step(sdpa(flash, cast=True), bf16),
             "flash, bf16": attention_step(sdpa(flash), bf16),
             "flash, float32 (float32 training)": attention_step(sdpa(flash), torch.float32),
             "SimCSE 64 x 32, dropout 0.3: lm2vec bf16 attention": attention_step(lm2vec_bf16(0.3), bf16, 64, 32),
             "SimCSE 64 x 32, dropout 0.3: math, bf16": attention_step(sdpa(math, dropout=0.3), bf16, 64, 32)}
    timings = {name: mean_ms(step, calls=20) for name, step in paths.items()}
    errors = {f"{name}, logit scale {scale:g}": attention_error(attend, scale)
              for name, attend in (("lm2vec bf16 attention", lm2vec_bf16()), ("math bf16", sdpa(math)),
                                   ("math bf16 reductions", sdpa(math, reduce_bf16=True)), ("flash bf16", sdpa(flash)))
              for scale in (1.0, 3.0)}
    result = {"date": datetime.date.today().isoformat(), "device": f"CPU {platform.machine()}, 2 threads",
              "masking": masking(), "attention_fwd_bwd_ms_per_layer": timings, "attention_error_to_float32": errors,
              "attention_error_on_smollm2_activations": real_activation_errors(args.data_dir),
              "rms_norm_fwd_bwd_ms": rms_norm()}
    for section in ("masking", "attention_fwd_bwd_ms_per_layer", "attention_error_to_float32",
                    "attention_error_on_smollm2_activations", "rms_norm_fwd_bwd_ms"):
        print(section)
        for name, value in result[section].items():
            print(f"  {name:52} {value if isinstance(value, dict) else round(value, 3)}")
    out = HERE / "results" / f"train-ops-{result['date']}{'-' + args.tag if args.tag else ''}.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
