"""LoRA linear layers as one autograd node on CPUs: the adapter's scale and sum fused into its matmul.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`, and on a CPU every step of that which is
not a matmul is a pass over a whole activation, forward and backward: dropout's 1/(1-p) scale, its mask,
`* scaling`, `+`, and their gradients. Here the 1/(1-p) joins `scaling`, the mask is applied once, and
`addmm` adds the scaled adapter output into the base layer's output inside the matmul; the backward is
written out the same way. The masks are FastDropout's, drawn from the global RNG in the same order and
shape as before, so a run follows the same trajectory as peft's forward up to float rounding
(tests/test_fused_lora.py). Frozen stacked adapters (earlier stages, no dropout) are summed in the same
node. Anything else (DoRA, merged or disabled adapters, quantised or non-Linear bases, a base whose
dtype differs from its input, CUDA) keeps peft's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from lm2vec.training.fast_dropout import LEVELS, FastDropout

SAME_WIDTH_INTS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
                   torch.float64: torch.int64}


def zero_dropped(values: torch.Tensor, keep: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """`values` with the elements where `keep` is False set to +0, as a bitwise AND with an all-ones /
    all-zeros integer mask: on a CPU 3-4x faster than masked_fill or where for bf16 (bool-mask kernels
    are not vectorised; a bool -> int16 conversion and an AND are)."""
    ints = SAME_WIDTH_INTS[values.dtype]
    bits = keep.view(values.shape).to(ints).neg_()  # -1 (all ones) where kept, 0 where dropped
    if in_place:
        values.view(ints).bitwise_and_(bits)
        return values
    return (values.view(ints) & bits).view(values.dtype)


class FusedLoraFunction(torch.autograd.Function):
    """y = x W^T + bias + s * ((x * keep) A^T) B^T + sum_f s_f (x A_f^T) B_f^T; grads for x, A and B only
    (the base weight, its bias and the frozen adapters never train). `scale` includes dropout's 1/(1-p)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, keep, scale, frozen):
        rows = x.reshape(-1, x.shape[-1])
        out = F.linear(rows, weight, bias)
        a, b = lora_a.to(out.dtype), lora_b.to(out.dtype)
        kept = rows if keep is None else zero_dropped(rows, keep)
        hidden = kept @ a.t()
        out.addmm_(hidden, b.t(), alpha=scale)
        for frozen_a, frozen_b, frozen_scale in frozen:
            out.addmm_(rows @ frozen_a.to(out.dtype).t(), frozen_b.to(out.dtype).t(), alpha=frozen_scale)
        ctx.save_for_backward(weight, kept, keep, hidden, a, b)
        ctx.scale, ctx.frozen, ctx.x_shape = scale, frozen, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        weight, kept, keep, hidden, a, b = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).to(hidden.dtype)
        grad_hidden = (grad @ b).mul_(ctx.scale)  # (N, r)
        grad_a = grad_hidden.t() @ kept if ctx.needs_input_grad[3] else None
        grad_b = (grad.t() @ hidden).mul_(ctx.scale) if ctx.needs_input_grad[4] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight.to(grad.dtype)
            if keep is None:
                grad_x.addmm_(grad_hidden, a)
            else:
                grad_x.add_(zero_dropped(grad_hidden @ a, keep, in_place=True))
            for frozen_a, frozen_b, frozen_scale in ctx.frozen:
                grad_x.addmm_(grad @ frozen_b.to(grad.dtype), frozen_a.to(grad.dtype), alpha=frozen_scale)
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _dropout_scale(dropout: nn.Module) -> float | None:
    """The keep-rescale 1/(1-p) of an adapter's input dropout: 1.0 where it does nothing (eval mode,
    Identity, p = 0), None where this path cannot draw its mask (a plain nn.Dropout with p > 0)."""
    if isinstance(dropout, nn.Identity) or not dropout.training:
        return 1.0
    if isinstance(dropout, FastDropout):
        return 1.0 if dropout.dropped_levels == 0 else LEVELS / (LEVELS - dropout.dropped_levels)
    return 1.0 if isinstance(dropout, nn.Dropout) and dropout.p == 0 else None


def _plan(layer: LoraLinear, x: torch.Tensor, kwargs: dict):
    """(primary adapter, frozen others, its keep-rescale) if this call can take the fused path, else None.

    The adapters compute in x's dtype: as peft does under autocast of that dtype (with its input casts
    off, training/precision.py) or when they are stored in it; otherwise peft casts x up, and its own
    forward runs."""
    base = layer.base_layer
    if (layer.disable_adapters or layer.merged or kwargs or x.device.type != "cpu" or type(base) is not nn.Linear
            or base.weight.dtype != x.dtype or base.weight.requires_grad
            or (base.bias is not None and base.bias.requires_grad)):
        return None
    autocast = torch.is_autocast_enabled("cpu")
    if autocast and torch.get_autocast_dtype("cpu") != x.dtype:
        return None
    names = [name for name in layer.active_adapters if name in layer.lora_A]
    if not names or any(_unplain(layer, name) or (layer.lora_A[name].weight.dtype != x.dtype and not autocast)
                        for name in names):
        return None
    primary, others = names[0], names[1:]
    for name in others:  # frozen earlier stages: no dropout, nothing trains
        if (_dropout_scale(layer.lora_dropout[name]) != 1.0
                or layer.lora_A[name].weight.requires_grad or layer.lora_B[name].weight.requires_grad):
            return None
    keep_rescale = _dropout_scale(layer.lora_dropout[primary])
    return None if keep_rescale is None else (primary, others, keep_rescale)


def _unplain(layer: LoraLinear, name: str) -> bool:
    """True for adapters that are more than x A^T B^T (DoRA and other variants, a bias on B)."""
    return (name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name, False)
            or layer.lora_B[name].bias is not None)


def fused_forward(layer: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The LoRA layer's forward: fused where `_plan` allows, peft's own otherwise."""
    plan = None if args else _plan(layer, x, kwargs)
    if plan is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    primary, others, keep_rescale = plan
    keep = layer.lora_dropout[primary].keep_mask(x.shape) if keep_rescale != 1.0 else None  # FastDropout's draws
    frozen = tuple((layer.lora_A[n].weight, layer.lora_B[n].weight, layer.scaling[n]) for n in others)
    return FusedLoraFunction.apply(x, layer.base_layer.weight, layer.base_layer.bias, layer.lora_A[primary].weight,
                                   layer.lora_B[primary].weight, keep, layer.scaling[primary] * keep_rescale, frozen)


def fuse_lora_layers(model: nn.Module) -> int:
    """Route every peft LoRA Linear of `model` through `fused_forward`; returns how many."""
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(fused_forward, module)
            fused += 1
    return fused
