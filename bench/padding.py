"""Share of padded tokens in training batches, before and after packing / length grouping.

Builds the batches exactly as the training loop does (the stage's task, `batch_indices`, `collate`)
for the first --steps steps of each stage, without running the model, and counts padding:
MNTP one text per row vs packed blocks; SimCSE and supervised random batches vs length-grouped.

    python bench/padding.py --data-dir ../shared/data      # a few seconds; writes bench/results/padding-*.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from lm2vec.core.encoder import Encoder
from lm2vec.io import write_json_atomic
from lm2vec.training.objectives import OBJECTIVES
from lm2vec.training.order import batch_indices
from lm2vec.training.recipe import StageConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402


def padding_share(encoder: Encoder, stage: StageConfig, steps: int) -> float:
    """Padded / all tokens over the first `steps` batches of `stage` (1 process, no accumulation)."""
    encoder.config.max_length = stage.max_length  # as the training loop's encoder has it
    task = OBJECTIVES[stage.objective](stage, encoder, None)
    examples = task.load_examples()
    lengths = task.lengths(examples) if stage.group_by_length else None
    real = total = 0
    for step in range(steps):
        indices = batch_indices(len(examples), step, 0, stage, 0, 1, lengths)
        batch = task.collate([examples[i] for i in indices], torch.Generator().manual_seed(step))
        sides = [batch] if "attention_mask" in batch else [v for v in batch.values() if isinstance(v, dict)]
        real += sum(int(side["attention_mask"].sum()) for side in sides)
        total += sum(side["attention_mask"].numel() for side in sides)
    return 1 - real / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lm2vec.core.models import resolve_model_path

    path = resolve_model_path(args.model)
    config = AutoConfig.from_pretrained(path)
    config.num_hidden_layers = 1  # the model never runs; only its tokenizer and vocabulary size matter
    encoder = Encoder(AutoModel.from_config(config), AutoTokenizer.from_pretrained(path))
    sweep_args = argparse.Namespace(data_dir=args.data_dir, corpus=None, simcse_corpus=None, triplets=None,
                                    dev=None, dev_limit=None)
    rows = []
    for settings, flag in ((sweep.MNTP, "pack"), (sweep.SIMCSE, "group_by_length"),
                           (sweep._with(sweep.SIMCSE, max_length=64), "group_by_length"),
                           (sweep.SUPERVISED, "group_by_length")):
        stage = sweep.build_stage({**settings, "eval_every": 0}, sweep_args)
        before = padding_share(encoder, StageConfig(**{**stage.__dict__, flag: False, "lora": {}}), args.steps)
        after = padding_share(encoder, stage, args.steps)
        rows.append({"stage": stage.objective, "batch": stage.batch_size, "max_length": stage.max_length,
                     "change": flag, "padding_before": before, "padding_after": after})
        print(f"{stage.objective:10} batch {stage.batch_size:3} x {stage.max_length:3}  {flag:16} "
              f"padding {100 * before:5.1f}% -> {100 * after:5.1f}%", flush=True)
    date = datetime.date.today().isoformat()
    write_json_atomic(Path("bench/results") / f"padding-{args.model}-{date}.json",
                      {"date": date, "model": args.model, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
