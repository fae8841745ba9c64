"""Compute modes for fast CPU inference that keep float32 where the vectors are decided.

Plain bfloat16 (`dtype="bfloat16"`) rounds everything, including the residual stream that every layer
adds into. SmolLM2's residual stream carries "massive activations" (a few channels of size ~1,000-7,000
that some layers create and the last layers erase again); stored in bf16 they have a spacing of 4-32,
so updates smaller than that are lost, and the remainder after the erasure is wrong. Rounding only the
residual stream (all else float32) already gives some short texts a pooled cosine of 0.92 to float32
(bench/bf16_drift.py; docs/performance.md has the numbers).

`bf16-matmul` keeps the residual stream, norms, attention, activations and pooling in float32 and runs
only the linear layers' matmuls in bf16 (`BF16Linear`: the weight stored once in bf16, no per-call weight
cast; that cast is why torch.autocast over float32 weights paid only ~1.3x). Rounding the matmuls of the
first layers still matters: an error there is amplified where the massive activations form, while the
later layers barely move the vectors (rounding the weights of any five of layers 15-29 leaves every
measured cosine >= 0.9999). So the first quarter of the decoder layers stays float32 (`float32_layers`).

`bf16-adaptive` picks the precision per batch from its shortest text, because the error is a per-text
matter: mean pooling averages a wrong token away over a long text, not over a short one. Measured on a
trained SmolLM2 encoder (1,200 held-out texts; docs/performance.md): with bf16 matmuls in every layer all
texts of more than 24 tokens stay at cosine >= 0.997 to float32, while shorter ones fall to 0.92; the
errors that matter are made in the layers up to the one that creates the massive activations (layer 11 of
30): keeping layers 0-11 float32 gave every text >= 0.9999, keeping 0-7 or any few of them did not. So
batches whose shortest text has up to 24 pooled tokens run the first 40% of the layers float32, the rest
bf16 matmuls everywhere (`ADAPTIVE_TIERS`); the float32 weights are kept beside the bf16 copies (1.5x
the memory of float32 in the switched layers).

`int8-dynamic` is torch's dynamic quantisation of every nn.Linear (qint8 weights, one activation scale
per batch). On models with massive activations that one scale is dominated by the outliers: measured on
SmolLM2 it is not usable (mean cosine 0.88); it is here for models without them, and to be measured.

All modes are inference-only: the Encoder refuses to save them (their weights are rounded).
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

COMPUTE_MODES = ("bf16-matmul", "bf16-adaptive", "int8-dynamic")
MODE_ALIASES = {"bfloat16-matmul": "bf16-matmul", "int8": "int8-dynamic"}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
FLOAT32_SHARE = 0.25  # leading share of decoder layers that bf16-matmul keeps in float32
# bf16-adaptive: (up to this many pooled tokens in the batch's shortest text, leading share of layers kept
# float32); None: any length. Chosen on held-out texts (STS-B/Banking77/Emotion/SciFact *train* splits)
ADAPTIVE_TIERS = ((24, 0.4), (None, 0.0))


def compute_mode(name: object) -> str | None:
    """The canonical compute mode a dtype argument names, or None for a plain dtype (or nothing)."""
    if not isinstance(name, str):
        return None
    name = MODE_ALIASES.get(name, name)
    return name if name in COMPUTE_MODES else None


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> tuple[torch.dtype, str | None]:
    """(dtype to load the weights in, compute mode or None) for a dtype argument: a torch dtype, its name
    ('float32', 'bf16', 'auto') or a compute mode ('bf16-matmul', 'int8-dynamic', loaded in float32)."""
    if dtype is None or dtype == "auto":
        return default, None
    if isinstance(dtype, torch.dtype):
        return dtype, None
    mode = compute_mode(dtype)
    if mode:
        return torch.float32, mode
    resolved = getattr(torch, DTYPE_ALIASES.get(dtype, dtype), None) if isinstance(dtype, str) else None
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:  # torch.int4 exists too
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16, or a compute mode: "
                         f"{', '.join(COMPUTE_MODES)}")
    return resolved, None


class LastCast:
    """The bf16 copy of the last float32 input a group of BF16Linear layers cast: q, k and v (and gate and up)
    read the same tensor, so it is converted once. It holds one tensor; `is` on a tensor it keeps alive is safe."""

    def __init__(self) -> None:
        self.pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def bf16(self, x: torch.Tensor) -> torch.Tensor:
        pair = self.pair  # one read: another thread may replace it, never half of it
        if pair is not None and pair[0] is x:
            return pair[1]
        cast = x.to(torch.bfloat16)
        self.pair = (x, cast)
        return cast


class BF16Linear(nn.Module):
    """A linear layer whose matmul runs in bf16 while its input and output stay float32.

    The weight is a bf16 parameter (converted once, half the memory of float32); the bias, if any,
    stays float32 and is added after the matmul, so only the matmul's operands are rounded. Layers that
    share a `LastCast` convert a shared input once."""

    def __init__(self, linear: nn.Linear, cache: LastCast | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.bias = bias
        self.cache = cache or LastCast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x if x.dtype == torch.bfloat16 else self.cache.bf16(x)
        out = F.linear(inputs, self.weight).to(x.dtype)  # (..., out) back in the input's dtype
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers: the ModuleList as long as the config's num_hidden_layers."""
    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}")


def default_float32_layers(model: nn.Module) -> int:
    """How many leading decoder layers bf16-matmul keeps in float32: a quarter, rounded up."""
    return math.ceil(FLOAT32_SHARE * len(decoder_layers(model)))


def to_bf16_matmul(model: nn.Module, float32_layers: int | None = None) -> nn.Module:
    """Swap the nn.Linear modules of every decoder layer after the first `float32_layers` (default: a
    quarter of them) for BF16Linear, in place; embeddings, norms and anything outside the layers stay.

    Everything between the matmuls stays float32, the MLP's activation too: handing bf16 from gate/up
    to down (one cast less each) measurably moved more vectors (4 of 800 short texts below cosine 0.99
    instead of 1)."""
    layers = decoder_layers(model)
    keep = default_float32_layers(model) if float32_layers is None else float32_layers
    cache = LastCast()
    for layer in list(layers)[keep:]:
        for name, linear in [(n, m) for n, m in layer.named_modules() if type(m) is nn.Linear]:
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, BF16Linear(linear, cache))
    return model


class LengthSwitch:
    """How many leading decoder layers run float32 for the batch running now, from its shortest text.

    The Encoder says how many tokens that text pools (`pooled_tokens`); a caller that does not (a live
    SentenceTransformer) is measured by the attention mask in the backbone's forward pre-hook. State is
    per thread, so concurrent encodes each keep their own; before any batch, every layer runs float32."""

    def __init__(self, num_layers: int, tiers: tuple = ADAPTIVE_TIERS) -> None:
        self.num_layers, self.tiers, self.local = num_layers, tiers, threading.local()

    def __reduce__(self):  # copies and pickles start with no batch running (a thread-local cannot be copied)
        return LengthSwitch, (self.num_layers, self.tiers)

    def float32_layers(self, tokens: int) -> int:
        for limit, share in self.tiers:
            if limit is None or tokens <= limit:
                return math.ceil(share * self.num_layers)
        return self.num_layers

    @contextlib.contextmanager
    def pooled_tokens(self, tokens: int):
        self.local.given = tokens
        try:
            yield
        finally:
            self.local.given = None

    def before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = getattr(self.local, "given", None)
        if tokens is None:
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                tokens = int(mask.sum(-1).min())
            else:  # no mask: every row is as long as the input (input_ids (B, T) or inputs_embeds (B, T, D))
                inputs = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
                tokens = inputs.shape[1]
        self.local.float32_layers = self.float32_layers(tokens)

    def runs_bf16(self, layer_index: int) -> bool:
        return layer_index >= getattr(self.local, "float32_layers", self.num_layers)


class SwitchedLinear(nn.Module):
    """A linear layer that runs as its float32 self or as a BF16Linear, as the LengthSwitch says per batch."""

    def __init__(self, linear: nn.Linear, layer_index: int, switch: LengthSwitch, cache: LastCast) -> None:
        super().__init__()
        self.exact, self.fast = linear, BF16Linear(linear, cache)
        self.layer_index, self.switch = layer_index, switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast(x) if self.switch.runs_bf16(self.layer_index) else self.exact(x)


def to_bf16_adaptive(model: nn.Module, tiers: tuple = ADAPTIVE_TIERS) -> nn.Module:
    """Give every nn.Linear of the decoder layers a bf16 twin that the model's LengthSwitch (on
    `model.length_switch`, also a forward pre-hook) turns on per batch; in place."""
    layers = decoder_layers(model)
    switch = LengthSwitch(len(layers), tiers)
    always_float32 = math.ceil(min(share for _, share in tiers) * len(layers))  # no twin needed there
    cache = LastCast()
    for index, layer in list(enumerate(layers))[always_float32:]:
        for name, linear in [(n, m) for n, m in layer.named_modules() if type(m) is nn.Linear]:
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, SwitchedLinear(linear, index, switch, cache))
    model.length_switch = switch
    model.register_forward_pre_hook(switch.before_forward, with_kwargs=True)
    return model


def check_adaptive_pooling(config) -> None:
    """bf16-adaptive's tiers rest on averaging: refuse an encoder whose vector is one token's state."""
    if config.pooling not in ("mean", "weighted_mean") or (config.contextual and config.contextual_output != "text"):
        raise ValueError(f"bf16-adaptive picks the precision by how many token states a vector averages; with "
                         f"{config.pooling!r} pooling or a contextual token one state is (part of) the vector, "
                         "so use float32 or bf16-matmul")


def to_int8_dynamic(model: nn.Module) -> nn.Module:
    """torch dynamic quantisation (qint8 weights, per-batch activation scales) of every nn.Linear, in place."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def apply_compute_mode(model: nn.Module, mode: str, float32_layers: int | None = None) -> nn.Module:
    """Convert a float32 backbone (no adapter) for `mode`, in place; returns the model. `float32_layers`
    (bf16-matmul only) overrides how many leading layers stay float32: 0 is faster and less exact."""
    if mode not in COMPUTE_MODES:
        raise ValueError(f"unknown compute mode {mode!r}; use one of {', '.join(COMPUTE_MODES)}")
    weight = next(model.parameters())
    if weight.dtype != torch.float32:
        raise ValueError(f"compute mode {mode!r} converts a float32 model; this one is {weight.dtype}")
    if mode == "int8-dynamic" and weight.device.type != "cpu":
        raise ValueError("int8-dynamic runs on the CPU only (torch's quantised kernels); load with device='cpu'")
    if mode != "bf16-matmul" and float32_layers is not None:
        raise ValueError("float32_layers applies to bf16-matmul only")
    if mode == "bf16-adaptive":
        return to_bf16_adaptive(model)
    return to_bf16_matmul(model, float32_layers) if mode == "bf16-matmul" else to_int8_dynamic(model)


def tensor_bytes(value: object) -> bytes:
    """The bytes of a state-dict entry, for hashing: also the packed int8 weights of quantised layers."""
    if isinstance(value, torch.Tensor):
        value = value.dequantize() if value.is_quantized else value
        return value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    if isinstance(value, (tuple, list)):
        return b"".join(tensor_bytes(v) for v in value)
    return repr(value).encode()
