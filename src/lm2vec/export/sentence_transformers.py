"""The sentence-transformers route, live and on disk.

`Encoder.to_sentence_transformer()` wraps the encoder's own backbone (no copy, no weights on disk) in a
`SentenceTransformer` with the encoder's pooling, max length and instructions as named prompts. The
folder export saves that same live model, adds what other readers need (the legacy pooling keys that
text-embeddings-inference parses, the engines' attention flags, lm2vec's config, a card) and checks
that `SentenceTransformer(path)` loads it bidirectionally and gives lm2vec's vectors, pinning eager
attention where sdpa would turn causal (see export/__init__.py).

What sentence-transformers cannot reproduce exactly is refused: pooling modes it cannot express for
plain inputs always, prompts it would pool differently in the live route (the folder export keeps its
documented behaviour and warns, see docs/serving.md).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from torch import nn

from lm2vec.core.bidirectional import is_bidirectional
from lm2vec.core.encoder import Encoder
from lm2vec.core.tokenization import format_prefix
from lm2vec.export.common import (
    PROBE_TEXTS,
    ExportError,
    check_close,
    check_exportable,
    plain_model,
    probe_vectors,
    serving_tokenizer,
    staged,
    update_json,
    write_lm2vec_config,
)
from lm2vec.export.engines import write_engine_flags
from lm2vec.export.model_card import write_model_card

ST_POOLING = {"mean": "mean", "weighted_mean": "weightedmean", "last": "lasttoken", "first": "cls"}
# sentence-transformers' mode -> the boolean key older readers parse (text-embeddings-inference reads
# pooling_mode_cls_token, pooling_mode_mean_tokens and pooling_mode_lasttoken from 1_Pooling/config.json).
LEGACY_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
PROMPT_PROBE = "hello world"


def to_sentence_transformer(
    encoder: Encoder,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    strict: bool = True,
):
    """A live `SentenceTransformer` sharing the encoder's backbone: same weights, attention, pooling, max length.

    `prompts` maps names to instructions (`{"query": "Retrieve passages:"}`); each becomes the exact prefix
    lm2vec puts before a text, so `model.encode_query(texts)` equals `encoder.encode(texts, instruction=...)`.
    A prompt that sentence-transformers would pool differently raises ExportError unless `strict=False`
    (then it warns). Prompts passed ad hoc to `encode(prompt=...)` are not checked."""
    check_exportable(encoder, "sentence-transformers", live=True)  # echo and the extras: refused first
    named = st_prompts(encoder, prompts, strict)
    return _build(encoder, encoder.model, named, default_prompt_name)


def _build(encoder: Encoder, model: nn.Module, prompts: dict[str, str], default_prompt_name: str | None):
    from sentence_transformers import SentenceTransformer

    pooling = _pooling_modules(encoder)  # refuses what cannot be expressed before any work is done
    modules = [_live_transformer(encoder, model), *pooling]
    return SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                               similarity_fn_name="cosine", device=str(encoder.device))


def _live_transformer(encoder: Encoder, model: nn.Module):
    """sentence-transformers' Transformer module around `model` itself.

    Its constructor only loads weights from a path (huggingface/sentence-transformers#2329), so a subclass
    hands it our backbone in place of its weight loader, and the module then becomes a plain Transformer
    again (it saves, and reloads, as one). Only the config and the right-padding tokenizer, a few
    kilobytes, pass through a temporary folder."""
    from sentence_transformers.base.modules.transformer import Transformer

    class Adopting(Transformer):
        def _load_model(self, *args, **kwargs):
            return model

    with tempfile.TemporaryDirectory(prefix="lm2vec-st-") as folder:
        serving_tokenizer(encoder).save_pretrained(folder)
        model.config.save_pretrained(folder)
        module = Adopting(folder, max_seq_length=encoder.config.max_length, modality_config=TEXT_ONLY,
                          module_output_name="token_embeddings")
    module.__class__ = Transformer
    return module


def st_prompts(encoder: Encoder, prompts: dict[str, str] | None, strict: bool = True) -> dict[str, str]:
    """Instructions as sentence-transformers prompts: the exact prefix lm2vec puts before the text.

    sentence-transformers prepends the prompt and leaves len(tokenize(prompt)) tokens out of pooling;
    where that does not give lm2vec's vector (see `_prompt_problem`) raise, or warn if not `strict`."""
    out = {name: format_prefix(text, encoder.config.instruction_template) for name, text in (prompts or {}).items()}
    for name, prefix in out.items():
        problem = _prompt_problem(encoder, prompts[name], prefix)
        if problem and strict:
            raise ExportError(f"prompt {name!r}: {problem}, so its vectors would differ from lm2vec's; "
                              "pass strict=False to accept that, or use lm2vec (or its server) for instructions")
        if problem:
            warnings.warn(f"prompt {name!r}: {problem}; sentence-transformers will pool slightly different "
                          "tokens or weights than lm2vec for instructed inputs (plain inputs are unaffected)",
                          stacklevel=3)
    return out


def _prompt_problem(encoder: Encoder, instruction: str, prefix: str) -> str | None:
    """Why sentence-transformers would pool an input with this prompt differently from lm2vec, if it would."""
    if not prefix:
        return None
    pooling = encoder.config.pooling
    if pooling == "weighted_mean":
        return "with weighted_mean, sentence-transformers keeps the position weights the text has after the prompt"
    [plain] = encoder.tokenize([(None, PROMPT_PROBE)])
    if plain.skip and pooling == "mean":
        return "the zero weight for the leading special token leaves the prompt's tokens in the mean's divisor"
    [ours] = encoder.tokenize([(instruction, PROMPT_PROBE)])
    ids = encoder.tokenizer(prefix)["input_ids"]
    theirs = len(ids) - int(ids[-1] in encoder.tokenizer.all_special_ids)  # as sentence-transformers counts
    if theirs != ours.skip:
        return (f"sentence-transformers leaves {theirs} prompt tokens out of pooling where lm2vec leaves "
                f"{ours.skip} (the prompt's last token merges with the text's first)")
    return None


def _pooling_modules(encoder: Encoder) -> list:
    """Pooling, preceded by a zero weight for leading specials (BOS) that lm2vec attends to but never pools.

    sentence-transformers' Pooling has no "skip the first token"; its WordWeights module (weight per
    vocabulary entry, honoured by mean pooling) gives the BOS weight 0. That reproduces `mean` only:
    `weighted_mean` and `first` would count or pick the BOS, so those are refused (`last` never sees it)."""
    from sentence_transformers.sentence_transformer.modules import Pooling, WordWeights

    pooling = Pooling(encoder.embedding_dim, pooling_mode=ST_POOLING[encoder.config.pooling], include_prompt=False)
    [probe] = encoder.tokenize([(None, PROMPT_PROBE)])
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
    vocab = [token or f"<lm2vec-unused-{i}>" for i, token in enumerate(tokenizer.convert_ids_to_tokens(range(size)))]
    weights = WordWeights(vocab, {vocab[i]: 0.0 for i in skipped}, unknown_word_weight=1.0)
    zeroed = (weights.emb_layer.weight == 0).nonzero()[:, 0].tolist()
    if zeroed != skipped:  # WordWeights also matches lower-cased strings: never silently drop real tokens
        raise ExportError(f"cannot give only token ids {skipped} zero weight (also hits {zeroed})")
    return [weights, pooling]


def export_sentence_transformers(
    encoder: Encoder,
    output: str | Path,
    prompts: dict[str, str] | None = None,
    eval_results: dict | None = None,
    verify: bool = True,
    default_prompt_name: str | None = None,
    fmt: str = "sentence-transformers",
    add_graph: Callable[[Path], float | None] | None = None,
) -> float | None:
    """A folder that `SentenceTransformer(output)` loads without lm2vec: weights, Pooling, prompts, card.

    `add_graph(folder)` writes (and verifies) an engine's graph into the folder before it moves into place
    (export/graph.py: ONNX, OpenVINO); the lower of the two verified cosines is returned."""
    check_exportable(encoder, fmt)  # echo, the extra modules, compute modes: refused before any work
    output = Path(output)
    named = st_prompts(encoder, prompts, strict=False)
    with staged(output) as staging:
        model = plain_model(encoder)
        _build(encoder, model, named, default_prompt_name).save(str(staging), create_model_card=False)
        write_engine_flags(staging, model)
        _add_legacy_pooling_keys(staging)
        write_lm2vec_config(encoder, staging)
        write_model_card(staging, encoder, output, fmt=fmt, eval_results=eval_results)
        loaded = _load_bidirectional(staging, model.config.model_type)
        worst = verify_sentence_transformers(encoder, loaded) if verify else None
        graph = add_graph(staging) if add_graph else None
    return None if worst is None else min(worst, graph if graph is not None else worst)


def _add_legacy_pooling_keys(folder: Path) -> None:
    """Write the boolean pooling keys beside `pooling_mode`: text-embeddings-inference parses only those, and
    sentence-transformers drops them on load when `pooling_mode` is present (so both read the same mode)."""
    for path in folder.glob("*_Pooling/config.json"):
        mode = json.loads(path.read_text())["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
        update_json(path, {key: name in modes for name, key in LEGACY_POOLING_KEYS.items()})


def _load_bidirectional(folder: Path, model_type: str):
    """Load the folder as its users will; if it comes back causal under the default attention, pin eager
    attention (`model_kwargs`, which sentence-transformers reads back on load) and try once more."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    if is_bidirectional(model[0].model):
        return model
    update_json(folder / "sentence_bert_config.json", {"model_kwargs": {"attn_implementation": "eager"}})
    model = SentenceTransformer(str(folder), device="cpu")
    if is_bidirectional(model[0].model):
        return model
    raise ExportError(
        f"'{model_type}' stays causal when loaded by sentence-transformers even with "
        "is_causal=false and eager attention; this architecture cannot be exported this way"
    )


def verify_sentence_transformers(encoder: Encoder, model) -> float:
    """Compare the reloaded folder's plain vectors (an empty prompt overrides any default prompt) with lm2vec's
    on the probe texts, in one padded batch."""
    exported = model.encode(PROBE_TEXTS, prompt="", batch_size=len(PROBE_TEXTS), convert_to_numpy=True)
    return check_close(probe_vectors(encoder), exported, "the sentence-transformers export")
