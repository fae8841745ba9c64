"""Pooling on fixed tensors against values worked out by hand, for both padding sides."""

from __future__ import annotations

import pytest
import torch

from lm2vec.core.pooling import pool

# Two rows, three positions, 2-d states. Row 0: tokens at 0,1 (right padding). Row 1: tokens at 1,2 (left).
HIDDEN = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                       [[100.0, 100.0], [5.0, 6.0], [7.0, 10.0]]])
MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])


def test_mean():
    assert torch.equal(pool(HIDDEN, MASK, "mean"), torch.tensor([[2.0, 3.0], [6.0, 8.0]]))


def test_weighted_mean_weights_pooled_tokens_1_2():
    # row 0: (1*[1,2] + 2*[3,4]) / 3 = [7/3, 10/3]; row 1: (1*[5,6] + 2*[7,10]) / 3 = [19/3, 26/3]
    expected = torch.tensor([[7 / 3, 10 / 3], [19 / 3, 26 / 3]])
    assert torch.allclose(pool(HIDDEN, MASK, "weighted_mean"), expected)


def test_last_and_first():
    assert torch.equal(pool(HIDDEN, MASK, "last"), torch.tensor([[3.0, 4.0], [7.0, 10.0]]))
    assert torch.equal(pool(HIDDEN, MASK, "first"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_instruction_span_is_skipped():
    # row 0's first token is an instruction token: pool mask excludes it although attention saw it.
    mask = torch.tensor([[0, 1, 0], [0, 1, 1]])
    assert torch.equal(pool(HIDDEN, mask, "mean")[0], torch.tensor([3.0, 4.0]))
    assert torch.equal(pool(HIDDEN, mask, "first")[0], torch.tensor([3.0, 4.0]))


def test_unknown_mode_and_empty_row():
    with pytest.raises(ValueError, match="unknown pooling mode 'max'.*mean, weighted_mean, last, first"):
        pool(HIDDEN, MASK, "max")
    with pytest.raises(ValueError, match="empty"):
        pool(HIDDEN, torch.tensor([[0, 0, 0], [1, 1, 1]]), "mean")
