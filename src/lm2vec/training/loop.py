"""The one training loop: any objective, any model, one or many processes.

Per stage: load the previous stage's weights, make them bidirectional, add a fresh LoRA adapter,
train with AdamW under linear warmup and linear decay to zero at `max_steps`, checkpoint every
`save_every` steps, then save the adapter and the merged weights (the next stage's starting point).
On a bf16 base the next stage instead runs the earlier adapters unmerged and frozen on the original
base (bf16 rounding of merged weights would erase part of them; see `stack_frozen_adapters`).

The encoder's trainable extra modules (a latent-attention layer, a contextual token's MLP; see
core/extras.py) train beside the adapter: in the same optimiser, in float32, in every checkpoint and
in `keep_best`'s snapshot, and they are saved with the adapter and the merged encoder.

Reproducibility without saved RNG blobs: the data order and every random draw of step s are derived
from (seed, s, rank), so a run resumed from the checkpoint of step s replays exactly what an
uninterrupted run would have done. Launched with `torchrun` or `accelerate launch`, each process takes
its slice of every global batch; contrastive losses gather embeddings across processes, and DDP or FSDP
(training/engine.py, the recipe's `distributed`) averages the gradients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lm2vec.core.distributed import barrier, init_distributed, process_device
from lm2vec.core.encoder import default_device
from lm2vec.core.extras import save_extras
from lm2vec.core.loading import hub_kwargs
from lm2vec.core.models import resolve_model_path
from lm2vec.core.soft_bidirectional import annealed_weight, set_future_weight
from lm2vec.training import checkpoint as ckpt
from lm2vec.training.dev_eval import DevEvaluator
from lm2vec.training.engine import make_engine
from lm2vec.training.fused_lora import fuse_lora_layers
from lm2vec.training.gradcache import cached_backward
from lm2vec.training.lora import (
    attach_lora,
    merge_lora,
    prepare_full_finetune,
    stack_frozen_adapters,
    trainable_parameters,
)
from lm2vec.training.memory import keep_freed_memory
from lm2vec.training.objectives import OBJECTIVES
from lm2vec.training.objectives.simcse import restore_dropout, set_dropout
from lm2vec.training.order import batch_indices, step_generator, step_seed
from lm2vec.training.plots import plot_loss_curve
from lm2vec.training.precision import autocast_context, base_dtype, resolve_precision
from lm2vec.training.recipe import Recipe, StageConfig, dump_recipe
from lm2vec.training.stage_model import load_float32_base, load_stage_encoder, model_kwargs_for

logger = logging.getLogger(__name__)
DONE = "DONE"
# peft still calls a transformers property renamed in 5.x; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---- schedule -------------------------------------------------------------------------------------
def linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak rate, then linear decay that reaches 0 after the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- the loop ------------------------------------------------------------------------------------
class StageRunner:
    """Runs one stage end to end; `run()` returns the directory of the merged encoder."""

    def __init__(self, recipe: Recipe, stage: StageConfig, model_path: str, out_dir: Path, final_dir: Path,
                 resume: bool = False, device: str | None = None, earlier_adapters: list[Path] | None = None) -> None:
        """`earlier_adapters`: the adapters of this recipe's earlier stages, in order (each trained on
        the recipe's model plus the ones before it); `model_path` holds them merged."""
        self.recipe, self.stage, self.model_path = recipe, stage, model_path
        self.out_dir, self.final_dir, self.resume = out_dir, final_dir, resume
        self.rank, self.world = init_distributed()
        self.device = device or process_device() or default_device()
        self.precision = resolve_precision(stage.precision, self.device)
        self.full = stage.finetune == "full"
        if self.full and self.precision == "bf16":  # weights that train stay float32: bf16 comes from autocast
            self.precision = "bf16-autocast"
        self.engine = make_engine(recipe.distributed, self.world)
        # float32 and unquantised: the adapter merges into these very weights; otherwise it is merged
        # into a float32 reload, and a later stage stacks this one's adapter rather than its merged weights
        self.exact_base = base_dtype(self.precision) == torch.float32 and recipe.quantization is None
        self.stacked = [] if self.exact_base else list(earlier_adapters or [])
        self.order_cache: dict = {}
        self.best = ckpt.BestKeeper(out_dir / "best")

    def setup(self) -> None:
        stage = self.stage
        if torch.device(self.device).type == "cpu":
            keep_freed_memory()  # steps reuse the pages the last one freed instead of faulting them in
        self.encoder, lm_head = load_stage_encoder(self.model_path, stage, self.recipe, self.device,
                                                   base_dtype(self.precision), place=not self.engine.sharded,
                                                   weights=self.recipe.model if self.stacked else None)
        self.task = OBJECTIVES[stage.objective](stage, self.encoder, lm_head)
        self.examples = self.task.load_examples()
        self.lengths = self.task.lengths(self.examples) if stage.group_by_length else None
        self.dropout = set_dropout(self.encoder.model, attention=stage.attention_dropout,
                                   hidden=stage.hidden_dropout) if stage.objective != "mntp" else None
        torch.manual_seed(stage.seed)  # LoRA's initial weights: the same in every run and every process
        if self.full:
            self.peft = prepare_full_finetune(self.encoder.model)
        else:
            self.peft = attach_lora(self.encoder.model, stage.lora)  # LoRA weights in float32 whatever the base
            stack_frozen_adapters(self.peft, self.stacked)
            if torch.device(self.device).type == "cpu" and not self.engine.sharded:
                fuse_lora_layers(self.peft)  # one autograd node per LoRA layer: fewer passes over activations
        if stage.gradient_checkpointing:
            self.encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # the module the Encoder calls (peft injected LoRA into it); before the optimiser: FSDP swaps in shards
        self.engine.wrap(self.encoder.model, torch.device(self.device))
        self.extras = self.encoder.extras  # latent attention, contextual token: trained beside LoRA, in float32
        self.extra_params = trainable_parameters(self.extras)  # outside the wrapped model: averaged by hand
        self.params = trainable_parameters(self.peft) + self.extra_params
        self.optimizer = torch.optim.AdamW(self.params, lr=stage.lr, weight_decay=stage.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, stage.warmup_steps, stage.max_steps)
        # fp16 gradients underflow without loss scaling; every other precision runs it disabled (a no-op)
        self.scaler = torch.amp.GradScaler(self.encoder.device.type, enabled=self.precision == "fp16")
        self.dev = DevEvaluator(self.encoder, stage.eval_data, stage.eval_limit, stage.eval_instruction,
                                max_length=self.recipe.max_length, inference_mode=not self.engine.sharded,
                                ) if stage.eval_every and self._participates() else None
        self.peft.train()

    def _start_step(self) -> int:
        """0, or the step after the newest complete checkpoint when resuming."""
        latest = ckpt.latest_checkpoint(self.out_dir / "checkpoints") if self.resume else None
        if latest is None:
            _truncate_log(self.out_dir / "log.jsonl", -1)
            self.best.clear()
            return 0
        state = ckpt.load_checkpoint(latest, self.peft, self.optimizer, self.scheduler, self.extras,
                                     like=self.engine.like)
        _truncate_log(self.out_dir / "log.jsonl", state["step"])
        self.best.forget_after(state["step"])
        logger.warning("resuming stage %s from %s", self.stage.name, latest)
        return state["step"]

    def anneal_attention(self, step: int) -> None:
        """With `bidirectional_anneal_steps`, weight future tokens by step / N (0: causal), 1 from step N on."""
        if self.stage.bidirectional_anneal_steps:
            set_future_weight(self.encoder.model, annealed_weight(step, self.stage.bidirectional_anneal_steps))

    def train_step(self, step: int) -> tuple[float, int, int]:
        """One optimiser step (with accumulation); returns (loss, real tokens, padded tokens) of this process."""
        stage, generator = self.stage, step_generator(self.stage, step, self.rank)
        self.anneal_attention(step)
        total, tokens, padded = 0.0, 0, 0
        for micro in range(stage.grad_accum):
            indices = batch_indices(len(self.examples), step, micro, stage, self.rank, self.world,
                                    self.lengths, self.order_cache)
            batch = self.task.collate([self.examples[i] for i in indices], generator)
            tokens, padded = tokens + _count_tokens(batch), padded + _count_tokens(batch, padded=True)
            with (autocast_context(self.precision, self.encoder.device, self.peft, stage.max_length),
                  self.engine.forwarding(self.encoder)):
                loss = self._backward(batch, step, last=micro == stage.grad_accum - 1)
            total += loss.item() / self.scaler.get_scale() if self.scaler.is_enabled() else loss.item()
        self.engine.average(self.extra_params)  # the engine averages the wrapped model's gradients only
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)  # skips the step if fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens, padded

    def _backward(self, batch: dict, step: int, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch. Only the step's last backward synchronises gradients
        across processes (the engine averages the sum of all of them); returns the scaled loss."""
        stage = self.stage
        if stage.mini_batch_size:  # GradCache: the whole batch's negatives, a mini-batch's memory
            return cached_backward(self.encoder.embed, self.task.embedding_sides(batch),
                                   lambda e: self.scaler.scale(self.task.loss_from_embeddings(e, batch)),
                                   stage.mini_batch_size, step_seed(stage, step), self.rank,
                                   accumulate=self.engine.accumulating, sync=last)
        with contextlib.nullcontext() if last else self.engine.accumulating():
            loss = self.scaler.scale(self.task.loss(batch) / stage.grad_accum)
            loss.backward()
        return loss

    def _participates(self) -> bool:
        """Dev evaluation runs on rank 0, or on every process when the weights are sharded (FSDP)."""
        return self.rank == 0 or self.engine.sharded

    def run(self) -> Path:
        self.setup()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = self._start_step()
        elapsed = _last_elapsed(self.out_dir / "log.jsonl")
        if start == 0:
            self._evaluate(0, elapsed)
        bar = tqdm(range(start, self.stage.max_steps), initial=start, total=self.stage.max_steps,
                   desc=f"{self.stage.name}", disable=self.rank != 0)
        for step in bar:
            began = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            loss, tokens, padded = self.train_step(step)
            seconds = time.perf_counter() - began
            elapsed += seconds
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens * self.world / seconds:.0f}")
            record = {"step": step + 1, "loss": loss, "lr": lr, "step_time": seconds, "elapsed": elapsed,
                      "tokens_per_s": tokens * self.world / seconds, "padding": 1 - tokens / max(1, padded)}
            if self.stage.eval_every and ((step + 1) % self.stage.eval_every == 0 or step + 1 == self.stage.max_steps):
                record.update(self._evaluate(step + 1, elapsed, log=False))
            self._log(record)
            if (step + 1) % self.stage.save_every == 0 and step + 1 < self.stage.max_steps:
                self._checkpoint(step + 1)
        return self.finish()

    def _evaluate(self, step: int, elapsed: float, log: bool = True) -> dict:
        """Dev score of the current weights (rank 0, dropout off), kept if it is the best and `keep_best`."""
        if not self.stage.eval_every:
            return {}
        self.anneal_attention(step)  # scored with the attention of that step
        result = self._dev_score(step) if self.dev is not None else {}
        if log and result:
            self._log({"step": step, "elapsed": elapsed, **result})
        barrier(self.world)
        return result

    def _dev_score(self, step: int) -> dict:
        self.peft.eval()
        began = time.perf_counter()
        score = self.dev.score()
        self.peft.train()
        result = {"dev_spearman": score, "eval_time": time.perf_counter() - began}
        if self.stage.keep_best and self.best.offer(step, score, self.peft, self.extras):
            result["best"] = True
        if self.rank == 0:
            tqdm.write(f"{self.stage.name} step {step}: dev Spearman {100 * score:.2f}")
        return result

    def _checkpoint(self, step: int) -> None:
        tensors = (ckpt.checkpoint_tensors(self.peft, self.optimizer, self.engine.full, self.extras)
                   if self._participates() else None)
        if self.rank == 0:
            directory = self.out_dir / "checkpoints"
            ckpt.save_checkpoint(directory, step, tensors, self.scheduler, {"stage": self.stage.name})
            ckpt.prune_checkpoints(directory, self.stage.keep_checkpoints)
        barrier(self.world)

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def finish(self) -> Path:
        """Save the adapter and the merged float32 encoder (rank 0), the curves, and a DONE marker."""
        trained = self._gathered_weights()
        if self.rank == 0:
            if self.stage.keep_best and self.best.step is not None:
                self.best.restore(self.peft, self.extras)
                logger.warning("stage %s ends with the best dev weights (step %d)", self.stage.name, self.best.step)
            if self.dropout is not None:
                restore_dropout(self.encoder.model, self.dropout)
            self.anneal_attention(self.stage.max_steps)  # fully bidirectional, plain sdpa, before saving
            self.peft.eval()
            self.encoder.config.max_length = self.recipe.max_length
            self.encoder.config.training = {**self.encoder.config.training, self.stage.name: self._stage_record()}
            self._save_adapter(trained)
            self.encoder.model = self._merged_float32(trained)
            self.encoder.save_pretrained(self.final_dir)
            plot_loss_curve(self.out_dir / "log.jsonl", self.out_dir / "loss.png", title=self.stage.name)
            (self.out_dir / DONE).write_text(str(self.final_dir))
        barrier(self.world)
        return self.final_dir

    def _stage_record(self) -> dict:
        record = {**asdict(self.stage), "precision_used": self.precision}
        if self.stage.keep_best and self.best.step is not None:
            record["best_step"], record["best_dev_spearman"] = self.best.step, self.best.score
        return record

    def _gathered_weights(self) -> dict | None:
        """Under FSDP the trained weights as whole tensors by parameter name (a collective); else None."""
        if not self.engine.sharded:
            return None
        return self.engine.full({name: p.detach() for name, p in self.peft.named_parameters() if p.requires_grad})

    def _merged_float32(self, trained: dict | None = None) -> torch.nn.Module:
        """The adapter folded into float32 base weights. A bf16- or 4-bit-trained adapter is merged into
        the float32 weights it started from (reloaded), never into their rounded copy; so is a sharded
        (FSDP) one, whose whole weights only exist as `trained`."""
        if trained is None and self.full:
            return self.peft  # trained in place, in float32
        if trained is None and self.exact_base:
            return merge_lora(self.peft)
        from lm2vec.core.adapters import load_adapter

        base = load_float32_base(self.recipe, self.model_path)
        if self.full:
            base.load_state_dict(trained, strict=False)  # FSDP keeps the plain model's parameter names
            merged = base
        else:
            merged = load_adapter(base, self.out_dir / "adapter", merge=True)
        if hasattr(self.encoder.model.config, "is_causal"):  # saved as the fp32 path saves it
            merged.config.is_causal = self.encoder.model.config.is_causal
        return merged.to("cpu" if self.engine.sharded else self.device).eval()

    def _save_adapter(self, trained: dict | None = None) -> None:
        """Adapter dir loadable by Encoder.from_pretrained: LoRA weights + lm2vec config naming its base.
        A fully fine-tuned stage has no adapter: its saved encoder is the result."""
        if self.full:
            return
        adapter_dir = self.out_dir / "adapter"
        # not the stacked earlier adapters; under FSDP from the gathered whole tensors
        self.peft.save_pretrained(adapter_dir, selected_adapters=["default"], state_dict=trained)
        self.encoder.tokenizer.save_pretrained(adapter_dir)
        save_extras(self.extras, adapter_dir)
        base = resolve_model_path(self.model_path, **hub_kwargs(model_kwargs_for(self.recipe, self.model_path)))
        base = str(Path(base).resolve()) if Path(base).is_dir() else base  # a hub id stays one
        config = {**asdict(self.encoder.config), "base_model": base}
        (adapter_dir / "lm2vec_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _count_tokens(batch: dict, padded: bool = False) -> int:
    """Real tokens of a batch (all sides of a triplet batch); with `padded`, the padded size."""
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        return mask.numel() if padded else int(mask.sum())
    return sum(_count_tokens(side, padded) for side in batch.values() if isinstance(side, dict))


def _last_elapsed(path: Path) -> float:
    """Training seconds already spent (the last `elapsed` in the log), for a resumed run's time axis."""
    if not path.is_file():
        return 0.0
    times = [json.loads(line).get("elapsed", 0.0) for line in path.read_text().splitlines() if line.strip()]
    return times[-1] if times else 0.0


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep log lines up to `last_step` (a resumed run rewrites what the crash left after it)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def train(recipe: Recipe, output: str | Path, resume: bool = False, device: str | None = None) -> Path:
    """Run every stage of `recipe` in order into `output`; returns the final encoder directory."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, output / "recipe.yaml")
    model_path, adapters = recipe.model, []
    for index, stage in enumerate(recipe.stages, start=1):
        stage_dir = output / f"stage{index}-{stage.name}"
        last = index == len(recipe.stages)
        final_dir = output / "encoder" if last else stage_dir / "merged"
        if resume and (stage_dir / DONE).is_file() and final_dir.is_dir():
            logger.warning("stage %s already finished; skipping", stage.name)
        else:
            StageRunner(recipe, stage, model_path, stage_dir, final_dir, resume, device, adapters).run()
        model_path = str(final_dir)
        # a fully fine-tuned stage leaves no adapter: later stages start from its weights as they are
        adapters = [] if stage.finetune == "full" else [*adapters, stage_dir / "adapter"]
    return output / "encoder"
