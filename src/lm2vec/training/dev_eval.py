"""Evaluation while training: Spearman correlation of cosine similarity with gold scores on a dev set.

Cheap enough to run every few steps on a CPU: a fixed seeded sample of the pairs, each distinct
sentence tokenised once and encoded once per evaluation. Use a split that no benchmark scores
(STS Benchmark *dev*; never a test split, and not SICK trial/train, which mteb's SICK-R scores).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from scipy.stats import spearmanr

from lm2vec.data.scored_pairs import load_scored_pairs


class DevEvaluator:
    """Spearman x cosine on `limit` pairs of `path`, for the encoder it was built with."""

    def __init__(self, encoder, path: str, limit: int | None = 500, instruction: str | None = None,
                 seed: int = 0, batch_size: int = 64, max_length: int | None = None,
                 inference_mode: bool = True) -> None:
        pairs = load_scored_pairs(path)
        chosen = list(range(len(pairs.scores)))
        if limit is not None and limit < len(chosen):
            chosen = sorted(random.Random(seed).sample(chosen, limit))
        texts = sorted({pairs.sentence1[i] for i in chosen} | {pairs.sentence2[i] for i in chosen})
        where = {text: k for k, text in enumerate(texts)}
        self.first = np.array([where[pairs.sentence1[i]] for i in chosen])
        self.second = np.array([where[pairs.sentence2[i]] for i in chosen])
        self.gold = np.array([pairs.scores[i] for i in chosen])
        self.encoder, self.batch_size, self.inference_mode = encoder, batch_size, inference_mode
        # once, reused; at the encoder's final max_length, not the stage's (which may cut dev sentences)
        saved, encoder.config.max_length = encoder.config.max_length, max_length or encoder.config.max_length
        try:
            self.tokenized = encoder.tokenize([(instruction, text) for text in texts])
        finally:
            encoder.config.max_length = saved

    def score(self) -> float:
        """Spearman correlation (-1..1) of the pairs' cosine similarities with the gold scores."""
        vectors = self.encoder.encode_tokenized(self.tokenized, batch_size=self.batch_size,
                                                inference_mode=self.inference_mode)
        vectors = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1).numpy()
        cosines = (vectors[self.first] * vectors[self.second]).sum(axis=1)
        return float(spearmanr(cosines, self.gold).statistic)
