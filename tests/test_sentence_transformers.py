"""The sentence-transformers route: `Encoder.to_sentence_transformer()` is a live model on the encoder's own
backbone that gives lm2vec's vectors (plain and instructed) and attends bidirectionally, refuses what it
cannot reproduce, and exported folders carry our instructions as prompts that plain sentence-transformers
applies."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from lm2vec import Encoder, EncoderConfig, is_bidirectional
from lm2vec.export import ExportError, export_sentence_transformers

TEXTS = ["A man is playing a guitar.", "cats", "The committee postponed its decision until the next meeting."]
INSTRUCTION = "Retrieve passages:"


def encoder_for(pooling: str = "mean", bos: bool = False, model_type: str = "llama", **config) -> Encoder:
    return Encoder(tiny_model(model_type), byte_tokenizer(add_bos=bos), EncoderConfig(pooling=pooling, **config))


def close(a, b) -> bool:
    return np.allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last", "first"])
def test_live_model_gives_lm2vec_vectors_with_and_without_prompt(pooling):
    encoder = encoder_for(pooling, max_length=48, padding_side="left")
    side = encoder.tokenizer.padding_side
    model = encoder.to_sentence_transformer(prompts={"query": INSTRUCTION})
    assert model[0].model is encoder.model  # the live backbone, not a copy
    assert model.max_seq_length == 48 and encoder.tokenizer.padding_side == side
    plain, instructed = encoder.encode(TEXTS), encoder.encode(TEXTS, instruction=INSTRUCTION)
    assert close(model.encode(TEXTS, batch_size=3), plain)  # one padded batch
    assert close(model.encode_query(TEXTS), instructed)
    assert close(model.encode(TEXTS, prompt=model.prompts["query"]), instructed)
    assert model.prompts["query"] == "Retrieve passages: " and close(model.encode_document(TEXTS), plain)


@pytest.mark.parametrize(("pooling", "bos"), [("weighted_mean", False), ("mean", True), ("last", True)])
def test_live_model_plain_inputs_for_other_poolings_and_a_leading_bos(pooling, bos):
    encoder = encoder_for(pooling, bos=bos, max_length=40)
    long = ["word " * 30, "tiny"]  # truncated the same way, padded in one batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert close(encoder.to_sentence_transformer().encode(long + TEXTS), encoder.encode(long + TEXTS))


def _first_token_moves(encoder: Encoder) -> float:
    """How much the first token's output state moves when only the LAST character of the text changes."""
    model = encoder.to_sentence_transformer()
    a, b = model.encode(["hello world", "hello worle"], output_value="token_embeddings")
    return float((a[0] - b[0]).abs().max())


def test_live_model_really_attends_bidirectionally():
    assert is_bidirectional(encoder_for().to_sentence_transformer()[0].model)
    assert _first_token_moves(encoder_for()) > 1e-4
    assert _first_token_moves(encoder_for(bidirectional=False)) < 1e-6  # the check can fail: causal does not move


def test_live_model_refuses_what_sentence_transformers_would_pool_differently():
    with pytest.raises(ExportError, match="leading special token"):
        encoder_for("weighted_mean", bos=True).to_sentence_transformer()
    with pytest.raises(ExportError, match="position weights"):
        encoder_for("weighted_mean").to_sentence_transformer(prompts={"query": INSTRUCTION})
    with pytest.raises(ExportError, match="divisor"):
        encoder_for("mean", bos=True).to_sentence_transformer(prompts={"query": INSTRUCTION})
    with pytest.warns(UserWarning, match="position weights"):
        encoder_for("weighted_mean").to_sentence_transformer(prompts={"query": INSTRUCTION}, strict=False)


def test_live_model_keeps_a_lora_adapter_unmerged():
    from lm2vec.training.lora import attach_lora
    from lm2vec.training.recipe import LoraSettings

    encoder = encoder_for()
    encoder.model = attach_lora(encoder.model, LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for name, parameter in encoder.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    encoder.model.eval()
    model = encoder.to_sentence_transformer()
    assert close(model.encode(TEXTS), encoder.encode(TEXTS))
    assert hasattr(encoder.model, "peft_config")  # still an adapter: training can go on


def test_exported_folder_carries_prompts_that_plain_sentence_transformers_applies(tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = encoder_for(max_length=48)
    export_sentence_transformers(encoder, tmp_path / "st", prompts={"query": INSTRUCTION}, default_prompt_name="query")
    config = json.loads((tmp_path / "st" / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "Retrieve passages: ", "document": ""}
    assert config["default_prompt_name"] == "query"
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    instructed = encoder.encode(TEXTS, instruction=INSTRUCTION)
    assert close(model.encode_query(TEXTS), instructed)
    assert close(model.encode(TEXTS), instructed)  # the default prompt
    assert close(model.encode_document(TEXTS), encoder.encode(TEXTS))  # "" overrides the default
