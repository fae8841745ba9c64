"""Encoder behaviour: padding/batch invariance, instructions, persistence, bad input."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer, tiny_encoder, tiny_model

from lm2vec import Encoder, EncoderConfig
from lm2vec.core.batching import plan_batches

SHORT = "a cat sat"
LONG = ["this text is very much longer than the short one, so it forces a lot of padding " * 3,
        "another long companion text that also forces padding onto the short text " * 2]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last", "first"])
def test_embedding_ignores_padding_side_and_batch(model_type, pooling):
    encoder = tiny_encoder(model_type, pooling=pooling)
    alone = encoder.encode([SHORT], batch_size=1)[0]
    for side in ("left", "right"):
        encoder.config.padding_side = side
        for batch_size in (2, 3):
            mixed = encoder.encode(LONG + [SHORT], batch_size=batch_size)
            assert np.abs(mixed[-1] - alone).max() < 1e-4, (side, batch_size)


def test_output_order_shape_and_dtype():
    encoder = tiny_encoder()
    texts = [f"text number {i} " + "x" * (i * 7 % 23) for i in range(10)]
    batched = encoder.encode(texts, batch_size=4)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    assert batched.shape == (10, 64) and batched.dtype == np.float32
    assert np.abs(batched - one_by_one).max() < 1e-4


def test_token_budget_batching_matches_unbatched():
    encoder = tiny_encoder()
    texts = ["tiny", "a bit longer text", "x " * 60, "mid sized text here", "y " * 30]
    assert np.abs(encoder.encode(texts, max_tokens=64) - encoder.encode(texts, batch_size=1)).max() < 1e-4


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 300, 7, 120, 3, 3, 64, 250]
    batches = plan_batches(lengths, batch_size=4, max_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 256


def test_instruction_is_attended_but_not_pooled():
    encoder = tiny_encoder()
    instruction, text = "Retrieve similar sentences:", "a cat sat"
    [tok] = encoder.tokenize([(instruction, text)])
    assert tok.skip == 1 + len((instruction + " ").encode())  # BOS + one token per byte of the prefix
    batch = encoder.collate([tok])
    with torch.no_grad():
        states = encoder.hidden_states(batch)[0]
    expected = states[tok.skip :].mean(dim=0).numpy()
    got = encoder.encode([(instruction, text)])[0]
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got - encoder.encode([text])[0]).max() > 1e-4  # the text tokens saw the instruction
    assert np.allclose(encoder.encode([text], instruction=instruction), got, atol=1e-5)


def test_leading_bos_is_attended_but_not_pooled_unless_asked():
    encoder = tiny_encoder()
    [tok] = encoder.tokenize([(None, "a cat sat")])
    assert tok.ids[0] == 1 and tok.skip == 1  # byte tokenizer adds <s>; LLM2Vec pools only the text
    with torch.no_grad():
        states = encoder.hidden_states(encoder.collate([tok]))[0]
    assert np.abs(encoder.encode(["a cat sat"])[0] - states[1:].mean(dim=0).numpy()).max() < 1e-5
    encoder.config.pool_leading_specials = True
    assert encoder.tokenize([(None, "a cat sat")])[0].skip == 0


def test_save_then_load_gives_identical_vectors(tmp_path):
    encoder = tiny_encoder(pooling="weighted_mean", max_length=64)
    texts = ["one sentence", ("An instruction:", "another one")]
    before = encoder.encode(texts)
    encoder.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "lm2vec_config.json").read_text())
    assert saved["pooling"] == "weighted_mean" and saved["bidirectional"] and saved["max_length"] == 64
    assert list((tmp_path / "enc").glob("*.safetensors")) and not list((tmp_path / "enc").glob("*.bin"))
    loaded = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert replace(loaded.config, base_model=None) == encoder.config  # base_model gets filled in on load
    assert np.array_equal(loaded.encode(texts), before)


def test_saving_over_an_existing_directory_replaces_it(tmp_path):
    encoder = tiny_encoder()
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "stale.txt").write_text("old")
    encoder.save_pretrained(tmp_path / "enc")
    assert not (tmp_path / "enc" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]  # no temp directories left behind


def test_bad_input_gets_clear_errors():
    encoder = tiny_encoder()
    assert encoder.encode([]).shape == (0, 64)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a string"):
        encoder.encode(["ok", 3])
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        encoder.encode(["  "])
    with pytest.raises(ValueError, match="unknown pooling mode"):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError, match="texts must be a list"):
        encoder.encode(42)
    assert encoder.encode("a single string").shape == (64,)


def test_over_long_texts_are_truncated_with_one_warning():
    encoder = tiny_encoder(max_length=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = encoder.encode(["x" * 100, "y" * 50, "short"])
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert messages == ["2 of 3 texts were longer than max_length=16 tokens and were truncated"]
    assert vectors.shape == (3, 64)


def test_unknown_saved_config_keys_are_named_in_a_warning_and_ignored(tmp_path):
    """An older lm2vec reads a newer folder: the keys it does not know are ignored, never silently."""
    encoder = tiny_encoder(pooling="last")
    encoder.save_pretrained(tmp_path / "enc")
    path = tmp_path / "enc" / "lm2vec_config.json"
    saved = json.loads(path.read_text())
    assert saved["format_version"] == 1 and saved["lm2vec_version"]
    path.write_text(json.dumps({**saved, "format_version": 99, "poolling": "mean"}))
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['poolling'\].*format 99.*format 1"):
        loaded = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert loaded.config.pooling == "last"
    np.testing.assert_allclose(loaded.encode(["same vectors"]), encoder.encode(["same vectors"]), atol=1e-6)


def test_a_folder_written_before_the_package_moved_still_loads_with_the_same_vectors():
    """tests/fixtures/encoder-0.1.0-*: saved by lm2vec 0.1.0 (flat layout, no format_version)."""
    folder = next((Path(__file__).parent / "fixtures").glob("encoder-0.1.0-*"))
    expected = json.loads((folder / "expected_vectors.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old folder loads without any warning
        loaded = Encoder.from_pretrained(folder, device="cpu")
    np.testing.assert_allclose(loaded.encode(expected["texts"]), np.array(expected["vectors"]), atol=1e-5)


def test_causal_encoder_stays_causal():
    model = tiny_model("llama")
    Encoder(model, byte_tokenizer(), EncoderConfig(bidirectional=False))
    assert getattr(model.config, "is_causal", True) is not False


def test_batched_tokenization_equals_each_text_on_its_own():
    from lm2vec.core.tokenization import tokenize_batch

    items = [(None, "plain text"), ("Retrieve:", "with an instruction"), (None, "x" * 80), ("Find:", "short")]
    tokenizer = byte_tokenizer()
    batched = tokenize_batch(tokenizer, items, 40)
    assert batched == [tokenize_batch(tokenizer, [item], 40)[0] for item in items]
    assert batched[1].skip > 1 and batched[2].truncated and not batched[0].truncated


# ---------------------------------------------------------------- dimensions and precision

TEXTS = [f"text {i} about {'cats ' * (i % 4)}and dogs" for i in range(12)]


@pytest.mark.parametrize("normalize", [False, True])
def test_dimensions_equal_slicing_then_renormalising(normalize):
    encoder = tiny_encoder()
    full = encoder.encode(TEXTS)
    cut = encoder.encode(TEXTS, dimensions=16, normalize=normalize)
    expected = full[:, :16] / (np.linalg.norm(full[:, :16], axis=1, keepdims=True) if normalize else 1)
    assert cut.shape == (12, 16) and cut.dtype == np.float32
    assert np.abs(cut - expected).max() < 1e-6
    assert np.abs(encoder.encode(TEXTS, dimensions=64, normalize=normalize)
                  - encoder.encode(TEXTS, normalize=normalize)).max() < 1e-6
    assert encoder.encode("one text", dimensions=8).shape == (8,)
    assert encoder.encode([], dimensions=8).shape == (0, 8)


@pytest.mark.parametrize("dimensions", [0, -3, 65, 2.5, True])
def test_dimensions_out_of_range_are_refused_before_any_work(dimensions):
    with pytest.raises(ValueError, match="dimensions must be an integer between 1 and the model's dimension 64"):
        tiny_encoder().encode(TEXTS, dimensions=dimensions)


@pytest.mark.parametrize(("precision", "dtype", "width"), [
    ("float32", np.float32, 24), ("int8", np.int8, 24), ("uint8", np.uint8, 24),
    ("binary", np.int8, 3), ("ubinary", np.uint8, 3),
])
def test_precisions_have_the_documented_shapes_and_dtypes(precision, dtype, width):
    pytest.importorskip("sentence_transformers")
    out = tiny_encoder().encode(TEXTS, dimensions=24, normalize=True, precision=precision)
    assert out.shape == (12, width) and out.dtype == dtype


def test_quantization_is_sentence_transformers_on_the_truncated_vectors():
    from sentence_transformers import quantize_embeddings

    encoder = tiny_encoder()
    cut = encoder.encode(TEXTS, dimensions=24, normalize=True)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        ours = encoder.encode(TEXTS, dimensions=24, normalize=True, precision=precision)
        assert np.array_equal(ours, quantize_embeddings(cut, precision)), precision
    bits = np.unpackbits(encoder.encode(TEXTS, dimensions=24, precision="ubinary"), axis=1)
    assert np.array_equal(bits.astype(bool), cut > 0)  # one sign bit per dimension, in order


def test_int8_ranges_come_from_calibration_embeddings_when_given():
    pytest.importorskip("sentence_transformers")
    encoder = tiny_encoder()
    calibration = encoder.encode(TEXTS)  # full width: cut and normalised like the output
    alone = encoder.encode(TEXTS[3], dimensions=24, normalize=True, precision="int8",
                           calibration_embeddings=calibration)
    together = encoder.encode(TEXTS, dimensions=24, normalize=True, precision="int8",
                              calibration_embeddings=calibration[:, :24])
    assert np.array_equal(alone, together[3])  # the same code whatever else is encoded with it
    with pytest.raises(ValueError, match="one vector has none: pass calibration_embeddings"):
        encoder.encode(TEXTS[3], precision="uint8")
    with pytest.raises(ValueError, match=r"calibration_embeddings must be \(m, 24 or 64\)"):
        encoder.encode(TEXTS, dimensions=24, precision="int8", calibration_embeddings=calibration[:, :10])


def test_unknown_precision_and_missing_sentence_transformers_get_clear_errors(monkeypatch):
    import sys

    encoder = tiny_encoder()
    with pytest.raises(ValueError, match="unknown precision 'int4'; use one of float32, int8, uint8, binary, ubinary"):
        encoder.encode(TEXTS, precision="int4")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(ImportError, match="precision='binary' needs sentence-transformers: pip install sentence-transformers"):
        encoder.encode(TEXTS, precision="binary")
    assert encoder.encode(TEXTS, dimensions=8).shape == (12, 8)  # float32 never needs it


def test_core_imports_without_sentence_transformers():
    import subprocess
    import sys

    code = ("import sys; sys.modules['sentence_transformers'] = None; import lm2vec, lm2vec.core.postprocess, "
            "lm2vec.serving.app; assert sys.modules['sentence_transformers'] is None")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)
