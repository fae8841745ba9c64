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
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from torch import nn

from lm2vec.core.bidirectional import is_bidirectional
from lm2vec.core.encoder import CONFIG_NAME, Encoder, EncoderConfig
from lm2vec.core.tokenization import format_prefix
from lm2vec.export.model_card import find_eval_results, write_model_card
from lm2vec.io import replace_dir, staging_dir

FORMATS = ("sentence-transformers", "merged")
ST_POOLING = {"mean": "mean", "weighted_mean": "weightedmean", "last": "lasttoken", "first": "cls"}
TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
MIN_COSINE = 0.9999
PROBE_TEXTS = [
    "A man is playing a guitar on the stage.",
    "Stock prices fell sharply in early trading after the report was published.",
    "cats",
    "The committee postponed its decision until the next meeting, citing incomplete data from two regions.",
]


class ExportError(RuntimeError):
    """The exported folder does not reproduce the encoder (and was not written)."""


def export(
    model: str,
    output: str | Path,
    fmt: str,
    prompts: dict[str, str] | None = None,
    eval_results: str | Path | None = None,
    verify: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
) -> float | None:
    """Load MODEL (adapters merged) on the CPU and write it in `fmt`; returns the verified min cosine."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_output_folder(Path(output), overwrite)
    encoder = Encoder.from_pretrained(model, merge_adapter=True, device="cpu", dtype=dtype or "float32")
    results = json.loads(Path(eval_results).read_text()) if eval_results else find_eval_results(Path(model))
    if fmt == "merged":
        return export_merged(encoder, output, eval_results=results, verify=verify)
    return export_sentence_transformers(encoder, output, prompts, eval_results=results, verify=verify)


def check_output_folder(output: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder or (with `overwrite`) an earlier export.

    The export swaps in a whole new folder, so every file already in `output` would be deleted:
    never do that to files lm2vec did not write."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir():
        raise ValueError(f"{output} is a file; give a folder to export into")
    if not overwrite:
        raise ValueError(f"{output} already exists and is not empty; pass --overwrite to replace an earlier export")
    if not (output / CONFIG_NAME).is_file():
        raise ValueError(f"{output} holds files that are not an lm2vec export (no {CONFIG_NAME}); exporting there "
                         "would delete them, so choose a new or empty folder")


def plain_model(encoder: Encoder) -> nn.Module:
    """The backbone with any LoRA adapter folded in (peft's merge; the vectors do not change)."""
    model = encoder.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        encoder.model = model
    return model


def save_hf(encoder: Encoder, folder: Path) -> None:
    """Weights + tokenizer as transformers saves them; right padding so default position ids match ours."""
    plain_model(encoder).save_pretrained(folder)
    tokenizer = encoder.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.padding_side = side


def _write_lm2vec_config(encoder: Encoder, folder: Path) -> None:
    """lm2vec's settings beside the weights, so `Encoder.from_pretrained(export)` also works."""
    config = replace(encoder.config, padding_side="right")
    (folder / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _check_close(reference: np.ndarray, exported: np.ndarray, what: str) -> float:
    worst = float(cosines(reference, exported).min())
    if not worst >= MIN_COSINE:
        raise ExportError(
            f"{what} gives different vectors from lm2vec (min cosine {worst:.6f} < {MIN_COSINE})"
        )
    return worst


def _staged(output: Path):
    """A fresh folder beside `output` (same filesystem, so the final rename is atomic)."""
    return staging_dir(output, tag="export")


def export_merged(
    encoder: Encoder, output: str | Path, eval_results: dict | None = None, verify: bool = True
) -> float | None:
    """Plain safetensors + tokenizer + lm2vec_config.json + card, for serving engines and transformers."""
    output = Path(output)
    staging = _staged(output)
    try:
        save_hf(encoder, staging)
        _write_lm2vec_config(encoder, staging)
        write_model_card(staging, encoder, output, fmt="merged", eval_results=eval_results)
        worst = verify_merged(encoder, staging) if verify else None
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
    return _check_close(_probe_vectors(encoder), _probe_vectors(plain, len(PROBE_TEXTS)), "the merged export")


def _probe_vectors(encoder: Encoder, batch_size: int = 1) -> np.ndarray:
    """Probe vectors (batch_size 1: no padding; larger: padded batches), without truncation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encoder.encode(PROBE_TEXTS, batch_size=batch_size)


# ---- sentence-transformers ----------------------------------------------------------------------
def _st_prompts(encoder: Encoder, prompts: dict[str, str] | None) -> dict[str, str]:
    """Instructions as sentence-transformers prompts (the exact prefix lm2vec puts before the text).

    sentence-transformers skips len(tokenize(prompt)) tokens when pooling; lm2vec skips the tokens that
    end inside the prefix. They differ when the prefix's last token merges with the text's first
    (e.g. a trailing space in BPE vocabularies): warn, since pooled vectors then differ slightly."""
    out = {
        name: format_prefix(text, encoder.config.instruction_template)
        for name, text in (prompts or {}).items()
    }
    for name, prefix in out.items():
        [ours] = encoder.tokenize([(prompts[name], "hello world")])
        ids = encoder.tokenizer(prefix)["input_ids"]
        theirs = len(ids) - int(
            ids[-1] in encoder.tokenizer.all_special_ids
        )  # as sentence-transformers counts
        [plain] = encoder.tokenize([(None, "hello world")])
        if theirs != ours.skip or encoder.config.pooling == "weighted_mean" or plain.skip:
            warnings.warn(
                f"prompt {name!r}: sentence-transformers will pool slightly different tokens or weights "
                "than lm2vec for instructed inputs; plain inputs are unaffected",
                stacklevel=3,
            )
    return out


def _build_st(encoder: Encoder, folder: Path, prompts: dict[str, str], model_kwargs: dict):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer

    transformer = Transformer(
        str(folder),
        max_seq_length=encoder.config.max_length,
        modality_config=TEXT_ONLY,
        module_output_name="token_embeddings",
        model_kwargs=model_kwargs,
    )
    modules = [transformer, *_pooling_modules(encoder)]
    return SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu")


def _pooling_modules(encoder: Encoder) -> list:
    """Pooling, preceded by a zero weight for leading specials (BOS) that lm2vec attends to but never pools.

    sentence-transformers' Pooling has no "skip the first token"; its WordWeights module (weight per
    vocabulary entry, honoured by mean pooling) gives the BOS weight 0. That reproduces `mean` only:
    `weighted_mean` and `first` would count or pick the BOS, so those are refused (`last` never sees it)."""
    from sentence_transformers.sentence_transformer.modules import Pooling, WordWeights

    pooling = Pooling(
        encoder.embedding_dim, pooling_mode=ST_POOLING[encoder.config.pooling], include_prompt=False
    )
    [probe] = encoder.tokenize([(None, "hello world")])
    skipped = sorted(set(probe.ids[: probe.skip]))
    if not skipped or encoder.config.pooling == "last":
        return [pooling]
    if encoder.config.pooling != "mean":
        raise ExportError(
            f"pooling '{encoder.config.pooling}' without the leading special token cannot be expressed in "
            "sentence-transformers; use mean or last pooling, or pool_leading_specials=True"
        )
    tokenizer = encoder.tokenizer
    size = max(len(tokenizer), encoder.model.get_input_embeddings().num_embeddings)
    vocab = [
        token or f"<lm2vec-unused-{i}>"
        for i, token in enumerate(tokenizer.convert_ids_to_tokens(range(size)))
    ]
    weights = WordWeights(vocab, {vocab[i]: 0.0 for i in skipped}, unknown_word_weight=1.0)
    zeroed = (weights.emb_layer.weight == 0).nonzero()[:, 0].tolist()
    if zeroed != skipped:  # WordWeights also matches lower-cased strings: never silently drop real tokens
        raise ExportError(f"cannot give only token ids {skipped} zero weight (also hits {zeroed})")
    return [weights, pooling]


def _bidirectional_st(encoder: Encoder, folder: Path, prompts: dict[str, str]) -> tuple[object, dict]:
    """A SentenceTransformer whose plainly loaded backbone is bidirectional: default attention, else eager."""
    for model_kwargs in ({}, {"attn_implementation": "eager"}):
        model = _build_st(encoder, folder, prompts, model_kwargs)
        if is_bidirectional(model[0].model):
            return model, model_kwargs
    model_type = encoder.model.config.model_type
    raise ExportError(
        f"'{model_type}' stays causal when loaded by sentence-transformers even with "
        "is_causal=false and eager attention; this architecture cannot be exported this way"
    )


def export_sentence_transformers(
    encoder: Encoder,
    output: str | Path,
    prompts: dict[str, str] | None = None,
    eval_results: dict | None = None,
    verify: bool = True,
) -> float | None:
    """A folder that `SentenceTransformer(output)` loads without lm2vec: weights, Pooling, prompts, card."""
    output = Path(output)
    staging = _staged(output)
    try:
        save_hf(encoder, staging / "hf")
        model, model_kwargs = _bidirectional_st(encoder, staging / "hf", _st_prompts(encoder, prompts))
        folder = staging / "st"
        model.save(str(folder), create_model_card=False)
        del model
        if model_kwargs:  # sentence-transformers does not save these itself; it reads them back on load
            _update_json(folder / "sentence_bert_config.json", {"model_kwargs": model_kwargs})
        _write_lm2vec_config(encoder, folder)
        write_model_card(folder, encoder, output, fmt="sentence-transformers", eval_results=eval_results)
        worst = verify_sentence_transformers(encoder, folder) if verify else None
        replace_dir(folder, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return worst


def _update_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2) + "\n")


def verify_sentence_transformers(encoder: Encoder, folder: Path) -> float:
    """Reload the folder as sentence-transformers would and compare with lm2vec on probe texts."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    exported = model.encode(PROBE_TEXTS, batch_size=len(PROBE_TEXTS), convert_to_numpy=True)  # padded batch
    return _check_close(_probe_vectors(encoder), exported, "the sentence-transformers export")
