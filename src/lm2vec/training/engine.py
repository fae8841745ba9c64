"""How the loop's processes train one model together: DDP or FSDP2 under torchrun / accelerate launch.

- `ddp` (torch.nn.parallel.DistributedDataParallel): every process holds the whole model; the gradients
  of the trainable weights are averaged in buckets, overlapped with the backward pass. DDP only sees
  parameters that require grad, so a frozen LoRA base costs no communication per step.
- `fsdp` (FSDP2 `fully_shard`, one unit per decoder layer, then the root): parameters, gradients and
  optimiser states are sharded over processes and each layer is gathered for its own forward and
  backward: for models whose weights and states do not fit one device. Its weights live in shards
  (DTensor), so checkpoints and the final save gather whole tensors first (`full`), and every process
  takes part in every forward, dev evaluation included (`sharded`).

Trainable weights outside the wrapped model (the encoder's extra modules: latent attention, the
contextual token's MLP; core/extras.py) are replicated in every process and averaged by `average`, one
all-reduce per step. FSDP does not take them: a recipe refuses extras with `distributed: fsdp`.

Either way the loop keeps its own data order (training/order.py: stateless in (seed, step, rank), which
is what makes a resumed run exact) and the gradient is the mean over processes; with the contrastive
loss's gather (objectives/contrastive.py) W processes x batch B then train what one process x W*B does.

A step may run several backward passes (grad_accum micro-batches, GradCache's chunks). Only the last
may synchronise: the others run under `accumulating()` (DDP `no_sync`, FSDP
`set_requires_gradient_sync(False)`), gradients add up locally and the last backward averages the
sum: one all-reduce per step. The context must cover the forward too (DDP prepares its reducer there).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Engine:
    """One process: nothing to wrap, nothing to synchronise."""

    sharded = False  # True: weights live in shards; every process must join forwards and gathers

    def __init__(self, world: int = 1) -> None:
        self.world = world

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        """Prepare `model`, the module the Encoder calls (with LoRA injected; before the optimiser is built)."""

    @contextlib.contextmanager
    def forwarding(self, encoder) -> Iterator[None]:
        """Within this block the encoder's forward passes go through the engine."""
        yield

    def accumulating(self) -> contextlib.AbstractContextManager:
        """Context for a forward + backward whose gradients must stay local (not the step's last)."""
        return contextlib.nullcontext()

    def average(self, params: list[torch.Tensor]) -> None:
        """Replace the gradients of `params`, trainable weights outside the wrapped model (the encoder's
        extra modules), by their mean over processes, as the engine does for the model's own: one
        all-reduce, after the step's last backward. One process: nothing to do."""
        if self.world == 1 or not params:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone()

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`tensors` as whole tensors (a collective under FSDP: every process must call it)."""
        return tensors

    def like(self, value: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """A whole tensor loaded from disk, laid out as `reference` (its shard under FSDP)."""
        return value


class DDPEngine(Engine):
    """DistributedDataParallel around the Encoder's model; the Encoder's forward goes through it in a step."""

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index or 0] if device.type == "cuda" else None
        # no buffer sync per forward: buffers (rotary tables) are equal everywhere, and dev evaluation runs
        # forwards on rank 0 alone, which a per-forward broadcast would deadlock. Newer torch names the
        # switch forward_sync_buffers (broadcast_buffers is deprecated there); older torch has only the latter.
        accepted = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
        self.wrapper = DistributedDataParallel(model, device_ids=ids, **{no_sync: False})

    @contextlib.contextmanager
    def forwarding(self, encoder) -> Iterator[None]:
        """Swap the wrapper in as `encoder.model` for the step: DDP's hooks need its forward, and the rest
        of the Encoder (dev evaluation, saving) keeps the plain model."""
        inner, encoder.model = encoder.model, self.wrapper
        try:
            yield
        finally:
            encoder.model = inner

    def accumulating(self) -> contextlib.AbstractContextManager:
        return self.wrapper.no_sync()


class FSDPEngine(Engine):
    """FSDP2: each decoder layer (the model's `_no_split_modules`) and then the root sharded in place."""

    sharded = True

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        from torch.distributed.fsdp import fully_shard

        self.model = model
        layers = layer_classes(model)
        units = [m for m in model.modules() if type(m).__name__ in layers]
        if not units:
            logger.warning("FSDP: no decoder layer classes found (%s); the whole model is one unit", layers)
        for module in units:  # each layer moves to `device` and is cut there, one at a time
            fully_shard(module)
        fully_shard(model)

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import DTensor

        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}

    def like(self, value: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not isinstance(reference, DTensor) or value.shape != reference.shape:
            return value  # e.g. AdamW's step count
        return distribute_tensor(value.to(reference.dtype), reference.device_mesh, reference.placements)


def layer_classes(model: nn.Module) -> set[str]:
    """Class names of the repeated blocks, as transformers declares them for device maps."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or ())


def make_engine(kind: str, world: int) -> Engine:
    """The engine for `kind` (ddp | fsdp) on `world` processes; one process needs none."""
    if world == 1:
        return Engine()
    return {"ddp": DDPEngine, "fsdp": FSDPEngine}[kind](world)
