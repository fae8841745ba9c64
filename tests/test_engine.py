"""DDP as the loop uses it (training/engine.py), on 2 gloo processes: GradCache's chunks and MNTP's
micro-batches synchronise once per step (no_sync for the others) and still give the gradient of one
process holding the whole batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from conftest import byte_tokenizer, gloo_group, spawn_ranks, tiny_model
from test_gradcache import SEED, _assert_close, _encoder, _grads, _task, two_rank_embeddings
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from lm2vec import Encoder, EncoderConfig
from lm2vec.training.engine import DDPEngine, Engine, FSDPEngine, layer_classes, make_engine
from lm2vec.training.gradcache import cached_backward
from lm2vec.training.objectives import MNTPTask
from lm2vec.training.recipe import StageConfig

ROWS = [[1] + [3 + (i * 7 + j * 3) % 250 for j in range(10 + i % 4)] for i in range(8)]  # 8 token rows


def _counting_ddp(model: torch.nn.Module) -> tuple[DDPEngine, list, dict]:
    """A DDP engine whose all-reduces are recorded (one entry per gradient bucket sent)."""
    engine = make_engine("ddp", 2)
    engine.wrap(model, torch.device("cpu"))
    sent: list = []

    def hook(state, bucket):
        sent.append(state["pass"])
        return allreduce_hook(dist.group.WORLD, bucket)

    state = {"pass": 0}
    engine.wrapper.register_comm_hook(state, hook)
    return engine, sent, state


def _gradcache_worker(rank: int, init_file: str, result_file: str) -> None:
    with gloo_group(rank, init_file):
        encoder = _encoder(0.3)  # dropout on: the replay must redraw the same masks under DDP too
        engine, sent, state = _counting_ddp(encoder.model)
        task, batch = _task("simcse", encoder, range(rank * 8, (rank + 1) * 8))
        plain_embed = encoder.embed

        def embed(chunk):  # numbers the forward passes, so the hook can say which one all-reduced
            state["pass"] += 1
            return plain_embed(chunk)

        with engine.forwarding(encoder):
            assert encoder.model is engine.wrapper
            loss = cached_backward(embed, task.embedding_sides(batch), lambda e: task.loss_from_embeddings(e, batch),
                                   3, SEED, rank, accumulate=engine.accumulating)
        assert encoder.model is engine.wrapper.module, "the plain model is back after the step"
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / 2, "grads": _grads(encoder), "sent": sent, "passes": state["pass"]},
                       result_file)


def test_gradcache_under_ddp_syncs_once_and_equals_one_process_with_the_full_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    spawn_ranks(_gradcache_worker, (str(tmp_path / "rendezvous"), str(out)))
    two = torch.load(out)
    # 2 sides x 3 chunks of 8 rows, embedded without a graph and then replayed: 12 forwards; only the
    # last replayed chunk's backward may send gradients (every bucket then, once)
    assert two["passes"] == 12 and two["sent"] and set(two["sent"]) == {12}
    encoder = _encoder(0.3)
    task, batch = _task("simcse", encoder)
    loss = task.loss_from_embeddings(two_rank_embeddings(task, batch, encoder), batch)  # both ranks, one graph
    loss.backward()
    torch.testing.assert_close(two["loss"], loss.detach(), atol=1e-5, rtol=0)
    _assert_close(two["grads"], _grads(encoder))


def _mntp(seed: int = 0):
    full = tiny_model("llama", causal_lm=True, seed=seed)
    encoder = Encoder(full.model, byte_tokenizer(), EncoderConfig(max_length=32))
    for name, p in encoder.model.named_parameters():  # stand-ins for LoRA weights; the head stays frozen
        p.requires_grad_("layers.0" in name)
    full.lm_head.requires_grad_(False)
    encoder.model.train()
    return encoder, MNTPTask(StageConfig(objective="mntp", data="unused", mask_token="_"), encoder, full.lm_head)


def _micro_batches():
    """4 masked micro-batches of 2 rows: rank r takes 2r and 2r+1 (grad_accum 2 on each process)."""
    task = _mntp()[1]
    return [task.collate(ROWS[2 * k : 2 * k + 2], torch.Generator().manual_seed(k)) for k in range(4)]


def _mntp_worker(rank: int, init_file: str, result_file: str) -> None:
    with gloo_group(rank, init_file):
        encoder, task = _mntp()
        engine, sent, state = _counting_ddp(encoder.model)
        batches = _micro_batches()[2 * rank : 2 * rank + 2]
        for micro, batch in enumerate(batches):
            state["pass"] = micro
            with engine.forwarding(encoder), engine.accumulating() if micro == 0 else contextlib.nullcontext():
                (task.loss(batch) / 2).backward()
        if rank == 0:
            torch.save({"grads": _grads(encoder), "sent": sent}, result_file)


def test_mntp_grad_accum_under_ddp_accumulates_locally_then_averages_once(tmp_path):
    out = tmp_path / "rank0.pt"
    spawn_ranks(_mntp_worker, (str(tmp_path / "rendezvous"), str(out)))
    two = torch.load(out)
    assert two["sent"] and set(two["sent"]) == {1}, "the first micro-batch's backward must not all-reduce"
    encoder, task = _mntp()
    for batch in _micro_batches():  # the mean over 2 processes of the mean over 2 micro-batches
        (task.loss(batch) / 4).backward()
    _assert_close(two["grads"], _grads(encoder))


def test_one_process_needs_no_engine_and_fsdp_finds_the_decoder_layers():
    assert type(make_engine("ddp", 1)) is Engine and type(make_engine("fsdp", 1)) is Engine
    assert type(make_engine("fsdp", 2)) is FSDPEngine and FSDPEngine.sharded and not DDPEngine.sharded
    assert layer_classes(tiny_model("llama")) == {"LlamaDecoderLayer"}
    with pytest.raises(KeyError):
        make_engine("deepspeed", 2)
