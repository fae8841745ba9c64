"""InfoNCE with in-batch and hard negatives, on one process or across ranks.

The loss of SimCSE (Gao et al. 2021, arXiv 2104.08821) and of LLM2Vec's supervised and unsupervised
contrastive steps (BehnamGhader et al. 2024, arXiv 2404.05961, §2.2-2.3; `HardNegativeNLLLoss`):
each query must pick its own positive among every positive and hard negative in the (global) batch.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def cosine_scores(queries: torch.Tensor, candidates: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """(B, D) x (C, D) -> (B, C) cosine similarities times `scale` (1 / temperature; 20 = 1/0.05).

    Computed in float32, autocast or not: bf16 cosines are too coarse once multiplied by the scale.
    """
    with torch.autocast(queries.device.type, enabled=False):
        return scale * F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T


def info_nce_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over queries of -log softmax(scores)[target]: scores (B, C), targets (B,) candidate indices."""
    return F.cross_entropy(scores, targets)


def _flatten(negatives: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """Hard negatives as (B*K, D), from (B*K, D) or (B, K, D)."""
    return None if negatives is None else negatives.reshape(-1, dim)


def info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 20.0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of queries (B, D) against all positives (B, D) plus all hard negatives (N or B,K, D).

    Query b's target is positive b; the other positives and every hard negative in the batch are its
    negatives (in-batch negatives, SimCSE §3-4; LLM2Vec's HardNegativeNLLLoss). `exclude` (B, C) marks
    candidates that are not negatives of that query (duplicates of its positive: false negatives);
    they leave its softmax, exactly as if they were not in the batch for it.
    """
    negatives = _flatten(negatives, queries.shape[-1])
    candidates = positives if negatives is None else torch.cat([positives, negatives])  # (C, D)
    targets = torch.arange(queries.shape[0], device=queries.device)  # (B,)
    return info_nce_from_scores(_masked(cosine_scores(queries, candidates, scale), exclude), targets)


def _masked(scores: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    return scores if exclude is None else scores.masked_fill(exclude.to(scores.device), float("-inf"))


def false_negatives(query_ids: torch.Tensor, positive_ids: torch.Tensor, negative_ids: torch.Tensor | None,
                    first: int = 0, count: int | None = None) -> torch.Tensor:
    """(count, C) True where a candidate is another copy of what query b should find: the positive of a
    query with the same text or a positive with the same text (SNLI repeats premises), or a hard negative
    whose text is b's positive. Ids are text hashes over the *global* batch (query_ids, positive_ids:
    (W*B,), negative_ids: (N,)); this process's queries are rows first .. first+count. Never marks a
    query's own positive."""
    count = len(query_ids) - first if count is None else count
    mine = torch.arange(first, first + count)
    q, p = query_ids[mine], positive_ids[mine]
    exclude = (q[:, None] == query_ids[None, :]) | (p[:, None] == positive_ids[None, :])  # (B, W*B)
    exclude[torch.arange(count), mine] = False
    if negative_ids is not None and len(negative_ids):
        exclude = torch.cat([exclude, p[:, None] == negative_ids[None, :]], dim=1)  # (B, W*B + N)
    return exclude


def _world() -> tuple[int, int]:
    """(world size, rank); (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _AllGather(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the sum of every rank's gradient
    for its own rows. Written out because torch.distributed.nn.functional.all_gather is deprecated
    (torch 2.13 warns on every call); an all_reduce backward works on every backend, gloo included."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, ctx.rank = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W*B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)  # sum over ranks of d(loss_s)/d(gathered)
        return grad.chunk(_world()[0])[ctx.rank]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all ranks in rank order, keeping gradients; x itself on one process.

    Every rank must pass the same shape.
    """
    return _AllGather.apply(x) if _world()[0] > 1 else x


def gather_rows(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Every rank's rows in rank order, when ranks hold different numbers of rows (hard negatives):
    pad to the largest count, gather, drop the padding. With `grad`, gradients flow back to each rank."""
    world, _ = _world()
    if world == 1:
        return x
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(c) for c in counts]
    most = max(counts)
    padded = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    if grad:
        gathered = gather_with_grad(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered = torch.cat(parts)
    keep = torch.cat([torch.arange(r * most, r * most + n) for r, n in enumerate(counts)]).to(x.device)
    return gathered[keep]


def _check_equal_batches(queries: torch.Tensor) -> None:
    """Raise on every rank if local batch sizes differ (each rank's share of the mean must be equal)."""
    world, _ = _world()
    size = torch.tensor([queries.shape[0]], device=queries.device)
    everyone = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(everyone, size)
    if any(not torch.equal(s, size) for s in everyone):
        found = [int(s) for s in everyone]
        raise ValueError(f"distributed_info_nce needs equal local batch sizes on every rank; batch per rank: {found}")


def distributed_info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 20.0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of the local queries against the positives and hard negatives of all ranks.

    Global batch = the W local batches of size B in rank order; local query b is global W-index
    rank*B + b. Ranks may hold different numbers of hard negatives (all of them are candidates for
    every query). `exclude` is (B, W*B + all negatives), see `false_negatives`. Why this equals one
    process on the W*B batch:
    - loss: the full-batch loss is the mean of W*B per-query terms, each of which depends only on its
      query and the global candidates; the local loss L_r is the mean of rank r's B terms, so
      mean_r L_r = full loss (hence equal batch sizes).
    - gradients: the gather's backward gives rank r's rows sum_s dL_s/d(rows of r), so rank r's parameter
      gradient is d(sum_s L_s)/dθ through its own embeddings. DDP sums these over ranks and divides by W,
      giving d(mean_s L_s)/dθ = gradient of the full-batch loss.
    Without torch.distributed (or W == 1) this is `info_nce`.
    """
    world, rank = _world()
    if world == 1:
        return info_nce(queries, positives, negatives, scale, exclude)
    _check_equal_batches(queries)
    dim = queries.shape[-1]
    negatives = queries.new_zeros((0, dim)) if negatives is None else _flatten(negatives, dim)  # every rank gathers
    candidates = torch.cat([gather_with_grad(positives), gather_rows(negatives)])  # (W*B + N, D)
    targets = rank * queries.shape[0] + torch.arange(queries.shape[0], device=queries.device)  # (B,)
    return info_nce_from_scores(_masked(cosine_scores(queries, candidates, scale), exclude), targets)
