"""Turn causal masking off on any Hugging Face decoder, and prove that it worked.

transformers 5 builds attention masks in one place (`masking_utils`): when `config.is_causal` is False
it builds a padding-only (bidirectional) mask, and the attention kernels read `module.is_causal` to
decide whether to add their own causal triangle. Flipping both is the whole mechanism: no model
subclass, no private method overrides. The original LLM2Vec copied one model class per architecture.

Architectures that do not route their masks through that path stay causal; `make_bidirectional`
detects this with a real forward pass (`is_bidirectional`) and raises an error that names the
`model_type`, instead of silently returning a causal model (what LLM2Vec did for Qwen2).
"""

from __future__ import annotations

import torch
from torch import nn

# model_type -> why the generic switch is known not to work for it. Filled from tests; an entry here
# fails fast before any forward pass.
UNSUPPORTED: dict[str, str] = {}

# model_type -> extra config attributes that must be set for bidirectional attention, for
# architectures that carry their own switch beside `is_causal`.
EXTRA_CONFIG_FLAGS: dict[str, dict[str, object]] = {
    "gemma4": {"use_bidirectional_attention": True},
    "gemma4_text": {"use_bidirectional_attention": True},
}


class BidirectionalError(ValueError):
    """The model's attention could not be made bidirectional."""


def _configs(model: nn.Module) -> list:
    """The model config and any nested text config (multimodal wrappers keep the decoder's there)."""
    config = model.config
    nested = [getattr(config, name, None) for name in ("text_config", "decoder")]
    return [config] + [c for c in nested if c is not None and hasattr(c, "model_type")]


def set_causal(model: nn.Module, causal: bool) -> nn.Module:
    """Set causal (True) or bidirectional (False) attention in place, without checking."""
    for config in _configs(model):
        config.is_causal = causal
        for key, value in EXTRA_CONFIG_FLAGS.get(config.model_type, {}).items():
            setattr(config, key, (not causal) if isinstance(value, bool) else value)
    for module in model.modules():
        if hasattr(module, "is_causal") and not isinstance(module.is_causal, torch.Tensor):
            module.is_causal = causal
    return model


def was_made_bidirectional(model: nn.Module) -> bool:
    """True if the config carries our switch turned off (a folder saved by a bidirectional encoder says
    `is_causal: false`); a native causal config has no `is_causal` at all."""
    for config in _configs(model):
        flags = EXTRA_CONFIG_FLAGS.get(config.model_type, {})
        if getattr(config, "is_causal", None) is False or any(getattr(config, k, None) is True for k in flags):
            return True
    return False


def make_causal(model: nn.Module) -> nn.Module:
    """Undo `make_bidirectional` (e.g. a saved bidirectional folder loaded with bidirectional=False)."""
    if was_made_bidirectional(model):
        set_causal(model, True)
    return model


def make_bidirectional(model: nn.Module, verify: bool = True) -> nn.Module:
    """Make every attention layer of `model` attend in both directions; verify with a forward pass."""
    model_type = model.config.model_type
    if model_type in UNSUPPORTED:
        raise BidirectionalError(f"model_type '{model_type}' cannot be made bidirectional: {UNSUPPORTED[model_type]}")
    set_causal(model, False)
    if verify and not is_bidirectional(model):
        set_causal(model, True)
        raise BidirectionalError(
            f"model_type '{model_type}' stayed causal after setting is_causal=False: its attention does not "
            "use transformers' shared masking path. Add it to lm2vec.core.bidirectional.UNSUPPORTED or open an issue."
        )
    return model


def probe_ids(model: nn.Module, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Two id sequences that differ only in their last token, avoiding the low (often special) ids."""
    vocab = model.config.get_text_config().vocab_size
    base = torch.arange(length) * 7 % max(vocab // 2, 2) + min(100, vocab // 4)
    changed = base.clone()
    changed[-1] = (base[-1] + vocab // 3) % vocab
    return base.unsqueeze(0), changed.unsqueeze(0)


@torch.no_grad()
def first_token_state(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden state of the first position: what a later token can only reach bidirectionally."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, use_cache=False)
    states = getattr(out, "last_hidden_state", None)
    if states is None:
        states = out.hidden_states[-1]
    return states[:, 0].float()


def is_bidirectional(model: nn.Module, atol: float = 1e-6) -> bool:
    """True if changing the LAST token moves the FIRST token's final state (a real check, not a flag)."""
    was_training = model.training
    model.eval()
    try:
        base, changed = probe_ids(model)
        delta = (first_token_state(model, base) - first_token_state(model, changed)).abs().max().item()
    finally:
        model.train(was_training)
    return delta > atol
