"""Export an encoder where users already work: a sentence-transformers folder, or merged safetensors.

Both formats are plain Hugging Face weights (LoRA merged) whose config.json says `"is_causal": false`.
transformers 5 reads that flag when it builds attention masks (`masking_utils.create_causal_mask` falls
back to a padding-only mask), so a plain `AutoModel.from_pretrained` attends bidirectionally with no
lm2vec code and no remote code. The attention modules' own `is_causal` attribute is NOT saved (it is
reset to True on load); most architectures pass the config flag down to the kernel anyway, but a few
(StableLM with sdpa) read the module attribute when there is no padding and would silently turn
causal. So every export is checked with the real loader: unpadded inputs must be bidirectional, and
the reloaded folder must reproduce lm2vec's vectors. Where sdpa fails the check, the
sentence-transformers folder pins eager attention (`model_kwargs` in sentence_bert_config.json).
Serving engines that reimplement an architecture read their own flag; export/engines.py writes it.
The onnx and openvino formats are the sentence-transformers folder plus the backbone's graph, traced with
bidirectional attention and checked with its engine (export/graph.py).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from lm2vec.core.compute import compute_mode
from lm2vec.core.encoder import Encoder
from lm2vec.export.common import ExportError, check_output_folder, cosines
from lm2vec.export.graph import GRAPH_FILES, add_graph, missing_packages
from lm2vec.export.merged import export_merged
from lm2vec.export.model_card import find_eval_results
from lm2vec.export.sentence_transformers import export_sentence_transformers, to_sentence_transformer

__all__ = ["FORMATS", "ExportError", "check_output_folder", "cosines", "export", "export_merged",
           "export_sentence_transformers", "to_sentence_transformer"]


FORMATS = ("sentence-transformers", "merged", *GRAPH_FILES)  # onnx, openvino: a sentence-transformers folder + graph


def export(
    model: str,
    output: str | Path,
    fmt: str,
    prompts: dict[str, str] | None = None,
    eval_results: str | Path | None = None,
    verify: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
    default_prompt_name: str | None = None,
    model_kwargs: dict | None = None,
) -> float | None:
    """Load MODEL (adapters merged) on the CPU and write it in `fmt`; returns the verified min cosine.
    `model_kwargs` go to from_pretrained (revision, token, attn_implementation, ...)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if compute_mode(dtype):
        raise ValueError(f"dtype {dtype!r} is an inference mode, not a weights dtype: export in float32 and load "
                         f"the export with dtype={dtype!r}")
    if fmt in GRAPH_FILES and missing_packages(fmt):
        raise ImportError(f"--format {fmt} needs {', '.join(missing_packages(fmt))}: pip install 'lm2vec[{fmt}]'")
    check_output_folder(Path(output), overwrite)
    encoder = Encoder.from_pretrained(model, merge_adapter=True, device="cpu", dtype=dtype or "float32",
                                      model_kwargs=model_kwargs)
    results = json.loads(Path(eval_results).read_text()) if eval_results else find_eval_results(Path(model))
    if fmt == "merged":
        return export_merged(encoder, output, eval_results=results, verify=verify)
    graph = partial(add_graph, encoder, fmt=fmt, verify=verify) if fmt in GRAPH_FILES else None
    return export_sentence_transformers(encoder, output, prompts, eval_results=results, verify=verify,
                                        default_prompt_name=default_prompt_name, fmt=fmt, add_graph=graph)
