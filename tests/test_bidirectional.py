"""Attention really becomes bidirectional on every architecture we claim, and only after conversion."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, byte_tokenizer, tiny_model

from lm2vec import BidirectionalError, Encoder, EncoderConfig, is_bidirectional, make_bidirectional
from lm2vec.core import bidirectional as bidi

NO_SDPA = {"gemma2"}  # transformers refuses sdpa for gemma2 (logit soft-capping): eager only
CASES = [(mt, attn) for mt in ARCHITECTURES for attn in ("sdpa", "eager") if not (attn == "sdpa" and mt in NO_SDPA)]
TEXTS = ["the first text is here", "short", "a much longer third text that pads the others out"]


def _first_state_moves(encoder: Encoder, padding_side: str, batch_size: int) -> bool:
    """Change the last real token of row 0; report whether row 0's first real token state moved."""
    batch = encoder.collate(encoder.tokenize([(None, t) for t in TEXTS[:batch_size]]), padding_side)
    changed = {k: v.clone() for k, v in batch.items()}
    real = batch["attention_mask"][0].nonzero().flatten()
    first, last = real[0].item(), real[-1].item()
    changed["input_ids"][0, last] = (changed["input_ids"][0, last] + 17) % 256 + 3
    with torch.no_grad():
        a, b = encoder.hidden_states(batch), encoder.hidden_states(changed)
    return (a[0, first] - b[0, first]).abs().max().item() > 1e-6


@pytest.mark.parametrize("model_type,attn", CASES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_late_token_reaches_first_token_only_after_conversion(model_type, attn, padding_side, batch_size):
    model = tiny_model(model_type, attn)
    encoder = Encoder(model, byte_tokenizer(), EncoderConfig(bidirectional=False))
    assert not _first_state_moves(encoder, padding_side, batch_size), "causal model leaked the future"
    make_bidirectional(model)
    assert _first_state_moves(encoder, padding_side, batch_size), f"{model_type}/{attn} stayed causal"


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_is_bidirectional_is_a_real_check(model_type):
    model = tiny_model(model_type)
    assert not is_bidirectional(model)
    assert is_bidirectional(make_bidirectional(model))
    bidi.set_causal(model, True)
    assert not is_bidirectional(model)


def test_causal_lm_wrapper_is_converted_too():
    model = tiny_model("qwen2", causal_lm=True)
    assert is_bidirectional(make_bidirectional(model))


def test_model_that_stays_causal_gets_a_clear_error(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(bidi, "set_causal", lambda m, causal: m)  # simulate an attention that ignores the switch
    with pytest.raises(BidirectionalError, match="'llama' stayed causal"):
        make_bidirectional(model)


def test_unsupported_table_fails_fast(monkeypatch):
    monkeypatch.setitem(bidi.UNSUPPORTED, "llama", "custom attention kernel")
    with pytest.raises(BidirectionalError, match="'llama' cannot be made bidirectional: custom attention"):
        make_bidirectional(tiny_model("llama"))


def test_a_saved_bidirectional_encoder_loads_causal_when_asked(tmp_path):
    """config.json of a saved bidirectional encoder says is_causal: false; bidirectional=False must win."""
    encoder = Encoder(tiny_model("llama"), byte_tokenizer(), EncoderConfig(bidirectional=True))
    encoder.save_pretrained(tmp_path / "bi")
    causal = Encoder.from_pretrained(tmp_path / "bi", bidirectional=False, device="cpu")
    assert not causal.config.bidirectional
    assert not is_bidirectional(causal.model), "bidirectional=False loaded a bidirectional model"
    assert is_bidirectional(Encoder.from_pretrained(tmp_path / "bi", device="cpu").model)
