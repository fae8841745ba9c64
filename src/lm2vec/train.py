"""The one training loop: any objective, any model, one or many processes.

Per stage: load the previous stage's weights, make them bidirectional, add a fresh LoRA adapter,
train with AdamW under linear warmup and linear decay to zero at `max_steps`, checkpoint every
`save_every` steps, then save the adapter and the merged weights (the next stage's starting point).

Reproducibility without saved RNG blobs: the data order and every random draw of step s are derived
from (seed, s, rank), so a run resumed from the checkpoint of step s replays exactly what an
uninterrupted run would have done. Launched with `torchrun`, each process takes its slice of every
global batch; contrastive losses gather embeddings across processes and gradients are averaged.
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
import torch.distributed as dist
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .adapters import attach_lora, merge_lora, trainable_parameters
from .config import Recipe, StageConfig, dump_recipe
from .distributed import barrier, init_distributed, process_device
from .encoder import Encoder, EncoderConfig, default_device, load_saved_config
from .models import resolve_model_path
from .objectives.simcse import restore_dropout, set_dropout
from .plots import plot_loss_curve
from .tasks import TASKS

logger = logging.getLogger(__name__)
DONE = "DONE"
# peft still calls a transformers property renamed in 5.x; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---- processes --------------------------------------------------------------------------------
def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """What DDP does: every process ends the step with the mean gradient over processes."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


# ---- data order and randomness ------------------------------------------------------------------
def batch_indices(n: int, step: int, micro: int, stage: StageConfig, rank: int, world: int) -> list[int]:
    """Indices of this process's share of micro-batch `micro` of `step`: a stateless function of
    (seed, step), walking one seeded permutation per epoch, so resuming replays the same order."""
    per_step = stage.batch_size * world * stage.grad_accum
    start = step * per_step + micro * stage.batch_size * world + rank * stage.batch_size
    out, cache = [], {}
    for flat in range(start, start + stage.batch_size):
        epoch = flat // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(stage.seed + epoch))
        out.append(int(cache[epoch][flat % n]))
    return out


def step_generator(stage: StageConfig, step: int, rank: int) -> torch.Generator:
    """Seed the global RNG (dropout) and return a generator (masking) for this step and process."""
    seed = (stage.seed * 1_000_003 + step * 7919 + rank) % (2**63)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


# ---- schedule and precision -----------------------------------------------------------------------
def linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak rate, then linear decay that reaches 0 after the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast where asked (auto: bf16 on a CUDA device that supports it, else none)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---- model per stage ------------------------------------------------------------------------------
def load_stage_encoder(model_path: str, stage: StageConfig, recipe: Recipe, device: str):
    """Encoder on the stage's starting weights (+ the LM head for MNTP), in float32 for training."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm_head = None
    if stage.objective == "mntp":
        full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        backbone, lm_head = full.base_model, full.get_output_embeddings()
        lm_head.requires_grad_(False)
    else:
        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
    history = load_saved_config(path).training  # earlier stages, when starting from one of our encoders
    config = EncoderConfig(pooling=recipe.pooling, bidirectional=recipe.bidirectional,
                           max_length=stage.max_length, base_model=recipe.model, training=dict(history))
    encoder = Encoder(backbone.to(device), tokenizer, config)
    if lm_head is not None:
        lm_head.to(device)
    return encoder, lm_head


# ---- the loop ------------------------------------------------------------------------------------
class StageRunner:
    """Runs one stage end to end; `run()` returns the directory of the merged encoder."""

    def __init__(self, recipe: Recipe, stage: StageConfig, model_path: str, out_dir: Path, final_dir: Path,
                 resume: bool = False, device: str | None = None) -> None:
        self.recipe, self.stage, self.model_path = recipe, stage, model_path
        self.out_dir, self.final_dir, self.resume = out_dir, final_dir, resume
        self.rank, self.world = init_distributed()
        self.device = device or process_device() or default_device()

    def setup(self) -> None:
        stage = self.stage
        self.encoder, lm_head = load_stage_encoder(self.model_path, stage, self.recipe, self.device)
        self.task = TASKS[stage.objective](stage, self.encoder, lm_head)
        self.examples = self.task.load_examples()
        self.dropout = set_dropout(self.encoder.model, attention=stage.attention_dropout,
                                   hidden=stage.hidden_dropout) if stage.objective != "mntp" else None
        torch.manual_seed(stage.seed)  # LoRA's initial weights: the same in every run and every process
        self.peft = attach_lora(self.encoder.model, stage.lora)
        if stage.gradient_checkpointing:
            self.encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = trainable_parameters(self.peft)
        self.optimizer = torch.optim.AdamW(self.params, lr=stage.lr, weight_decay=stage.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, stage.warmup_steps, stage.max_steps)
        self.peft.train()

    def _start_step(self) -> int:
        """0, or the step after the newest complete checkpoint when resuming."""
        latest = ckpt.latest_checkpoint(self.out_dir / "checkpoints") if self.resume else None
        if latest is None:
            _truncate_log(self.out_dir / "log.jsonl", 0)
            return 0
        state = ckpt.load_checkpoint(latest, self.peft, self.optimizer, self.scheduler)
        _truncate_log(self.out_dir / "log.jsonl", state["step"])
        logger.warning("resuming stage %s from %s", self.stage.name, latest)
        return state["step"]

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimiser step (with accumulation); returns (loss, tokens seen by this process)."""
        stage, generator = self.stage, step_generator(self.stage, step, self.rank)
        total, tokens = 0.0, 0
        for micro in range(stage.grad_accum):
            indices = batch_indices(len(self.examples), step, micro, stage, self.rank, self.world)
            batch = self.task.collate([self.examples[i] for i in indices], generator)
            tokens += _count_tokens(batch)
            with autocast_context(stage.precision, self.encoder.device):
                loss = self.task.loss(batch) / stage.grad_accum
            loss.backward()
            total += loss.item()
        average_gradients(self.params, self.world)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens

    def run(self) -> Path:
        self.setup()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = self._start_step()
        bar = tqdm(range(start, self.stage.max_steps), initial=start, total=self.stage.max_steps,
                   desc=f"{self.stage.name}", disable=self.rank != 0)
        for step in bar:
            began = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            loss, tokens = self.train_step(step)
            seconds = time.perf_counter() - began
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens * self.world / seconds:.0f}")
            self._log({"step": step + 1, "loss": loss, "lr": lr, "step_time": seconds,
                       "tokens_per_s": tokens * self.world / seconds})
            if (step + 1) % self.stage.save_every == 0 and step + 1 < self.stage.max_steps:
                self._checkpoint(step + 1)
        return self.finish()

    def _checkpoint(self, step: int) -> None:
        if self.rank == 0:
            directory = self.out_dir / "checkpoints"
            ckpt.save_checkpoint(directory, step, self.peft, self.optimizer, self.scheduler, {"stage": self.stage.name})
            ckpt.prune_checkpoints(directory, self.stage.keep_checkpoints)
        barrier(self.world)

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def finish(self) -> Path:
        """Save the adapter and the merged encoder (rank 0), the loss curve, and a DONE marker."""
        if self.rank == 0:
            if self.dropout is not None:
                restore_dropout(self.encoder.model, self.dropout)
            self.peft.eval()
            self.encoder.config.max_length = self.recipe.max_length
            self.encoder.config.training = {**self.encoder.config.training, self.stage.name: asdict(self.stage)}
            self._save_adapter()
            self.encoder.model = merge_lora(self.peft)
            self.encoder.save_pretrained(self.final_dir)
            plot_loss_curve(self.out_dir / "log.jsonl", self.out_dir / "loss.png", title=self.stage.name)
            (self.out_dir / DONE).write_text(str(self.final_dir))
        barrier(self.world)
        return self.final_dir

    def _save_adapter(self) -> None:
        """Adapter dir loadable by Encoder.from_pretrained: LoRA weights + lm2vec config naming its base."""
        adapter_dir = self.out_dir / "adapter"
        self.peft.save_pretrained(adapter_dir)
        self.encoder.tokenizer.save_pretrained(adapter_dir)
        config = {**asdict(self.encoder.config), "base_model": str(Path(resolve_model_path(self.model_path)).resolve())}
        (adapter_dir / "lm2vec_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _count_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return sum(_count_tokens(side) for side in batch.values())


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
    model_path = recipe.model
    for index, stage in enumerate(recipe.stages, start=1):
        stage_dir = output / f"stage{index}-{stage.name}"
        last = index == len(recipe.stages)
        final_dir = output / "encoder" if last else stage_dir / "merged"
        if resume and (stage_dir / DONE).is_file() and final_dir.is_dir():
            logger.warning("stage %s already finished; skipping", stage.name)
        else:
            StageRunner(recipe, stage, model_path, stage_dir, final_dir, resume, device).run()
        model_path = str(final_dir)
    return output / "encoder"
