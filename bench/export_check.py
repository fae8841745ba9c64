"""Check the exports of a real model: sentence-transformers and merged folders vs lm2vec's own vectors.

Exports MODEL (default smollm2-135m) both ways, then encodes real sentences (STSBenchmark test) with
lm2vec, with `SentenceTransformer(folder)` in a fresh interpreter that never imports lm2vec, and with
a plain `AutoModel` load of the merged folder. Prints cosines; writes bench/results/export-<date>.json.

    python bench/export_check.py [--model smollm2-135m] [--sentences 256]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import ROOT, sentence_pool

INSTRUCTION = "Retrieve semantically similar text:"
ST_SCRIPT = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
texts = json.load(open(sys.argv[2]))
plain = model.encode(texts, batch_size=32)
prompted = model.encode(texts, batch_size=32, prompt_name="sts")
assert "lm2vec" not in sys.modules
json.dump({"plain": plain.tolist(), "prompted": prompted.tolist(), "is_causal": model[0].model.config.is_causal,
           "module_is_causal": sorted({m.is_causal for m in model[0].model.modules() if hasattr(m, "is_causal")})},
          open(sys.argv[3], "w"))
"""


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def st_in_clean_process(folder: Path, texts_file: Path, out: Path) -> dict:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(out.parent), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-I", "-c", ST_SCRIPT, str(folder), str(texts_file), str(out)],
        env=env,
        cwd=out.parent,
        check=True,
    )
    return json.loads(out.read_text())


def merged_vectors(folder: Path, encoder, texts: list[str]) -> np.ndarray:
    """Plain transformers load (no lm2vec switch flipped) + lm2vec's pooling."""
    from dataclasses import asdict

    from transformers import AutoModel, AutoTokenizer

    from lm2vec import Encoder, EncoderConfig

    config = EncoderConfig(**{**asdict(encoder.config), "bidirectional": False})
    plain = Encoder(AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), config)
    return plain.encode(texts, batch_size=32)


def main() -> None:
    from lm2vec import Encoder
    from lm2vec.export import export_merged, export_sentence_transformers

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / f"export-{datetime.date.today()}.json"
    )
    args = parser.parse_args()
    texts = sentence_pool(args.sentences)
    encoder = Encoder.from_pretrained(args.model, device="cpu", dtype="float32")
    reference = encoder.encode(texts, batch_size=32)
    instructed = encoder.encode(texts, batch_size=32, instruction=INSTRUCTION)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        export_sentence_transformers(encoder, tmp / "st", prompts={"sts": INSTRUCTION})
        st_seconds = time.perf_counter() - started
        export_merged(encoder, tmp / "merged")
        (tmp / "texts.json").write_text(json.dumps(texts))
        st = st_in_clean_process(tmp / "st", tmp / "texts.json", tmp / "st_out.json")
        merged = merged_vectors(tmp / "merged", encoder, texts)
        st_config = json.loads((tmp / "st" / "sentence_bert_config.json").read_text())
    report = {
        "date": str(datetime.date.today()),
        "model": args.model,
        "sentences": len(texts),
        "source": "STSBenchmark sts-test.csv (unique sentences)",
        "export_seconds_st": round(st_seconds, 1),
        "sentence_transformers": {
            **cosine_summary(reference, np.array(st["plain"], dtype=np.float32)),
            "loaded_config_is_causal": st["is_causal"],
            "attention_module_is_causal_after_load": st["module_is_causal"],
            "model_kwargs": st_config.get("model_kwargs", {}),
        },
        "sentence_transformers_with_prompt": cosine_summary(
            instructed, np.array(st["prompted"], dtype=np.float32)
        ),
        "merged_plain_transformers": cosine_summary(reference, merged),
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
