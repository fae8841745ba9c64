"""Model cards: a README.md for every saved or exported encoder.

A card says what the vectors are made of (base model and licence, pooling, attention, instruction
format), how it was trained (every stage's hyperparameters from `EncoderConfig.training`), on which
data, how it scored (an evaluation JSON beside it, if any), and what it is not for. Cards that lm2vec
writes carry a marker comment, so a card a person wrote is never overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lm2vec.core.models import BUILTIN_MODELS

MARKER = "<!-- written by lm2vec: edit freely; remove this line to stop lm2vec from replacing the card -->"
CARD_NAME = "README.md"
EVAL_FILES = ("eval_results.json", "mteb_results.json")
USAGE = {
    "lm2vec": 'from lm2vec import Encoder\n\nencoder = Encoder.from_pretrained("{path}")\n'
    'vectors = encoder.encode(["A man plays the guitar."], normalize=True)',
    "sentence-transformers": "from sentence_transformers import SentenceTransformer\n\n"
    'model = SentenceTransformer("{path}")  # no lm2vec, no remote code\n'
    'vectors = model.encode(["A man plays the guitar."])',
    "onnx": "from sentence_transformers import SentenceTransformer\n\n"
    'model = SentenceTransformer("{path}", backend="onnx")  # runs onnx/model.onnx (needs optimum-onnx)\n'
    'vectors = model.encode(["A man plays the guitar."])',
    "openvino": "from sentence_transformers import SentenceTransformer\n\n"
    'model = SentenceTransformer("{path}", backend="openvino")  # runs openvino/ (needs optimum-intel)\n'
    'vectors = model.encode(["A man plays the guitar."])',
    "merged": "from transformers import AutoModel, AutoTokenizer\n\n"
    'model = AutoModel.from_pretrained("{path}")  # config.json has is_causal: false\n'
    'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
    "# pool the last hidden state as lm2vec_config.json says (pooling, instruction template)",
}


def base_model_info(name: str | None) -> tuple[str, str]:
    """(hub id, licence) of the base model; built-ins know theirs, others point to the base card."""
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        return spec.base_model, spec.license
    return name or "unknown", "see the base model's card"


def _is_ours(card: Path) -> bool:
    try:
        return MARKER in card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def find_eval_results(*folders: Path) -> dict | None:
    """The first evaluation JSON found in `folders` (lm2vec eval writes mteb_results.json)."""
    for folder in folders:
        for name in EVAL_FILES:
            path = Path(folder) / name
            if path.is_file():
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    continue
    return None


def _eval_rows(results: dict) -> list[tuple[str, str, str]]:
    """(task, metric, score) rows from lm2vec's report ({"tasks": {name: {...}}}) or a flat mapping."""
    tasks = results.get("tasks", results)
    rows = []
    for name, value in tasks.items():
        if isinstance(value, dict) and "main_score" in value:
            score = value["main_score"]
            rows.append(
                (
                    name,
                    str(value.get("main_metric", "main_score")),
                    "n/a" if score is None else f"{100 * score:.2f}",
                )
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((name, "score", f"{value:.4g}"))
    return rows


def _front_matter(base: str, licence: str, library: str) -> str:
    """The hub's YAML metadata block, written by huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=base, license=licence if " " not in licence else "other", library_name=library,
                         pipeline_tag="sentence-similarity",
                         tags=["lm2vec", "llm2vec", "sentence-embeddings", "feature-extraction"])
    return f"---\n{data.to_yaml()}\n---"


def _model_section(encoder, base: str, licence: str) -> list[str]:
    c = encoder.config
    text_config = encoder.model.config.get_text_config()
    rows = [
        ("base model", f"`{base}`"),
        ("base model licence", licence),
        ("architecture", f"`{text_config.model_type}`, {text_config.num_hidden_layers} layers"),
        ("parameters", f"{sum(p.numel() for p in encoder.model.parameters()):,}"),
        ("embedding dimension", str(encoder.embedding_dim)),
        ("pooling", f"`{c.pooling}`"),
        ("attention", "bidirectional (`is_causal: false`)" if c.bidirectional else "causal"),
        ("max tokens", str(c.max_length)),
        ("instruction template", f"`{c.instruction_template!r}`"),
    ]
    return ["## Model", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]


def _training_section(training: dict) -> list[str]:
    if not training:
        note = (
            "None: the base model's weights with bidirectional attention and the pooling above (LLM2Vec's "
            "training-free starting point). Expect far weaker embeddings than after MNTP + contrastive training."
        )
        return ["## Training", "", note, ""]
    lines = [
        "## Training",
        "",
        "Stages in order (LLM2Vec: MNTP, then SimCSE or supervised contrastive):",
        "",
        "| stage | objective | data | steps | batch | lr | max length | LoRA r / alpha |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in training.items():
        lora = s.get("lora") or {}
        data = ", ".join(s["data"]) if isinstance(s.get("data"), list) else s.get("data")
        lines.append(
            f"| {name} | {s.get('objective')} | {data} | {s.get('max_steps')} | "
            f"{s.get('batch_size')} x {s.get('grad_accum', 1)} | {s.get('lr')} | {s.get('max_length')} | "
            f"{lora.get('r')} / {lora.get('alpha')} |"
        )
    lines += ["", "Every hyperparameter of every stage:", ""]
    for name, settings in training.items():
        lines += [
            f"<details><summary>{name}</summary>",
            "",
            "```json",
            json.dumps(settings, indent=2, default=str),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def _data_section(training: dict) -> list[str]:
    sources = sorted(
        {
            d
            for s in training.values()
            for d in (s.get("data") if isinstance(s.get("data"), list) else [s.get("data")])
            if d
        }
    )
    body = [f"- `{d}`" for d in sources] or ["- none (no training)"]
    return ["## Training data", ""] + body + ["", "Check each data set's licence before commercial use.", ""]


def _eval_section(results: dict | None) -> list[str]:
    rows = _eval_rows(results) if results else []
    if not rows:
        return ["## Evaluation", "", "No evaluation results were supplied with this model.", ""]
    return (
        ["## Evaluation", "", "| task | metric | score |", "|---|---|---|"]
        + [f"| {t} | {m} | {s} |" for t, m, s in rows]
        + [""]
    )


def _closing_sections(licence: str) -> list[str]:
    use = (
        "Sentence and passage embeddings for semantic search, clustering, classification features and "
        "similarity scoring, in the languages and domains of the base model and training data."
    )
    return [
        "## Intended use",
        "",
        use,
        "",
        "## Limitations",
        "",
        "- Texts longer than the max tokens above are truncated.",
        "- Vectors inherit the base model's biases and blind spots; test on your own data before relying on them.",
        "- Instructions change the vectors: embed queries and documents with the instructions used in training.",
        "- Not a generative model: the language-model head is not included.",
        "",
        "## Licence",
        "",
        f"The weights derive from the base model and follow its licence: **{licence}**.",
        "",
    ]


def render_model_card(
    encoder, fmt: str = "lm2vec", path: str = ".", eval_results: dict | None = None, title: str | None = None
) -> str:
    """The card as Markdown; `fmt` picks the usage snippet (lm2vec, sentence-transformers, onnx, openvino, merged)."""
    base, licence = base_model_info(encoder.config.base_model)
    training = encoder.config.training or {}
    library = {"merged": "transformers", "lm2vec": "lm2vec"}.get(fmt, "sentence-transformers")
    lines = [
        _front_matter(base, licence, library),
        MARKER,
        "",
        f"# {title or Path(str(path)).name or 'lm2vec encoder'}",
        "",
        f"A text encoder built with [lm2vec](https://arxiv.org/abs/2404.05961) (LLM2Vec) from `{base}`.",
        "",
    ]
    lines += _model_section(encoder, base, licence) + _training_section(training) + _data_section(training)
    lines += _eval_section(eval_results)
    lines += ["## Usage", "", "```python", USAGE[fmt].format(path=path), "```", ""]
    return "\n".join(lines + _closing_sections(licence))


def write_model_card(
    folder: str | Path,
    encoder,
    previous: str | Path | None = None,
    fmt: str = "lm2vec",
    eval_results: dict | None = None,
) -> Path:
    """Write folder/README.md unless a person's card exists there (or in `previous`, which is kept).

    `previous` is the folder being replaced by an atomic save; its evaluation JSON is used if present."""
    folder = Path(folder)
    target = folder / CARD_NAME
    old = Path(previous) / CARD_NAME if previous else None
    if target.exists() and not _is_ours(target):
        return target
    if old is not None and old.is_file() and not _is_ours(old):
        shutil.copyfile(old, target)
        return target
    results = eval_results or find_eval_results(*(p for p in (folder, previous) if p))
    name = Path(previous).name if previous else folder.name
    target.write_text(render_model_card(encoder, fmt, name, results, title=name), encoding="utf-8")
    return target
