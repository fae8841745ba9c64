"""Why plain bfloat16 moves some vectors: per-layer comparison of bf16 variants against float32.

Runs ~50 real texts (the mixed set of bench/speed.py) one at a time (no padding) through SmolLM2 in
float32 and in variants that each round one thing, and compares every decoder layer's output (the
residual stream), the final normed states and the pooled mean with float32:

- linear-weights-bf16: the linear layers' weights rounded to bf16, all compute float32
- other-weights-bf16: the embeddings and norm weights rounded to bf16, all compute float32
- residual-bf16: float32 model, the residual stream rounded to bf16 after every layer
- bf16-matmul-all: bf16 matmuls in every layer; float32 residual stream, norms, attention, pooling
- bf16-matmul: lm2vec's fast mode: the same, with the first quarter of the layers all float32
- bfloat16: the whole model in bf16 (`dtype="bfloat16"`)

Also reports the massive activations of the float32 residual stream (largest |value|, its channels and
tokens). Writes bench/results/bf16-drift-<model>-<date>.json.

    OMP_NUM_THREADS=1 python bench/bf16_drift.py --n-texts 50
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import DATA, mixed_texts  # noqa: E402

from lm2vec import Encoder  # noqa: E402
from lm2vec.core.compute import to_bf16_matmul  # noqa: E402
from lm2vec.core.pooling import pool  # noqa: E402


def variants(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, round the residual stream after every layer)."""
    linear, other = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for name, p in linear.named_parameters():
            if name.endswith("proj.weight"):
                p.copy_(p.to(torch.bfloat16).float())
        for name, p in other.named_parameters():
            if not name.endswith("proj.weight"):
                p.copy_(p.to(torch.bfloat16).float())
    return {"linear-weights-bf16": (linear, False), "other-weights-bf16": (other, False),
            "residual-bf16": (model, True),
            "bf16-matmul-all": (to_bf16_matmul(copy.deepcopy(model), float32_layers=0), False),
            "bf16-matmul": (to_bf16_matmul(copy.deepcopy(model)), False),
            "bfloat16": (copy.deepcopy(model).to(torch.bfloat16), False)}


def run(model: torch.nn.Module, batch: dict, round_residual: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(each decoder layer's output (T, D), final states (T, D)) in float32, for one unpadded text."""
    layers, hooks = [], []

    def keep(_module, _inputs, output):
        state = output[0] if isinstance(output, tuple) else output
        if round_residual:
            state = state.to(torch.bfloat16).to(state.dtype)
        layers.append(state[0].float())
        return (state, *output[1:]) if isinstance(output, tuple) else state

    for layer in model.layers:
        hooks.append(layer.register_forward_hook(keep))
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    return layers, out[0].float()


def relative_error(a: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| over the pooled tokens."""
    return float((a[mask] - ref[mask]).norm() / ref[mask].norm())


def massive(states: list[torch.Tensor]) -> dict:
    """Where the float32 residual stream is largest: per layer max |value|, and its channel and token."""
    rows = []
    for index, s in enumerate(states):
        flat = int(s.abs().argmax())
        rows.append({"layer": index, "max_abs": float(s.abs().max()), "channel": flat % s.shape[1],
                     "token": flat // s.shape[1], "median_abs": float(s.abs().median())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n-texts", type=int, default=50)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts, counts = mixed_texts(DATA, 2000)  # the benchmark's 2,000 texts; the first n of them
    texts = texts[: args.n_texts]
    encoder = Encoder.from_pretrained(args.model, pooling="mean", max_length=args.max_length, dtype="float32")
    models = variants(encoder.model)
    per_layer = {name: [] for name in models}
    pooled = {name: [] for name in models}
    final_error = {name: [] for name in models}
    peaks = []
    with torch.inference_mode():
        for text in texts:
            batch = encoder.collate(encoder.tokenize([(None, text)]))
            mask = batch["pool_mask"][0] > 0
            ref_layers, ref_out = run(encoder.model, batch, False)
            ref_vec = pool(ref_out[None], batch["pool_mask"], "mean")[0]
            peaks.append(massive(ref_layers))
            for name, (model, round_residual) in models.items():
                layers, out = run(model, batch, round_residual)
                per_layer[name].append([relative_error(a, r, mask) for a, r in zip(layers, ref_layers)])
                final_error[name].append(relative_error(out, ref_out, mask))
                vec = pool(out[None], batch["pool_mask"], "mean")[0]
                pooled[name].append(float(torch.nn.functional.cosine_similarity(vec, ref_vec, dim=0)))
    report(args, texts, counts, per_layer, pooled, final_error, peaks)


def report(args, texts, counts, per_layer, pooled, final_error, peaks) -> None:
    """Print the summary table and write the JSON."""
    layers = len(next(iter(per_layer.values()))[0])
    marks = sorted({0, 1, 2, layers // 2, layers - 2, layers - 1})
    print(f"{'variant':20} {'min cos':>8} {'mean cos':>9} {'final rel err':>13}  residual rel. error at layers {marks}")
    summary = {}
    for name in per_layer:
        errors = np.array(per_layer[name]).mean(0)
        cos = np.array(pooled[name])
        summary[name] = {"pooled_cosine_min": float(cos.min()), "pooled_cosine_mean": float(cos.mean()),
                         "worst_text": texts[int(cos.argmin())][:200], "final_relative_error": float(np.mean(final_error[name])),
                         "residual_relative_error_by_layer": errors.tolist(), "pooled_cosines": cos.tolist()}
        print(f"{name:20} {cos.min():8.4f} {cos.mean():9.5f} {np.mean(final_error[name]):13.4f}  "
              + " ".join(f"{errors[i]:.4f}" for i in marks))
    max_abs = np.array([[row["max_abs"] for row in text] for text in peaks])
    median_abs = np.array([[row["median_abs"] for row in text] for text in peaks])
    channels = [row["channel"] for text in peaks for row in text[2:]]
    top = np.bincount(channels).argsort()[::-1][:3].tolist()
    tokens = [row["token"] for text in peaks for row in text[2:]]
    print(f"float32 residual stream: max |value| by layer {np.round(max_abs.mean(0)[marks], 1).tolist()} vs median "
          f"{np.round(median_abs.mean(0)[marks], 3).tolist()}; the peak sits in channels {top} "
          f"(token 0 in {100 * np.mean(np.array(tokens) == 0):.0f}% of layers >= 2)")
    payload = {"date": datetime.date.today().isoformat(), "model": args.model, "texts": counts,
               "settings": vars(args), "variants": summary,
               "massive_activations": {"max_abs_by_layer": max_abs.mean(0).tolist(),
                                       "median_abs_by_layer": median_abs.mean(0).tolist(), "top_channels": top,
                                       "share_of_peaks_at_token_0": float(np.mean(np.array(tokens) == 0))}}
    out = HERE / "results" / f"bf16-drift-{args.model}-{payload['date']}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
