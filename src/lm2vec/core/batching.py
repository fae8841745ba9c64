"""Length-sorted, token-budget batching, shared by `Encoder.encode` and the server.

Sorting by length means each batch pads to a similar length (little wasted compute). Capping a batch
by tokens (padded length x rows) as well as by rows means a few very long texts cannot blow memory,
while short texts still travel in large batches.
"""

from __future__ import annotations

import torch


def plan_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Group indices into batches, longest first; each batch has <= batch_size rows and
    rows * longest_length <= max_tokens (a single over-long text still gets a batch of its own)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        padded = lengths[current[0]] if current else lengths[index]  # longest comes first
        too_many_tokens = max_tokens is not None and (len(current) + 1) * padded > max_tokens
        if current and (len(current) >= batch_size or too_many_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pad_batch(
    sequences: list[list[int]], skips: list[int], pad_id: int, padding_side: str = "right",
    tails: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token lists into tensors: input_ids, attention_mask, pool_mask and position_ids.

    pool_mask covers each row's tokens but its `skips` leading and `tails` trailing ones (default 0).

    position_ids count real tokens only, so a left-padded text gets the same positions (and the same
    rotary phases) as when it is alone; the model is never asked to infer them from the padding.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    pooled = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, skip, tail) in enumerate(zip(sequences, skips, tails or [0] * len(sequences))):
        start = width - len(seq) if padding_side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, start : start + len(seq)] = 1
        pooled[row, start + skip : start + len(seq) - tail] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attention, "pool_mask": pooled, "position_ids": positions}
