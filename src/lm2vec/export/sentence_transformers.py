"""The sentence-transformers export: a folder `SentenceTransformer(path)` loads with no lm2vec code,
with the encoder's pooling, prompts for instructions, and eager attention pinned where sdpa would
turn causal (see export/__init__.py).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from lm2vec.core.bidirectional import is_bidirectional
from lm2vec.core.encoder import Encoder
from lm2vec.core.tokenization import format_prefix
from lm2vec.export.common import (
    PROBE_TEXTS,
    ExportError,
    check_close,
    probe_vectors,
    save_hf,
    staged,
    write_lm2vec_config,
)
from lm2vec.export.model_card import write_model_card
from lm2vec.io import replace_dir

ST_POOLING = {"mean": "mean", "weighted_mean": "weightedmean", "last": "lasttoken", "first": "cls"}

TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


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
    staging = staged(output)
    try:
        save_hf(encoder, staging / "hf")
        model, model_kwargs = _bidirectional_st(encoder, staging / "hf", _st_prompts(encoder, prompts))
        folder = staging / "st"
        model.save(str(folder), create_model_card=False)
        del model
        if model_kwargs:  # sentence-transformers does not save these itself; it reads them back on load
            _update_json(folder / "sentence_bert_config.json", {"model_kwargs": model_kwargs})
        write_lm2vec_config(encoder, folder)
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
    return check_close(probe_vectors(encoder), exported, "the sentence-transformers export")
