"""Training checkpoints: adapter weights (and the encoder's trainable extra modules), optimizer and
scheduler state, step. Safetensors + JSON only.

A checkpoint directory is written under a temporary name and renamed into place, and `state.json`
(written last) carries `"complete": true`; a directory without it is half-written and never loaded.
No pickle: optimizer tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lm2vec.io import replace_dir, staging_dir, write_json_atomic, write_safetensors_atomic
from lm2vec.training.lora import load_trainable_state, trainable_state

logger = logging.getLogger(__name__)
STATE = "state.json"


def _same(tensors: dict) -> dict:
    return tensors


def _cpu(tensors: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer, full: Callable = _same) -> tuple[dict, list]:
    """Flatten optimizer state into named tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = full({f"{index}.{key}": value for index, entries in state["state"].items()
                    for key, value in entries.items()})
    return _cpu(tensors), state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, groups: list, like: Callable) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's numbering
    state: dict[int, dict] = {}
    for name, value in sorted(tensors.items()):  # sorted: every process lays out shards in one order
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = like(value, params[int(index)])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def checkpoint_tensors(model, optimizer, full: Callable = _same, extras=None) -> tuple[dict, dict, list]:
    """(trainable weights, optimizer tensors, param groups) as whole CPU tensors; the weights include the
    trained ones of `extras` (the encoder's extra modules). `full` gathers shards (FSDP: a collective, so
    every process calls this; only rank 0 then saves)."""
    return (_cpu(full(trainable_state(model, extras))), *_optimizer_tensors(optimizer, full))


def save_checkpoint(directory: Path, step: int, tensors: tuple[dict, dict, list], scheduler, info: dict) -> Path:
    """Write checkpoint `step` (the `checkpoint_tensors`) atomically under `directory/step-XXXXXXX`;
    `info` goes into state.json."""
    target = directory / f"step-{step:07d}"
    staging = staging_dir(target)
    weights, optimizer_tensors, groups = tensors
    try:
        save_file(weights, staging / "adapter.safetensors")
        save_file(optimizer_tensors, staging / "optimizer.safetensors")
        state = {"step": step, "param_groups": groups, "scheduler": scheduler.state_dict(), **info, "complete": True}
        (staging / STATE).write_text(json.dumps(state))
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_complete(path: Path) -> bool:
    """True for a checkpoint whose files are all there and whose state says it finished writing."""
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, ValueError):
        return False
    files = ("adapter.safetensors", "optimizer.safetensors")
    return bool(state.get("complete")) and all((path / f).is_file() for f in files)


def latest_checkpoint(directory: Path) -> Path | None:
    """Newest complete checkpoint; half-written ones are reported and skipped."""
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("step-*"), reverse=True):
        if is_complete(path):
            return path
        logger.warning("ignoring incomplete checkpoint %s", path)
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, extras=None, like: Callable | None = None) -> dict:
    """Restore adapter (and extra modules') weights, optimizer and scheduler from `path`; return its state.
    `like(tensor, reference)` lays a whole saved tensor out as the live one (its shard under FSDP)."""
    if not is_complete(path):
        raise ValueError(f"checkpoint {path} is incomplete or corrupt")
    like = like or (lambda value, reference: value)
    state = json.loads((path / STATE).read_text())
    live = trainable_state(model, extras)
    weights = load_file(path / "adapter.safetensors")
    load_trainable_state(model, {k: like(v, live.get(k)) for k, v in sorted(weights.items())}, extras)
    _restore_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["param_groups"], like)
    scheduler.load_state_dict(state["scheduler"])
    return state


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    complete = [p for p in sorted(directory.glob("step-*")) if is_complete(p)]
    for path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


class BestKeeper:
    """The trainable weights (LoRA and the encoder's extra modules) of the best dev score so far, on disk so
    that a resumed run keeps them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        info = directory / "best.json"
        state = json.loads(info.read_text()) if info.is_file() else {}
        self.step, self.score = state.get("step"), state.get("score")

    def offer(self, step: int, score: float, model, extras=None) -> bool:
        """Keep `model`'s adapter (and `extras`') weights if `score` beats the best so far; True if kept."""
        if self.score is not None and score <= self.score:
            return False
        tensors = _cpu(trainable_state(model, extras))
        self.directory.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(self.directory / "adapter.safetensors", tensors)
        write_json_atomic(self.directory / "best.json", {"step": step, "score": score})
        self.step, self.score = step, score
        return True

    def restore(self, model, extras=None) -> None:
        load_trainable_state(model, load_file(self.directory / "adapter.safetensors"), extras)

    def forget_after(self, step: int) -> None:
        """A resumed run replays the steps after its checkpoint: a best found there is found again."""
        if self.step is not None and self.step > step:
            self.clear()

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.step = self.score = None
