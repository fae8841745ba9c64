"""Latent-attention pooling (core/latent_attention.py): NV-Embed's layer before the mean, identity until
trained, invariant to padding and batch, saved and loaded with the encoder, refused by the exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_encoder

from lm2vec import Encoder
from lm2vec.core.latent_attention import LatentAttention

TEXTS = ["a cat sat on the mat", ("Retrieve similar sentences:", "a dog lay on the rug"), "owls"]
LONG = ["this text is very much longer than the short one, so it forces a lot of padding " * 2,
        "another long companion text that also forces padding onto the short text"]


def _trained_like(encoder: Encoder, seed: int = 1) -> Encoder:
    """Give the zero-initialised output projections random weights, as training would."""
    torch.manual_seed(seed)
    layer = encoder.extras["latent_attention"]
    with torch.no_grad():
        for weight in (layer.to_out.weight, layer.mlp_out.weight):
            weight.normal_(0, 0.05)
    return encoder


def test_defaults_are_nv_embeds_sizes():
    layer = LatentAttention(64)
    assert layer.latents.shape == (512, 64) and layer.heads == 8
    assert layer.to_q.weight.shape == (8 * 64, 64) and layer.to_kv.weight.shape == (2 * 8 * 64, 64)
    assert layer.mlp_in.weight.shape == (2 * 4 * 64, 64)


def test_an_untrained_layer_is_plain_mean_pooling():
    encoder = tiny_encoder(latent_attention=True, latent_attention_latents=32)
    assert np.abs(encoder.encode(TEXTS) - tiny_encoder().encode(TEXTS)).max() < 1e-5
    assert np.abs(_trained_like(encoder).encode(TEXTS) - tiny_encoder().encode(TEXTS)).max() > 1e-3


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_vectors_ignore_padding_side_and_batch(pooling):
    encoder = _trained_like(tiny_encoder(latent_attention=True, latent_attention_latents=32, pooling=pooling))
    alone = encoder.encode([TEXTS[1]], batch_size=1)[0]
    for side in ("left", "right"):
        encoder.config.padding_side = side
        for batch_size in (2, 3):
            assert np.abs(encoder.encode(LONG + [TEXTS[1]], batch_size=batch_size)[-1] - alone).max() < 1e-4


def test_layer_is_applied_to_states_then_pooled_over_the_pool_mask():
    encoder = _trained_like(tiny_encoder(latent_attention=True, latent_attention_latents=32))
    [tok] = encoder.tokenize([TEXTS[1]])
    with torch.no_grad():
        states = encoder.extras["latent_attention"](encoder.hidden_states(encoder.collate([tok])))[0]
    assert np.abs(encoder.encode([TEXTS[1]])[0] - states[tok.skip :].mean(dim=0).numpy()).max() < 1e-5


def test_saved_and_loaded_with_identical_vectors(tmp_path):
    encoder = _trained_like(tiny_encoder(latent_attention=True, latent_attention_latents=16, latent_attention_heads=2))
    before = encoder.encode(TEXTS)
    encoder.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "lm2vec_extras.safetensors").is_file()
    loaded = Encoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert loaded.config.latent_attention_heads == 2
    assert np.array_equal(loaded.encode(TEXTS), before)
    twin = dict(latent_attention=True, latent_attention_latents=16, latent_attention_heads=2)
    assert _trained_like(tiny_encoder(**twin)).fingerprint() == encoder.fingerprint()
    assert _trained_like(tiny_encoder(**twin), seed=2).fingerprint() != encoder.fingerprint()  # its weights count
    with pytest.raises(ValueError, match="does not fit this encoder's settings"):
        Encoder.from_pretrained(tmp_path / "enc", device="cpu", latent_attention_latents=8)


def test_exports_refuse_a_latent_attention_encoder(tmp_path):
    pytest.importorskip("sentence_transformers")
    from lm2vec.export import ExportError, export_merged

    encoder = tiny_encoder(latent_attention=True, latent_attention_latents=16)
    with pytest.raises(ExportError, match="latent_attention cannot be exported"):
        encoder.to_sentence_transformer()
    with pytest.raises(ExportError, match="merged format"):
        export_merged(encoder, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
