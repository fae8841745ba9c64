"""Per-step time and peak memory of the ORIGINAL llm2vec 0.2.3 training paths (MNTP and SimCSE).

Runs under the reference venv (/tmp/llm2vec-ref, see bench/llm2vec_compat.py). The setup follows
llm2vec's experiments/run_mntp.py and experiments/run_simcse.py with their train_configs, minus the
HF Trainer (a plain loop does what Trainer does per step: collate, forward, backward, clip to norm
1.0, AdamW step). CPU-only differences from the configs: float32 and sdpa instead of bfloat16 and
flash_attention_2; gradient checkpointing (on in all configs) is opt-in with --gradient-checkpointing.

    /tmp/llm2vec-ref/bin/python bench/llm2vec_ref_train.py --model-dir /tmp/smol-prepared \
        --objective mntp --texts /work/shared/data/corpora/wiki1m_for_simcse/wiki1m_for_simcse.txt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from llm2vec import LLM2Vec
from llm2vec.loss.utils import load_loss
from llm2vec.models import GemmaBiForMNTP, LlamaBiForMNTP, MistralBiForMNTP, Qwen2BiForMNTP
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoTokenizer, DataCollatorForLanguageModeling, set_seed

MNTP_CLASSES = {"LlamaConfig": LlamaBiForMNTP, "MistralConfig": MistralBiForMNTP,
                "GemmaConfig": GemmaBiForMNTP, "Qwen2Config": Qwen2BiForMNTP}
# initialize_peft() in both experiment scripts: these modules, alpha = 2 * r, no bias.
LORA_MODULES = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--objective", required=True, choices=["mntp", "simcse"])
    p.add_argument("--texts", required=True, help="one sentence per line (a truncated last line is dropped)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps to run; the first is warm-up, not timed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--mlm-probability", type=float, default=0.2)
    p.add_argument("--simcse-dropout", type=float, default=0.3)
    p.add_argument("--loss-scale", type=float, default=20.0)
    p.add_argument("--no-pack", action="store_true",
                   help="simcse: one sentence per row as Wiki1M does (short rows), instead of packing "
                        "consecutive sentences so every row fills --seq-len tokens")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--output", default=None, help="JSON result path (default: print only)")
    return p.parse_args(argv)


def read_sentences(path: str) -> list[str]:
    """Lines of the file; the last one is dropped unless the file ends with a newline (truncated shard)."""
    raw = Path(path).read_text(encoding="utf-8")
    lines = raw.splitlines()
    if not raw.endswith("\n"):
        lines = lines[:-1]
    return [ln.strip() for ln in lines if ln.strip()]


def initialize_peft(model, r: int):
    """Same LoraConfig as initialize_peft() in run_mntp.py / run_simcse.py (dropout 0.05)."""
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_MODULES, lora_dropout=0.05,
                        bias="none", task_type=None)
    return get_peft_model(model, config)


def load_tokenizer(model_dir: str):
    """As run_mntp.py: mask_token_type "blank" ("_") when there is no mask token, pad = eos."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.mask_token is None:
        tok.mask_token = "_"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def mntp_blocks(tok, sentences: list[str], seq_len: int, n_blocks: int) -> list[dict]:
    """run_mntp.py's group_texts: tokenize, concatenate, cut into seq_len chunks (no padding)."""
    ids, special = [], []
    for s in sentences:
        enc = tok(s, return_special_tokens_mask=True)
        ids += enc["input_ids"]
        special += enc["special_tokens_mask"]
        if len(ids) >= seq_len * n_blocks:
            break
    return [{"input_ids": ids[i:i + seq_len], "attention_mask": [1] * seq_len,
             "special_tokens_mask": special[i:i + seq_len]}
            for i in range(0, seq_len * n_blocks, seq_len)]


def build_mntp(args):
    """LlamaBiForMNTP (etc.) with LoRA on the inner bidirectional model, as run_mntp.py does."""
    tok = load_tokenizer(args.model_dir)
    config = AutoConfig.from_pretrained(args.model_dir)
    model = MNTP_CLASSES[type(config).__name__].from_pretrained(
        args.model_dir, config=config, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.model = initialize_peft(model.model, args.lora_r)
    collator = DataCollatorForLanguageModeling(tokenizer=tok, mlm_probability=args.mlm_probability)
    blocks = mntp_blocks(tok, read_sentences(args.texts), args.seq_len, args.batch_size * args.steps)
    batches = [blocks[i:i + args.batch_size] for i in range(0, len(blocks), args.batch_size)]

    def step_loss(examples):
        # LlamaForCausalLM.forward with labels: full-vocab logits, logits[:, :-1] vs labels[:, 1:].
        return model(**collator(examples)).loss
    return model, batches, step_loss, 5e-5  # lr: TrainingArguments default (configs set none)


def pack_sentences(tok, sentences: list[str], seq_len: int, n_rows: int) -> list[str]:
    """Join consecutive sentences until a row has >= seq_len tokens (llm2vec truncates to seq_len)."""
    rows, cur, n = [], [], 0
    for s in sentences:
        cur.append(s)
        n += len(tok(" " + s, add_special_tokens=False)["input_ids"])
        if n >= seq_len:
            rows.append(" ".join(cur))
            cur, n = [], 0
            if len(rows) == n_rows:
                break
    return rows


def build_simcse(args):
    """LLM2Vec (bidirectional, mean) + LoRA, attention dropout 0.3, HardNegativeNLLLoss(scale 20)."""
    model = LLM2Vec.from_pretrained(args.model_dir, enable_bidirectional=True, pooling_mode="mean",
                                    max_length=args.seq_len, torch_dtype=torch.float32,
                                    attn_implementation="sdpa", attention_dropout=args.simcse_dropout)
    model.model = initialize_peft(model.model, args.lora_r)
    loss_fn = load_loss("HardNegativeNLLLoss", scale=args.loss_scale)
    sentences, n = read_sentences(args.texts), args.batch_size * args.steps
    rows = sentences[:n] if args.no_pack else pack_sentences(model.tokenizer, sentences, args.seq_len, n)
    batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def step_loss(texts):
        # DefaultCollator + SimCSETrainer.compute_loss: Wiki1M gives [text, text], no instruction.
        features = [model.tokenize(texts), model.tokenize(texts)]
        return loss_fn(model(features[0]), model(features[1]))
    return model, batches, step_loss, 3e-5  # lr from train_configs/simcse/*.json


def train_steps(model, batches, step_loss, lr: float, grad_ckpt: bool) -> dict[str, list[float]]:
    """One Trainer-like step per batch: loss, backward, clip (max_grad_norm 1.0), AdamW, zero_grad.

    Also records process CPU seconds per step: CPU/wall well below --threads means other processes
    competed for the cores and the wall times are inflated."""
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    times, cpu, losses = [], [], []
    for i, batch in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(loss.item())
        print(f"step {i}: {times[-1]:.2f} s (cpu {cpu[-1]:.1f} s)  loss {losses[-1]:.4f}", flush=True)
    return {"times": times, "cpu": cpu, "losses": losses}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    set_seed(42)
    build = build_mntp if args.objective == "mntp" else build_simcse
    model, batches, step_loss, lr = build(args)
    rss_after_load = peak_rss_mb()
    load_before = os.getloadavg()[0]
    run = train_steps(model, batches, step_loss, lr, args.gradient_checkpointing)
    times, timed = run["times"], run["times"][1:] or run["times"]
    result = {"objective": args.objective, "model_dir": args.model_dir, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "steps": len(times), "timed_steps": len(timed),
              "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing,
              "packed_rows": args.objective == "mntp" or not args.no_pack,
              "step_times_s": [round(t, 3) for t in times], "step_cpu_s": [round(c, 2) for c in run["cpu"]],
              "min_step_s": round(min(timed), 3), "mean_step_s": round(statistics.mean(timed), 3),
              "median_step_s": round(statistics.median(timed), 3),
              "steps_per_s": round(1 / statistics.mean(timed), 4), "losses": [round(x, 4) for x in run["losses"]],
              "cpu_per_wall": round(sum(run["cpu"][1:] or run["cpu"]) / sum(timed), 2),
              "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "peak_rss_after_load_mb": rss_after_load, "peak_rss_mb": peak_rss_mb(),
              "llm2vec": "0.2.3", "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
