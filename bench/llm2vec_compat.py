"""Bridge to the original llm2vec 0.2.3, which runs in its own virtual environment.

llm2vec 0.2.3 only works with transformers 4.43-4.44, while lm2vec targets transformers 5, so the
reference runs in a separate venv (see /work/shared/NOTES.md). This module runs under OUR venv and
uses only the standard library:

* ``prepare_for_llm2vec(src, dst)`` rewrites a model directory saved by transformers 5 so that
  transformers 4.44 can read it (weights are symlinked, never copied or changed);
* ``run_reference(args)`` runs a script with the reference interpreter.

Usage: ``python bench/llm2vec_compat.py SRC_DIR DST_DIR``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REF_PYTHON_ENV = "LLM2VEC_REF_PYTHON"
DEFAULT_REF_PYTHON = "/tmp/llm2vec-ref/bin/python"
VENV_COMMAND = (
    "python3 -m venv /tmp/llm2vec-ref && /tmp/llm2vec-ref/bin/pip install torch==2.13.0 "
    "transformers==4.44.2 peft==0.12.0 accelerate scikit-learn && "
    "/tmp/llm2vec-ref/bin/pip install --no-deps llm2vec==0.2.3"
)
# Files we rewrite; everything else in the source directory is symlinked unchanged.
EDITED = ("config.json", "tokenizer_config.json", "tokenizer.json")


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)


def _fix_config(cfg: dict) -> dict:
    """transformers 5 nests rope_theta under rope_parameters; 4.44 reads it from the top level."""
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    return cfg


def _fix_tokenizer_config(cfg: dict) -> dict:
    """transformers 5 writes tokenizer_class "TokenizersBackend", a class 4.44 does not know."""
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    return cfg


def _fix_tokenizer(tok: dict) -> dict:
    """Newer `tokenizers` saves BPE merges as [a, b] pairs; the one pinned by 4.44 wants "a b"."""
    merges = tok.get("model", {}).get("merges")
    if merges:
        tok["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
    return tok


def prepare_for_llm2vec(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Create DST_DIR: symlinks to SRC_DIR's files plus edited copies of the three JSON files."""
    src, dst = Path(src_dir).resolve(), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if item.name not in EDITED:
            target.symlink_to(item)
    fixers = {"config.json": _fix_config, "tokenizer_config.json": _fix_tokenizer_config,
              "tokenizer.json": _fix_tokenizer}
    for name, fix in fixers.items():
        if (src / name).exists():
            _write_json(dst / name, fix(_read_json(src / name)))
    return dst


def reference_python() -> str:
    """Path of the reference interpreter; fails with the venv creation command if it is missing."""
    python = os.environ.get(REF_PYTHON_ENV, DEFAULT_REF_PYTHON)
    if not Path(python).exists():
        raise FileNotFoundError(
            f"llm2vec reference interpreter not found at {python} (override with ${REF_PYTHON_ENV}).\n"
            f"Create the reference venv with:\n  {VENV_COMMAND}"
        )
    return python


def run_reference(script_args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``<reference python> *script_args`` (e.g. a bench/llm2vec_ref_*.py script and its flags)."""
    return subprocess.run([reference_python(), *script_args], check=check, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    print(prepare_for_llm2vec(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
