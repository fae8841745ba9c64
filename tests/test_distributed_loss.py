"""Two gloo processes with half a batch each give the loss and gradients of one process on the whole batch."""

import copy

import pytest
import torch
import torch.distributed as dist
from conftest import gloo_group, spawn_ranks
from torch import nn

from lm2vec.training.objectives.contrastive import distributed_info_nce, gather_with_grad, info_nce
from lm2vec.training.objectives.simcse import simcse_loss

WORLD, B, K, D_IN, D = 2, 3, 2, 8, 6


def _encoder() -> nn.Module:
    torch.manual_seed(0)  # identical weights on every rank, as DDP guarantees
    return nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Linear(16, D))


def _data():
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(WORLD * B, D_IN, generator=g), torch.randn(WORLD * B, D_IN, generator=g)
    return q, p, torch.randn(WORLD * B, K, D_IN, generator=g)  # (W*B, D_IN) x2, (W*B, K, D_IN)


def _ddp_step(loss_fn, encoder):
    """Backward, then average loss and gradients over ranks by hand (what DDP does)."""
    loss = loss_fn(encoder)
    loss.backward()
    for param in encoder.parameters():
        dist.all_reduce(param.grad)
        param.grad /= WORLD
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    return loss / WORLD, [param.grad for param in encoder.parameters()]


def _assert_same(distributed, reference):
    (loss, grads), (ref_loss, ref_grads) = distributed, reference
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)


def _single(loss_fn, encoder):
    loss = loss_fn(encoder)
    loss.backward()
    return loss.detach(), [param.grad for param in encoder.parameters()]


def _worker(rank: int, init_file: str) -> None:
    with gloo_group(rank, init_file, WORLD):
        q, p, n = _data()
        mine = slice(rank * B, (rank + 1) * B)
        assert torch.equal(gather_with_grad(q[mine]), q)  # rank order

        for negatives in (n, None):
            local_n = None if negatives is None else negatives[mine]
            full_n = None if negatives is None else negatives.view(-1, D_IN)

            def local(enc, local_n=local_n):
                neg = None if local_n is None else enc(local_n)  # (B, K, D)
                return distributed_info_nce(enc(q[mine]), enc(p[mine]), neg)

            def full(enc, full_n=full_n):
                neg = None if full_n is None else enc(full_n)  # (W*B*K, D)
                return info_nce(enc(q), enc(p), neg)

            encoder = _encoder()
            reference = _single(full, copy.deepcopy(encoder))
            _assert_same(_ddp_step(local, encoder), reference)

        def simcse(enc):
            noise = iter([0.0, 0.1])  # deterministic stand-in for two dropout masks
            return simcse_loss(lambda batch: enc(batch + next(noise)), q[mine])

        encoder = _encoder()
        reference = _single(lambda enc: info_nce(enc(q), enc(q + 0.1)), copy.deepcopy(encoder))
        _assert_same(_ddp_step(simcse, encoder), reference)

        with pytest.raises(ValueError, match="equal local batch sizes"):
            distributed_info_nce(torch.randn(2 + rank, D), torch.randn(2 + rank, D))


def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    spawn_ranks(_worker, (str(tmp_path / "rendezvous"),), WORLD)
