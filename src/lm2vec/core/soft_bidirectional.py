"""Attention between causal and bidirectional: future tokens count `weight` times, 0 -> 1.

Switching SmolLM2-135M to bidirectional attention at once costs about 26 STS Benchmark dev points
(54.2 -> 28.5) that short MNTP/SimCSE runs only partly win back. Moving there gradually (the soft-mask
idea of the iLLaMA work) lets training follow the model instead of restarting it from that cliff.

How: an additive bias log(weight) on every future position, through transformers' public mask and
attention interfaces (a registered mask function and transformers' own SDPA kernel under a name of
ours). exp(score + log w) = w * exp(score): each future token's share of the softmax is scaled by w, so
w = 0 is exactly causal (the bias is the dtype's lowest value) and w = 1 is exactly bidirectional (the
model goes back to plain `sdpa`). We chose a bias over a per-step probability of attending bidirectionally:
the bias gives one continuous path of models, so every row of a batch sees the same attention and the
loss and dev curves are smooth functions of the step; the probability version trains two different
models by turns.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from lm2vec.core.bidirectional import BidirectionalError, set_causal

SOFT = "lm2vec_soft_sdpa"  # our name for transformers' SDPA kernel with the soft mask below
FUTURE_WEIGHT = "lm2vec_future_weight"  # config attribute the mask function reads while soft


def soft_sdpa_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function=None, attention_mask: torch.Tensor | None = None, config=None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", **kwargs) -> torch.Tensor:
    """(B, 1, Q, K) additive float mask: 0 where the bidirectional mask allows a past key, log(weight)
    where it allows a future one, the dtype's lowest value where it allows nothing (padding)."""
    allowed = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        allow_is_causal_skip=False, allow_is_bidirectional_skip=False,
                        use_vmap=kwargs.get("use_vmap", False), device=device).bool()  # (B, 1, Q, K)
    weight = getattr(config, FUTURE_WEIGHT, 1.0)
    lowest = torch.finfo(dtype).min
    queries = torch.arange(q_length, device=device) + q_offset
    keys = torch.arange(kv_length, device=device) + kv_offset
    future = keys[None, :] > queries[:, None]  # (Q, K)
    bias = torch.zeros(q_length, kv_length, dtype=dtype, device=device)
    bias[future] = math.log(weight) if weight > 0 else lowest
    return torch.where(allowed, bias, torch.tensor(lowest, dtype=dtype, device=device))


AttentionInterface.register(SOFT, sdpa_attention_forward)
AttentionMaskInterface.register(SOFT, soft_sdpa_mask)


def _configs(model: nn.Module) -> list:
    config = model.config
    return [config] + [c for c in (getattr(config, "text_config", None),) if c is not None and c is not config]


def set_future_weight(model: nn.Module, weight: float) -> None:
    """Attend to future tokens with `weight` in [0, 1]: 0 causal, 1 fully bidirectional (plain sdpa).

    The model must use transformers' `sdpa` attention (our SOFT name reuses its kernel); a weight below
    1 turns the model's own causal switch off, since the soft mask carries the causal part itself.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"future-token weight must be in [0, 1], got {weight}")
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", SOFT):
        raise BidirectionalError(f"soft causal-to-bidirectional attention needs attn_implementation='sdpa', "
                                 f"this model uses {implementation!r}")
    if weight >= 1.0:
        model.set_attn_implementation("sdpa")
        for config in _configs(model):
            config.__dict__.pop(FUTURE_WEIGHT, None)
        return
    set_causal(model, False)  # the mask is built by the bidirectional path; the bias adds the causal part
    model.set_attn_implementation(SOFT)
    for config in _configs(model):
        setattr(config, FUTURE_WEIGHT, float(weight))


def annealed_weight(step: int, steps: int) -> float:
    """The future-token weight at `step` of a linear anneal over `steps` steps (1 from then on)."""
    return 1.0 if steps <= 0 else min(1.0, step / steps)
