"""Fast CPU compute modes (core/compute.py): bf16 matmuls over a float32 residual stream, int8 dynamic.

The drift test builds the failure plain bf16 has on real models: a residual stream with a few massive
channels (here ~1,000 from the embeddings) into which layers add small updates. Plain bf16 stores the
stream with a spacing of 4-8 there and loses the updates; bf16-matmul keeps the stream in float32.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import byte_tokenizer, tiny_encoder, tiny_model
from torch import nn
from typer.testing import CliRunner

from lm2vec import Encoder, EncoderConfig, make_bidirectional
from lm2vec.cli import app
from lm2vec.core.compute import (
    BF16Linear,
    LengthSwitch,
    SwitchedLinear,
    decoder_layers,
    resolve_dtype,
    to_bf16_adaptive,
    to_bf16_matmul,
)
from lm2vec.export import cosines

TEXTS = ["A man is playing a guitar.", "cats", "The committee postponed its decision until the next meeting.",
         "Stock prices fell sharply in early trading."]


def relative_error(a: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(a - reference) / np.linalg.norm(reference))


def test_bf16_matmul_stays_close_to_float32_and_keeps_the_residual_stream_in_float32():
    encoder = tiny_encoder(max_length=64)
    reference = encoder.encode(TEXTS)
    fast = copy.deepcopy(encoder).use_compute_mode("bf16-matmul")
    assert cosines(fast.encode(TEXTS), reference).min() >= 0.9999
    first, second = decoder_layers(fast.model)  # 2 layers: the first quarter (1 layer) stays float32
    assert all(type(m) is nn.Linear for m in first.modules() if isinstance(m, (nn.Linear, BF16Linear)))
    fast_linears = [m for m in second.modules() if isinstance(m, BF16Linear)]
    assert len(fast_linears) == 7 and all(m.weight.dtype == torch.bfloat16 for m in fast_linears)
    batch = fast.collate(fast.tokenize([(None, t) for t in TEXTS]))
    assert fast.hidden_states(batch).dtype == torch.float32
    assert fast.model.embed_tokens.weight.dtype == torch.float32 and fast.model.norm.weight.dtype == torch.float32
    every = copy.deepcopy(encoder).use_compute_mode("bf16-matmul", float32_layers=0)
    assert sum(isinstance(m, BF16Linear) for m in every.model.modules()) == 14
    assert cosines(every.encode(TEXTS), reference).min() >= 0.999


def test_q_k_and_v_share_one_cast_of_their_input_and_it_changes_nothing():
    encoder = tiny_encoder(max_length=64)
    fast = copy.deepcopy(encoder).use_compute_mode("bf16-matmul", float32_layers=0)
    attention = decoder_layers(fast.model)[0].self_attn
    assert attention.q_proj.cache is attention.k_proj.cache is attention.v_proj.cache
    x = torch.randn(2, 5, 64)
    separate = [F.linear(x.to(torch.bfloat16), m.weight).float() for m in (attention.q_proj, attention.k_proj)]
    shared = [attention.q_proj(x), attention.k_proj(x)]
    assert all(torch.equal(a, b) for a, b in zip(separate, shared))
    assert attention.k_proj.cache.pair[0] is x  # the one cast was reused, not redone


def test_bf16_matmul_keeps_the_small_updates_plain_bf16_loses_on_a_massive_residual_stream():
    model = make_bidirectional(tiny_model("llama"))
    with torch.no_grad():
        model.embed_tokens.weight[:, :3] += 1000.0  # three massive channels, as real LLMs grow them
    config = EncoderConfig(max_length=64, bidirectional=False)  # already switched: no check on each copy
    reference = Encoder(model, byte_tokenizer(), config).encode(TEXTS)
    plain = Encoder(copy.deepcopy(model).to(torch.bfloat16), byte_tokenizer(), config).encode(TEXTS)
    fast = Encoder(to_bf16_matmul(copy.deepcopy(model), float32_layers=0), byte_tokenizer(), config).encode(TEXTS)
    plain_error, fast_error = relative_error(plain, reference), relative_error(fast, reference)
    assert plain_error > 1e-3  # plain bf16 drifts on this model
    assert fast_error < plain_error / 10, (fast_error, plain_error)


def test_saving_refuses_a_compute_mode_and_a_saved_float32_folder_loads_in_either(model_dir, tmp_path):
    fast = Encoder.from_pretrained(model_dir, dtype="bf16-matmul", device="cpu")
    with pytest.raises(ValueError, match="inference-only compute mode 'bf16-matmul'"):
        fast.save_pretrained(tmp_path / "fast")
    assert not (tmp_path / "fast").exists()
    exact = Encoder.from_pretrained(model_dir, dtype="float32", device="cpu")
    exact.save_pretrained(tmp_path / "saved")
    assert "compute_mode" not in (tmp_path / "saved" / "lm2vec_config.json").read_text()
    again = Encoder.from_pretrained(tmp_path / "saved", device="cpu")
    assert np.array_equal(again.encode(TEXTS), exact.encode(TEXTS))
    reloaded_fast = Encoder.from_pretrained(tmp_path / "saved", dtype="bfloat16-matmul", device="cpu")
    assert np.array_equal(reloaded_fast.encode(TEXTS), fast.encode(TEXTS))


def test_the_mode_is_part_of_the_fingerprint(model_dir):
    exact = Encoder.from_pretrained(model_dir, dtype="float32", device="cpu")
    fast = Encoder.from_pretrained(model_dir, dtype="bf16-matmul", device="cpu")
    int8 = Encoder.from_pretrained(model_dir, dtype="int8", device="cpu")
    adaptive = Encoder.from_pretrained(model_dir, dtype="bf16-adaptive", device="cpu")
    prints = {exact.fingerprint(), fast.fingerprint(), int8.fingerprint(), adaptive.fingerprint()}
    assert len(prints) == 4 and int8.fingerprint() == Encoder.from_pretrained(model_dir, dtype="int8-dynamic").fingerprint()


SHORT, LONG = "cats", "The committee postponed its decision until the next meeting."  # 4 / 61 byte tokens


def test_bf16_adaptive_runs_short_texts_in_float32_and_long_ones_in_bf16():
    encoder = tiny_encoder(max_length=96)
    reference = {t: encoder.encode([t])[0] for t in (SHORT, LONG)}
    fast = copy.deepcopy(encoder)
    to_bf16_adaptive(fast.model, tiers=((8, 1.0), (None, 0.0)))  # up to 8 tokens all float32, else all bf16
    assert sum(isinstance(m, SwitchedLinear) for m in fast.model.modules()) == 14  # every layer can switch
    assert np.array_equal(fast.encode([SHORT])[0], reference[SHORT])
    long = fast.encode([LONG])[0]
    assert not np.array_equal(long, reference[LONG]) and cosines(long[None], reference[LONG][None]).min() >= 0.999
    # a batch follows its shortest text, so a short text is never rounded for sharing a batch with a long one
    assert np.array_equal(fast.encode([SHORT, LONG], batch_size=2), encoder.encode([SHORT, LONG], batch_size=2))
    default = copy.deepcopy(encoder).use_compute_mode("bf16-adaptive")  # up to 24 tokens: the first 40% float32
    switch = default.model.length_switch
    assert [(default.encode([t]), switch.local.float32_layers)[1] for t in (SHORT, LONG)] == [1, 0]


def test_bf16_adaptive_counts_the_pooled_tokens_not_the_instruction():
    encoder = tiny_encoder(max_length=96)
    instruction = "Retrieve semantically similar text:"  # attended, not pooled: the text still averages 4 states
    fast = copy.deepcopy(encoder)
    to_bf16_adaptive(fast.model, tiers=((8, 1.0), (None, 0.0)))
    assert np.array_equal(fast.encode([SHORT], instruction=instruction), encoder.encode([SHORT], instruction=instruction))
    switch = fast.model.length_switch  # called without the Encoder, the attention mask is the measure
    batch = fast.collate(fast.tokenize([(instruction, SHORT)]))
    fast.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert [switch.runs_bf16(i) for i in (0, 1)] == [True, True]


def test_bf16_adaptive_tiers_are_per_thread_and_refuse_single_token_pooling():
    import threading

    switch = LengthSwitch(num_layers=8, tiers=((8, 1.0), (24, 0.25), (None, 0.0)))
    assert [switch.float32_layers(n) for n in (1, 8, 9, 24, 25, 4096)] == [8, 8, 2, 2, 0, 0]
    switch.before_forward(None, (), {"input_ids": torch.zeros(1, 30, dtype=torch.long)})
    seen = []
    other = threading.Thread(target=lambda: seen.append(switch.runs_bf16(7)))
    other.start()
    other.join()
    assert switch.runs_bf16(0) and seen == [False]  # another thread, before any batch of its own: float32
    with pytest.raises(ValueError, match="bf16-adaptive picks the precision"):
        tiny_encoder(pooling="last").use_compute_mode("bf16-adaptive")


def test_int8_dynamic_quantises_every_linear_layer_and_encodes():
    encoder = tiny_encoder(max_length=64)
    reference = encoder.encode(TEXTS)
    int8 = copy.deepcopy(encoder).use_compute_mode("int8-dynamic")
    assert not any(type(m) is nn.Linear for m in int8.model.modules())
    vectors = int8.encode(TEXTS)
    assert np.isfinite(vectors).all() and cosines(vectors, reference).min() > 0.9


def test_unknown_dtypes_and_modes_are_refused_with_the_choices(model_dir):
    with pytest.raises(ValueError, match="bf16-matmul, bf16-adaptive, int8-dynamic"):
        Encoder.from_pretrained(model_dir, dtype="bf16-fast")
    with pytest.raises(ValueError, match="unknown compute mode 'fast'"):
        tiny_encoder().use_compute_mode("fast")
    with pytest.raises(ValueError, match="applies to bf16-matmul only"):
        tiny_encoder().use_compute_mode("int8-dynamic", float32_layers=1)
    with pytest.raises(ValueError, match="converts a float32 model"):
        Encoder(tiny_model().to(torch.bfloat16), byte_tokenizer()).use_compute_mode("bf16-matmul")
    assert resolve_dtype("bf16", torch.float32) == (torch.bfloat16, None)
    assert resolve_dtype("auto", torch.float32) == (torch.float32, None)
    assert resolve_dtype("int8", torch.bfloat16) == (torch.float32, "int8-dynamic")


def test_a_lora_adapter_is_merged_before_the_conversion():
    from peft import LoraConfig, get_peft_model

    encoder = tiny_encoder(max_length=64)
    encoder.model = get_peft_model(encoder.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    reference = encoder.encode(TEXTS)
    encoder.use_compute_mode("bf16-matmul")
    assert not hasattr(encoder.model, "peft_config")
    assert cosines(encoder.encode(TEXTS), reference).min() >= 0.9999


def test_cli_encode_takes_the_mode_and_refuses_unknown_ones(model_dir, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    runner = CliRunner()
    done = runner.invoke(app, ["encode", "-m", str(model_dir), "-i", str(texts), "-o", str(tmp_path / "v.npy"),
                               "--dtype", "bf16-matmul", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    reference = Encoder.from_pretrained(model_dir, dtype="float32", device="cpu").encode(TEXTS)
    assert cosines(np.load(tmp_path / "v.npy"), reference).min() >= 0.9999
    bad = runner.invoke(app, ["encode", "-m", str(model_dir), "-i", str(texts), "-o", str(tmp_path / "w.npy"),
                              "--dtype", "int4"])
    assert bad.exit_code != 0 and "unknown dtype 'int4'" in str(bad.exception or bad.output)


def test_the_modes_convert_the_backbone_only_beside_the_encoder_extras_and_echo(pre_encoder_dir):
    """Latent attention and the contextual token's pre-encoder and MLP stay float32; Echo is an input format."""
    encoders = {"latent_attention": tiny_encoder(max_length=64, latent_attention=True, latent_attention_latents=16),
                "contextual": tiny_encoder(max_length=64, contextual=str(pre_encoder_dir), bidirectional=False,
                                           pooling="last"),
                "echo": tiny_encoder(max_length=64, echo=True)}
    for name, encoder in encoders.items():
        reference, before = encoder.encode(TEXTS), encoder.fingerprint()
        for mode in ("bf16-matmul", "int8-dynamic"):
            fast = copy.deepcopy(encoder).use_compute_mode(mode, **({"float32_layers": 0} if mode == "bf16-matmul" else {}))
            assert all(p.dtype == torch.float32 for p in fast.extras.parameters()), (name, mode)
            assert not any(isinstance(m, BF16Linear) for m in fast.extras.modules()), (name, mode)
            assert any(type(m) is nn.Linear for m in fast.extras.modules()) == (name != "echo"), (name, mode)
            vectors = fast.encode(TEXTS)
            assert vectors.shape == reference.shape and fast.fingerprint() != before, (name, mode)
            assert cosines(vectors, reference).min() >= (0.999 if mode == "bf16-matmul" else 0.9), (name, mode)


def test_the_mode_also_comes_through_model_kwargs_and_a_quantized_load_is_refused(model_dir):
    fast = Encoder.from_pretrained(model_dir, device="cpu", model_kwargs={"dtype": "bf16-matmul",
                                                                          "attn_implementation": "eager"})
    assert fast.compute_mode == "bf16-matmul" and fast.model.config._attn_implementation == "eager"
    assert any(isinstance(m, BF16Linear) for m in fast.model.modules())
    exact = Encoder.from_pretrained(model_dir, device="cpu", dtype="float32", model_kwargs={"dtype": "bf16-matmul"})
    assert exact.compute_mode is None  # the dtype argument wins over model_kwargs'
    with pytest.raises(ValueError, match="cannot be combined with quantization_config"):
        Encoder.from_pretrained(model_dir, device="cpu", dtype="int8-dynamic",
                                model_kwargs={"quantization_config": {"load_in_8bit": True}})


def test_exports_refuse_a_compute_mode_encoder_and_the_live_route_wraps_it(tmp_path):
    pytest.importorskip("sentence_transformers")
    from lm2vec.export import ExportError, export_merged, export_sentence_transformers

    fast = tiny_encoder(max_length=64).use_compute_mode("bf16-matmul")
    for fmt, write in (("merged", export_merged), ("sentence-transformers", export_sentence_transformers)):
        with pytest.raises(ExportError, match="inference-only compute mode 'bf16-matmul'"):
            write(fast, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()
    live = fast.to_sentence_transformer()
    assert cosines(live.encode(TEXTS, convert_to_numpy=True), fast.encode(TEXTS)).min() >= 0.9999


def test_cli_encode_combines_the_mode_with_dimensions_precision_and_model_kwargs(model_dir, tmp_path):
    pytest.importorskip("sentence_transformers")  # --precision quantizes with it
    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    done = CliRunner().invoke(app, ["encode", "-m", str(model_dir), "-i", str(texts), "-o", str(tmp_path / "v.npy"),
                                    "--dtype", "bf16-matmul", "--dimensions", "16", "--precision", "ubinary",
                                    "--normalize", "--model-kwargs", '{"attn_implementation": "eager"}',
                                    "--device", "cpu"])
    assert done.exit_code == 0, done.output
    fast = Encoder.from_pretrained(model_dir, dtype="bf16-matmul", device="cpu",
                                   model_kwargs={"attn_implementation": "eager"})
    expected = fast.encode(TEXTS, dimensions=16, precision="ubinary", normalize=True)
    written = np.load(tmp_path / "v.npy")
    assert written.shape == (len(TEXTS), 2) and written.dtype == np.uint8 and np.array_equal(written, expected)
