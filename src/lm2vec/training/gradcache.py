"""GradCache: a contrastive batch larger than memory allows, with the exact full-batch gradient.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv 2101.06983); sentence-transformers' CachedMultipleNegativesRankingLoss does the same.
In-batch negatives make the loss a function of *every* embedding of the batch, so gradient
accumulation over micro-batches does not train a larger batch: it trains many small ones. GradCache:
1. embed the whole batch chunk by chunk without a graph (memory of one chunk);
2. compute the loss on those embeddings as leaves and back-propagate it to them (cheap: (B, D));
3. embed each chunk again, now with a graph, and back-propagate the cached embedding gradient.
Step 3 must reproduce step 1 exactly, dropout included (SimCSE's views differ only by dropout), so
every chunk's forward runs under a seed of its own, set again for the replay. That seed is a function of
(step seed, side, first global row), and each chunk is trimmed to its own longest text: the same rows
get the same dropout masks whatever the number of processes, so 2 processes x 8 rows train exactly
what 1 process x 16 rows trains.
Under DDP / FSDP (training/engine.py) only the last replayed chunk synchronises gradients: the others run
under `accumulate()`, so a step costs one all-reduce of the summed gradient, not one per chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

Side = tuple[str, dict[str, torch.Tensor]]  # (name, collated batch): one group of texts to embed


def trim_columns(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns no row of this chunk uses (left or right padding alike); the contextual
    token's pre-encoder inputs (`context_*`, a width of their own) by their own mask."""
    out = dict(batch)
    for prefix in ("", "context_"):
        keys = [k for k in batch if k.startswith("context_") == bool(prefix)]
        used = batch[prefix + "attention_mask"].bool().any(dim=0).nonzero().flatten() if keys else []
        if len(used):
            first, last = int(used[0]), int(used[-1]) + 1
            out.update({k: batch[k][:, first:last] for k in keys})
    return out


def split_rows(batch: dict[str, torch.Tensor], size: int) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """(first row, chunk) pairs of at most `size` rows, each trimmed to its own padding."""
    rows = next(iter(batch.values())).shape[0]
    return [(start, trim_columns({k: v[start : start + size] for k, v in batch.items()}))
            for start in range(0, rows, size)]


def chunk_seed(step_seed: int, side: int, first_row: int) -> int:
    """The dropout seed of one chunk: the same in the no-graph pass and in its replay."""
    return (step_seed * 1_000_003 + side * 7_919 + first_row * 104_729 + 1) % (2**63)


def _embed_side(embed: Callable, side: dict, size: int, step_seed: int, index: int, row_offset: int,
                grad: torch.Tensor | None = None, accumulate: Callable = contextlib.nullcontext,
                sync_last: bool = False) -> torch.Tensor | None:
    """Without `grad`: embed the side chunk by chunk, no graph. With it: replay each chunk with a graph
    and back-propagate its rows of `grad`, each under `accumulate()` except the last if `sync_last`."""
    parts, chunks = [], split_rows(side, size)
    for k, (start, chunk) in enumerate(chunks):
        torch.manual_seed(chunk_seed(step_seed, index, row_offset + start))
        if grad is None:
            with torch.no_grad():
                parts.append(embed(chunk))
            continue
        with contextlib.nullcontext() if sync_last and k == len(chunks) - 1 else accumulate():
            vectors = embed(chunk)
            vectors.backward(grad[start : start + vectors.shape[0]].to(vectors.dtype))
    return torch.cat(parts) if grad is None else None


def cached_backward(embed: Callable[[dict], torch.Tensor], sides: Sequence[Side],
                    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], mini_batch_size: int,
                    step_seed: int, rank: int = 0, accumulate: Callable = contextlib.nullcontext,
                    sync: bool = True) -> torch.Tensor:
    """Back-propagate `loss_fn` over the embeddings of every side, `mini_batch_size` rows at a time.

    `embed(chunk) -> (n, D)` runs the model in train mode; `loss_fn({name: (rows, D)})` may gather
    across processes (its gradient then already covers every rank's loss). Parameter gradients end up
    as one full-batch `loss_fn(...).backward()` would leave them. Returns the loss (detached).
    `accumulate()`: the engine's context for a backward that must not synchronise (DDP `no_sync`); every
    replayed chunk runs under it except the very last one when `sync` (the step's last backward).
    """
    offsets = [rank * next(iter(side.values())).shape[0] for _, side in sides]  # global first row per side
    cached = {name: _embed_side(embed, side, mini_batch_size, step_seed, i, offsets[i])
              for i, (name, side) in enumerate(sides)}
    leaves = {name: vectors.detach().requires_grad_() for name, vectors in cached.items()}
    loss = loss_fn(leaves)
    loss.backward()
    for i, (name, side) in enumerate(sides):
        _embed_side(embed, side, mini_batch_size, step_seed, i, offsets[i], grad=leaves[name].grad,
                    accumulate=accumulate, sync_last=sync and i == len(sides) - 1)
    return loss.detach()

