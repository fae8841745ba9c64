"""The merged export: plain safetensors + tokenizer + lm2vec_config.json + model card, for serving
engines and plain transformers (config.json says `"is_causal": false`, see export/__init__.py, plus the
flag each serving engine reads for the architecture, see export/engines.py).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

from lm2vec.core.bidirectional import is_bidirectional
from lm2vec.core.encoder import Encoder, EncoderConfig
from lm2vec.export.common import (
    PROBE_TEXTS,
    ExportError,
    check_close,
    check_exportable,
    probe_vectors,
    save_hf,
    staged,
    write_lm2vec_config,
)
from lm2vec.export.engines import write_engine_flags
from lm2vec.export.model_card import write_model_card


def export_merged(
    encoder: Encoder, output: str | Path, eval_results: dict | None = None, verify: bool = True
) -> float | None:
    """Plain safetensors + tokenizer + lm2vec_config.json + card, for serving engines and transformers."""
    check_exportable(encoder, "merged")
    output = Path(output)
    with staged(output) as staging:
        save_hf(encoder, staging)
        write_engine_flags(staging, encoder.model)
        write_lm2vec_config(encoder, staging)
        write_model_card(staging, encoder, output, fmt="merged", eval_results=eval_results)
        worst = verify_merged(encoder, staging) if verify else None
    return worst


def verify_merged(encoder: Encoder, folder: Path) -> float:
    """Reload with plain AutoModel (no lm2vec switch): it must be bidirectional and give our vectors.

    An architecture that is causal under sdpa from config alone is retried with eager attention and
    reported with a warning, since engines must then be told to use eager attention."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    if not is_bidirectional(model):
        model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
        if not is_bidirectional(model):
            raise ExportError(f"'{model.config.model_type}' loads causal from config.json alone")
        warnings.warn(
            f"'{model.config.model_type}' is bidirectional from config.json only with eager attention: "
            "load it with attn_implementation='eager'",
            stacklevel=3,
        )
    settings = {**asdict(encoder.config), "bidirectional": False, "padding_side": "right"}  # no flag flipping
    plain = Encoder(model, AutoTokenizer.from_pretrained(folder), EncoderConfig(**settings))
    return check_close(probe_vectors(encoder), probe_vectors(plain, len(PROBE_TEXTS)), "the merged export")
