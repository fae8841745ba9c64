"""Pooling: token states (B, T, D) and a pooling mask (B, T) -> one vector per text (B, D).

The pooling mask is 1 on tokens that belong to the text proper: padding is 0, and so are the tokens of
an instruction prefix (LLM2Vec's "embed mask": the instruction is attended to, never averaged in).
Every mode works for left and right padding because it only looks at the mask, never at positions.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "weighted_mean", "last", "first")


def check_pooling_mode(mode: str) -> str:
    """Return `mode` if known, else raise a ValueError listing the modes."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    return mode


def _safe_mask(mask: torch.Tensor) -> torch.Tensor:
    """The mask as the states' dtype-friendly float, with empty rows caught early."""
    if (mask.sum(dim=1) == 0).any():
        raise ValueError("a row of the pooling mask is empty: nothing to pool (text truncated away?)")
    return mask.float()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the pooled tokens' states."""
    m = _safe_mask(mask).unsqueeze(-1)  # (B, T, 1)
    return (hidden.float() * m).sum(dim=1) / m.sum(dim=1)


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean (SGPT, used by LLM2Vec): the k-th pooled token has weight k.

    Later tokens have seen more context in a causal model, so they count more. Weights count pooled
    tokens only, so padding side and instruction length do not change them.
    """
    m = _safe_mask(mask)
    weights = (torch.cumsum(m, dim=1) * m).unsqueeze(-1)  # (B, T, 1): 1, 2, ... n on pooled tokens
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for each row (B,)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * positions).argmax(dim=1)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the last pooled token (the EOS or last real token; the only one that saw all in a causal model)."""
    _safe_mask(mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, _last_index(mask)].float()


def first_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the first pooled token."""
    _safe_mask(mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, mask.long().argmax(dim=1)].float()


_POOLERS = {"mean": mean_pool, "weighted_mean": weighted_mean_pool, "last": last_pool, "first": first_pool}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool (B, T, D) states under a (B, T) mask with the named mode; returns float32 (B, D)."""
    return _POOLERS[check_pooling_mode(mode)](hidden, mask)
