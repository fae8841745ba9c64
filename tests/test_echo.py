"""Echo embeddings (core/echo.py): the text twice, only the second copy pooled, for causal and
bidirectional encoders alike; saved with the encoder; refused where an export cannot reproduce it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer, tiny_encoder, tiny_model
from tokenizers import processors

from lm2vec import Encoder, EncoderConfig
from lm2vec.core.echo import ECHO_TEMPLATE

TEXT, INSTRUCTION = "a cat sat on the mat", "Retrieve similar sentences:"
LONG = ["this text is very much longer than the short one, so it forces a lot of padding " * 2,
        "another long companion text that also forces padding onto the short text"]


def _bytes(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _pooled_ids(encoder, item, padding_side="right") -> list[int]:
    """The token ids under the pooling mask, read back from the collated batch."""
    batch = encoder.collate(encoder.tokenize([item]), padding_side)
    return batch["input_ids"][0][batch["pool_mask"][0].bool()].tolist()


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
@pytest.mark.parametrize("side", ["left", "right"])
def test_the_pooled_span_is_exactly_the_second_copy(instruction, side):
    encoder = tiny_encoder(echo=True)
    [tok] = encoder.tokenize([(instruction, TEXT)])
    prefix = f"{instruction} " if instruction else ""
    before, between, _ = ECHO_TEMPLATE.split("{text}")
    expected_skip = 1 + len(_bytes(encoder.tokenizer, prefix + before + TEXT + between))  # BOS, then one byte each
    assert (tok.skip, tok.tail) == (expected_skip, 0)
    assert tok.ids == [1] + _bytes(encoder.tokenizer, prefix + before + TEXT + between + TEXT)
    assert _pooled_ids(encoder, (instruction, TEXT), side) == _bytes(encoder.tokenizer, TEXT)


def test_template_text_after_the_copy_is_not_pooled_and_an_appended_eos_is():
    tokenizer = byte_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    encoder = Encoder(tiny_model(), tokenizer, EncoderConfig(echo=True))
    assert _pooled_ids(encoder, (None, TEXT)) == _bytes(tokenizer, TEXT) + [2]  # the EOS, as for a plain text
    encoder.config.echo_template = "Say: {text}. Again: {text}. Done."
    [tok] = encoder.tokenize([(None, TEXT)])
    assert tok.tail == len(". Done.") + 1  # the suffix and the EOS after it
    assert _pooled_ids(encoder, (None, TEXT)) == _bytes(tokenizer, TEXT)


def test_max_length_bounds_each_copy():
    encoder = tiny_encoder(echo=True, max_length=8)
    [tok] = encoder.tokenize([(None, TEXT)])
    assert tok.truncated and _pooled_ids(encoder, (None, TEXT)) == _bytes(encoder.tokenizer, TEXT[:8])
    assert encoder.tokenize([(None, "short")])[0].truncated is False
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than max_length=8"):
        encoder.encode([TEXT, "short"])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_vector_is_the_mean_of_the_second_copy_states(bidirectional):
    encoder = tiny_encoder(echo=True, bidirectional=bidirectional)
    [tok] = encoder.tokenize([(INSTRUCTION, TEXT)])
    with torch.no_grad():
        states = encoder.hidden_states(encoder.collate([tok]))[0]
    expected = states[tok.skip : len(tok.ids) - tok.tail].mean(dim=0).numpy()
    assert np.abs(encoder.encode([(INSTRUCTION, TEXT)])[0] - expected).max() < 1e-5


def test_causal_echo_lets_the_first_pooled_token_see_the_last_word():
    """Echo's point: in a causal model the second copy's first token has read the whole first copy."""
    encoder = tiny_encoder(echo=True, bidirectional=False)
    first_states = []
    for text in ("a cat sat on the mat", "a cat sat on the rug"):
        [tok] = encoder.tokenize([(None, text)])
        with torch.no_grad():
            first_states.append(encoder.hidden_states(encoder.collate([tok]))[0, tok.skip])
    assert (first_states[0] - first_states[1]).abs().max() > 1e-4
    plain = tiny_encoder(bidirectional=False)
    states = [plain.hidden_states(plain.collate(plain.tokenize([(None, t)])))[0, 1] for t in ("a cat", "a dog")]
    assert torch.allclose(states[0], states[1])  # without echo it cannot


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_echo_vectors_ignore_padding_side_and_batch(model_type, bidirectional):
    encoder = tiny_encoder(model_type, echo=True, bidirectional=bidirectional)
    alone = encoder.encode([(INSTRUCTION, TEXT)], batch_size=1)[0]
    for side in ("left", "right"):
        encoder.config.padding_side = side
        for batch_size in (2, 3):
            mixed = encoder.encode(LONG + [(INSTRUCTION, TEXT)], batch_size=batch_size)
            assert np.abs(mixed[-1] - alone).max() < 1e-4, (side, batch_size)


def test_echo_is_saved_and_loaded_with_identical_vectors(tmp_path):
    template = "Sentence: {text}\nSame sentence: {text}"
    encoder = tiny_encoder(echo=True, echo_template=template, bidirectional=False)
    texts = [TEXT, (INSTRUCTION, "another one")]
    before = encoder.encode(texts)
    assert np.abs(before - tiny_encoder(bidirectional=False).encode(texts)).max() > 1e-4  # echo changes vectors
    encoder.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "lm2vec_config.json").read_text())
    assert saved["echo"] is True and saved["echo_template"] == template
    loaded = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert loaded.config.echo and np.array_equal(loaded.encode(texts), before)


def test_bad_echo_templates_are_refused():
    with pytest.raises(ValueError, match="exactly twice"):
        EncoderConfig(echo=True, echo_template="Query: {text}")


def test_echo_is_refused_by_the_sentence_transformers_export_and_kept_by_merged(tmp_path):
    pytest.importorskip("sentence_transformers")
    from lm2vec.export import ExportError, export_merged

    encoder = tiny_encoder(echo=True)
    with pytest.raises(ExportError, match="echo cannot be exported to the sentence-transformers format"):
        encoder.to_sentence_transformer()
    with pytest.warns(UserWarning, match="must build the input"):
        export_merged(encoder, tmp_path / "merged")
    loaded = Encoder.from_pretrained(tmp_path / "merged", device="cpu")
    assert loaded.config.echo and np.allclose(loaded.encode([TEXT]), encoder.encode([TEXT]), atol=1e-5)
