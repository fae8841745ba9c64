"""GradCache gives the gradient of one full-batch pass, dropout included, on 1 and on 2 processes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from conftest import byte_tokenizer, gloo_group, spawn_ranks, tiny_model

from lm2vec import Encoder, EncoderConfig
from lm2vec.data.triplets import Triplet
from lm2vec.training import gradcache
from lm2vec.training.gradcache import cached_backward, split_rows
from lm2vec.training.objectives import SimCSETask, SupervisedTask, set_dropout
from lm2vec.training.recipe import StageConfig

TEXTS = [f"text number {i} says {'more ' * (i % 5)}about item {i * 7}" for i in range(16)]
SEED = 1234


def _encoder(dropout: float = 0.3) -> Encoder:
    encoder = Encoder(tiny_model("llama", seed=3), byte_tokenizer(), EncoderConfig(max_length=48))
    set_dropout(encoder.model, attention=dropout)
    encoder.model.train()
    for name, p in encoder.model.named_parameters():  # a few trainable tensors stand in for LoRA
        p.requires_grad_("layers.1" in name or "embed" in name)
    return encoder


def triplet(i: int) -> Triplet:
    """Row i of a 16-row supervised batch: 0-2 hard negatives, and rows 12-15 repeat the queries of rows
    0-3 (their positives are then false negatives for each other, across processes too)."""
    return Triplet(query=TEXTS[i % 12], positive=f"{TEXTS[i].upper()} ({i})",
                   negatives=[TEXTS[(i + 3) % 16], TEXTS[(i + 5) % 16]][: i % 3])


def _task(objective: str, encoder: Encoder, rows: range = range(16), **settings):
    stage = StageConfig(objective=objective, data="unused", batch_size=len(rows), **settings)
    if objective == "simcse":
        task = SimCSETask(stage, encoder)
        return task, task.collate([TEXTS[i] for i in rows], torch.Generator())
    task = SupervisedTask(stage, encoder)
    return task, task.collate([triplet(i) for i in rows], torch.Generator())


def full_batch_backward(encoder, task, batch, mini: int, rank: int = 0):
    """The reference: the same chunks under the same seeds, all kept in one graph, one backward."""
    embeddings = {}
    for i, (name, side) in enumerate(task.embedding_sides(batch)):
        rows = next(iter(side.values())).shape[0]
        parts = []
        for start, chunk in split_rows(side, mini):
            torch.manual_seed(gradcache.chunk_seed(SEED, i, rank * rows + start))
            parts.append(encoder.embed(chunk))
        embeddings[name] = torch.cat(parts)
    loss = task.loss_from_embeddings(embeddings, batch)
    loss.backward()
    return loss.detach(), embeddings


def _grads(encoder):
    return {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.requires_grad}


def _assert_close(a: dict, b: dict, tol: float = 1e-5):
    """Equal within 1e-5, relative to a tensor's largest gradient where that exceeds 1 (float32 sums of
    a random model's gradients reach ~70 under the supervised scale 50)."""
    assert a.keys() == b.keys() and a
    for name in a:
        atol = tol * max(1.0, b[name].abs().max().item())
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("objective", ["simcse", "supervised"])
@pytest.mark.parametrize("mini", [3, 5, 16])
def test_gradcache_equals_one_full_batch_pass_with_dropout_on(objective, mini):
    encoder = _encoder()
    reference = copy.deepcopy(encoder)
    task, batch = _task(objective, encoder)
    ref_task, _ = _task(objective, reference)
    loss = cached_backward(encoder.embed, task.embedding_sides(batch), lambda e: task.loss_from_embeddings(e, batch),
                           mini, SEED)
    ref_loss, embeddings = full_batch_backward(reference, ref_task, batch, mini)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    _assert_close(_grads(encoder), _grads(reference))
    if objective == "simcse":  # dropout is really on: the two views of one text differ
        assert (embeddings["view1"] - embeddings["view2"]).abs().max() > 1e-3


@pytest.mark.parametrize("objective", ["simcse", "supervised"])
def test_gradcache_with_matryoshka_dims_equals_one_full_batch_pass(objective):
    """The Matryoshka sum is a loss over the cached embeddings like any other: nothing changes for GradCache."""
    encoder = _encoder()
    reference = copy.deepcopy(encoder)
    nested = {"matryoshka_dims": [64, 16, 4], "matryoshka_weights": [1.0, 0.5, 0.25]}
    task, batch = _task(objective, encoder, **nested)
    ref_task, _ = _task(objective, reference, **nested)
    loss = cached_backward(encoder.embed, task.embedding_sides(batch), lambda e: task.loss_from_embeddings(e, batch),
                           5, SEED)
    ref_loss, _ = full_batch_backward(reference, ref_task, batch, 5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    _assert_close(_grads(encoder), _grads(reference))


def test_gradcache_without_replayed_dropout_would_be_wrong(monkeypatch):
    """The equality above is not vacuous: if the replay drew new dropout masks, gradients would differ."""
    encoder = _encoder()
    reference = copy.deepcopy(encoder)
    task, batch = _task("simcse", encoder)
    full_batch_backward(reference, _task("simcse", reference)[0], batch, 4)
    calls = iter(range(10_000))
    monkeypatch.setattr(gradcache, "chunk_seed", lambda *args: next(calls))  # a fresh seed at every forward
    cached_backward(encoder.embed, task.embedding_sides(batch), lambda e: task.loss_from_embeddings(e, batch), 4, SEED)
    grads, ref = _grads(encoder), _grads(reference)
    assert max((grads[n] - ref[n]).abs().max().item() for n in grads) > 1e-4


def test_chunks_are_trimmed_to_their_own_padding():
    encoder = _encoder()
    batch = encoder.collate(encoder.tokenize([(None, "a"), (None, "bb"), (None, "a much longer text")]), "left")
    (_, first), (_, second) = split_rows(batch, 2)
    assert first["input_ids"].shape == (2, 3) and second["input_ids"].shape == (1, 19)  # BOS + bytes
    assert first["attention_mask"].all(dim=1).tolist() == [False, True]


NESTED = {"matryoshka_dims": [64, 8], "matryoshka_weights": [1.0, 0.5]}


def _worker(rank: int, init_file: str, objective: str, result_file: str, nested: bool = False) -> None:
    with gloo_group(rank, init_file):
        encoder = _encoder(0.3 if objective == "simcse" else 0.0)
        task, batch = _task(objective, encoder, range(rank * 8, (rank + 1) * 8), **(NESTED if nested else {}))
        loss = cached_backward(encoder.embed, task.embedding_sides(batch),
                               lambda e: task.loss_from_embeddings(e, batch), 3, SEED, rank)
        grads = _grads(encoder)
        for g in grads.values():  # what DDP does
            dist.all_reduce(g)
            g /= 2
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / 2, "grads": grads}, result_file)


def _one_process_supervised(nested: bool = False):
    """Supervised has ranks with different numbers of hard negatives; with dropout off the reference is
    the plain full-batch loss (16 rows, every negative, duplicates masked across the two halves)."""
    encoder = _encoder(0.0)
    task, batch = _task("supervised", encoder, **(NESTED if nested else {}))
    loss = task.loss(batch)
    loss.backward()
    return loss.detach(), _grads(encoder)


@pytest.mark.parametrize(("objective", "nested"), [("simcse", False), ("supervised", False), ("supervised", True)])
def test_two_processes_with_gradcache_equal_one_process_with_the_full_batch(objective, nested, tmp_path):
    """`nested`: Matryoshka dims, whose per-prefix losses each gather across the two processes."""
    out = tmp_path / "rank0.pt"
    spawn_ranks(_worker, (str(tmp_path / "rendezvous"), objective, str(out), nested))
    two = torch.load(out)
    if objective == "supervised":
        loss, grads = _one_process_supervised(nested)
        torch.testing.assert_close(two["loss"], loss, atol=1e-5, rtol=0)
        _assert_close(two["grads"], grads)
        return
    encoder = _encoder()
    task, batch = _task(objective, encoder)
    # one process, 16 rows in chunks of 3 would cut rows differently from 2 x 8 rows in chunks of 3;
    # the reference keeps each rank's chunk boundaries: rows 0-7 and 8-15 cut at 3 within each half.
    loss = task.loss_from_embeddings(two_rank_embeddings(task, batch, encoder), batch)
    loss.backward()
    torch.testing.assert_close(two["loss"], loss.detach(), atol=1e-5, rtol=0)
    _assert_close(two["grads"], _grads(encoder))


def two_rank_embeddings(task, batch, encoder) -> dict:
    """One process's embeddings of 2 ranks x 8 rows, each rank's half cut into chunks of 3 and seeded as
    GradCache seeds them, so one graph reproduces what the two processes computed."""
    embeddings = {}
    for i, (name, side) in enumerate(task.embedding_sides(batch)):
        parts = []
        for half in (0, 1):
            rows = {k: v[half * 8 : (half + 1) * 8] for k, v in side.items()}
            for start, chunk in split_rows(rows, 3):
                torch.manual_seed(gradcache.chunk_seed(SEED, i, half * 8 + start))
                parts.append(encoder.embed(chunk))
        embeddings[name] = torch.cat(parts)
    return embeddings
