"""Attention for bf16 training on CPUs: bf16 matmuls where rounding is harmless, float32 where it is not.

SDPA has no good bf16 training kernel on CPUs: the flash kernel's bf16 backward is slower than its
float32 one, and the math kernel (what `precision: bf16` used until 2026-12-04) casts q, k and v to
float32, repeats the key/value heads for grouped-query attention and runs every matmul in float32:
7.4 ms a SmolLM2 layer forward + backward at MNTP's shape, ~20% of a bf16 MNTP step. Here:
- the scores q k^T are a float32 matmul (rounding them to bf16 multiplied the forward error 3-9x,
  `bench/train_ops.py`), the softmax is float32, and only the probabilities are rounded for P V;
- the backward's four matmuls run in bf16 with float32 accumulation, as every other matmul of a
  mixed-precision backward does; the softmax gradient is float32;
- grouped-query heads are never repeated: the G query heads that share a key/value head are stacked
  along the sequence axis, so each key/value head meets them in one bigger matmul;
- attention dropout uses FastDropout's masks (a quarter of the random numbers of `bernoulli_`).
The error to float32 attention stays near the math kernel's (`bench/train_ops.py`); anything this does
not cover (other dtypes or devices, position biases, soft-capping, per-head masks of another shape)
goes to transformers' own function. Training swaps it in for the step only (`bf16_cpu_attention`).
"""

from __future__ import annotations

import contextlib
import math

import torch
from transformers import AttentionInterface

from lm2vec.core.soft_bidirectional import SOFT
from lm2vec.training.fast_dropout import LEVELS, FastDropout
from lm2vec.training.fused_lora import zero_dropped

SWAPPED = ("sdpa", SOFT)  # the implementations whose kernels this replaces while training in bf16


def additive_mask(mask: torch.Tensor | None, causal: bool, q_length: int, kv_length: int) -> torch.Tensor | None:
    """A float32 additive mask (0 attend, lowest float32 not) from a boolean or additive one, or a
    causal triangle when there is none and the layer is causal; None for full attention."""
    lowest = torch.finfo(torch.float32).min
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(1, 1, q_length, kv_length, dtype=torch.bool).tril_()
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, lowest)
    return mask.float()  # already additive (soft annealing's log-weights)


class Bf16Attention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) [dropout] v for bf16 q (B, H, T, D) and k, v (B, H_kv, S, D);
    `mask` is None or float32 broadcastable to (B, 1 or H, T, S); returns (B, H, T, D) bf16."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scale, dropout):
        with torch.autocast("cpu", enabled=False):
            batch, heads, q_length, dim = query.shape
            kv_heads, kv_length = key.shape[1], key.shape[2]
            rows = (batch * kv_heads, heads // kv_heads * q_length)
            q = query.reshape(*rows, dim)
            k, v = key.reshape(rows[0], kv_length, dim), value.reshape(rows[0], kv_length, dim)
            scores = torch.bmm(q.float(), k.float().transpose(1, 2)).mul_(scale)
            if mask is not None:
                groups = scores.view(batch, kv_heads, -1, q_length, kv_length)
                groups.add_(mask.reshape(mask.shape[0], -1, 1, q_length, kv_length)
                            if mask.shape[1] == 1 else mask.reshape(mask.shape[0], kv_heads, -1, q_length, kv_length))
            probs = torch.softmax(scores, dim=-1)
            kept, keep, rescale = probs.to(query.dtype), None, 1.0
            if dropout > 0:
                dropper = FastDropout(dropout)
                keep, rescale = dropper.keep_mask(kept.shape), LEVELS / (LEVELS - dropper.dropped_levels)
                zero_dropped(kept, keep, in_place=True)
            out = torch.bmm(kept, v)
            if rescale != 1.0:
                out.mul_(rescale)
            ctx.save_for_backward(q, k, v, probs, kept, keep)
            ctx.scale, ctx.rescale, ctx.shapes = scale, rescale, (query.shape, key.shape)
            return out.view(batch, heads, q_length, dim)

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast("cpu", enabled=False):
            q, k, v, probs, kept, keep = ctx.saved_tensors
            grad_out = grad.to(q.dtype).reshape(q.shape[0], q.shape[1], v.shape[2])
            grad_value = torch.bmm(kept.transpose(1, 2), grad_out)
            grad_probs = torch.bmm(grad_out, v.transpose(1, 2))
            if keep is not None:
                zero_dropped(grad_probs, keep, in_place=True)
            grad_probs = grad_probs.float()
            if ctx.rescale != 1.0:
                grad_value.mul_(ctx.rescale)
                grad_probs.mul_(ctx.rescale)
            # softmax backward: dS = P * (dP - rowsum(P * dP)). The row sum from float32 P and dP, not
            # from the bf16 output as rowsum(dO * O): dP - rowsum cancels, and O's rounding made dq 2-4x
            # less exact on SmolLM2's real activations (0.5-1.25% against 0.26-0.32%).
            row_dot = (probs * grad_probs).sum(-1, keepdim=True)
            grad_scores = grad_probs.sub_(row_dot).mul_(probs).mul_(ctx.scale).to(q.dtype)
            grad_query = torch.bmm(grad_scores, k)
            grad_key = torch.bmm(grad_scores.transpose(1, 2), q)
            query_shape, key_shape = ctx.shapes
            return (grad_query.view(query_shape), grad_key.view(key_shape), grad_value.view(key_shape),
                    None, None, None)


def _covered(query, key, value, mask, kwargs) -> bool:
    """Whether Bf16Attention computes what transformers' sdpa function would for these inputs."""
    tensors_ok = all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in (query, key, value))
    shapes_ok = (key.shape == value.shape and query.shape[-1] == key.shape[-1]
                 and query.shape[1] % key.shape[1] == 0 and query.shape[0] == key.shape[0])
    mask_ok = mask is None or (mask.dim() == 4 and not mask.requires_grad and mask.shape[1] in (1, query.shape[1])
                               and mask.shape[0] in (1, query.shape[0])
                               and tuple(mask.shape[2:]) == (query.shape[2], key.shape[2]))
    extras_ok = kwargs.get("position_bias") is None and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
    return tensors_ok and shapes_ok and mask_ok and extras_ok


def _bf16_forward(fallback):
    """transformers' attention-function signature around Bf16Attention, `fallback` for what it does not cover."""

    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  is_causal: bool | None = None, **kwargs):
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(causal) and query.shape[2] > 1 and attention_mask is None  # as transformers' sdpa decides
        # a causal query shorter than its keys (a cache's prefix) keeps transformers' alignment rules
        if not _covered(query, key, value, attention_mask, kwargs) or (causal and query.shape[2] != key.shape[2]):
            return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            is_causal=is_causal, **kwargs)
        mask = additive_mask(attention_mask, causal, query.shape[2], key.shape[2])
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        out = Bf16Attention.apply(query, key, value, mask, scale, float(dropout))
        return out.transpose(1, 2).contiguous(), None

    attention.lm2vec_fallback = fallback
    return attention


@contextlib.contextmanager
def bf16_cpu_attention():
    """While inside, transformers' `sdpa` (and our soft-mask variant) attention runs Bf16Attention for
    bf16 CPU inputs; the original functions come back on exit, also after an error."""
    mapping = AttentionInterface._global_mapping
    originals = {name: mapping[name] for name in SWAPPED if name in mapping}
    for name, function in originals.items():
        mapping[name] = _bf16_forward(getattr(function, "lm2vec_fallback", function))
    try:
        yield
    finally:
        mapping.update(originals)
