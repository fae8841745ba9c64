"""Instructions: prepend a task instruction that the model attends to but pooling skips.

LLM2Vec marks the instruction with a magic separator string and re-tokenizes the text alone to count
its tokens. We tokenize `prefix + text` once and use the tokenizer's character offsets: every token that
ends inside the prefix belongs to the instruction. That is exact for any tokenizer with offsets, even
when a token would straddle the boundary (it then counts as text, since it carries text characters).
`validate_texts` turns `Encoder.encode`'s input into (instruction, text) pairs first.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TEMPLATE = "{instruction} "


@dataclass(frozen=True)
class TokenizedText:
    """One text's token ids and which of them pooling reads: all but `skip` leading and `tail` trailing ones."""

    ids: list[int]
    skip: int  # leading tokens excluded from pooling (the instruction, with any BOS before it)
    truncated: bool
    tail: int = 0  # trailing tokens excluded from pooling (Echo: template text after the second copy)
    context_ids: list[int] | None = None  # the text in the contextual token's pre-encoder vocabulary


def format_prefix(instruction: str | None, template: str = DEFAULT_TEMPLATE) -> str:
    """The literal text put before the input; empty when there is no instruction."""
    if not instruction or not instruction.strip():
        return ""
    if "{instruction}" not in template:
        raise ValueError(f"instruction template {template!r} must contain '{{instruction}}'")
    return template.format(instruction=instruction.strip())


def _count_prefix_tokens(offsets: list[tuple[int, int]], prefix_chars: int) -> int:
    """Number of leading tokens that end at or before `prefix_chars` (specials at the start included)."""
    if prefix_chars == 0:
        return 0
    count = 0
    for _, end in offsets:
        if end > prefix_chars:
            break
        count += 1
    return count


def truncate(ids: list[int], specials: list[int], max_length: int) -> list[int]:
    """Cut to max_length, keeping a trailing special token (e.g. an added EOS) if the tokenizer added one."""
    if len(ids) <= max_length:
        return ids
    if specials and specials[-1]:
        return ids[: max_length - 1] + ids[-1:]
    return ids[:max_length]


def _leading_specials(specials: list[int]) -> int:
    """How many special tokens (BOS and the like) open the sequence."""
    count = 0
    while count < len(specials) and specials[count]:
        count += 1
    return count


def tokenize_with_instruction(
    tokenizer,
    text: str,
    instruction: str | None,
    max_length: int,
    template: str = DEFAULT_TEMPLATE,
    pool_leading_specials: bool = False,
) -> TokenizedText:
    """One text: `tokenize_batch` of a single (instruction, text) pair."""
    return tokenize_batch(tokenizer, [(instruction, text)], max_length, template, pool_leading_specials)[0]


def tokenize_batch(
    tokenizer,
    items: list[tuple[str | None, str]],
    max_length: int,
    template: str = DEFAULT_TEMPLATE,
    pool_leading_specials: bool = False,
) -> list[TokenizedText]:
    """Tokenize each `prefix + text` in one tokenizer call (a fast tokenizer then works through the list
    in Rust, not one Python call per text); report how many leading tokens pooling skips and whether it
    truncated.

    Leading special tokens (a BOS) are attended to but, like the instruction, not pooled unless
    `pool_leading_specials`: LLM2Vec pools the text's own tokens only, and a BOS state is an attention
    sink with outsized activations that would dominate a mean. (BERT-style encoders, whose
    sentence-transformers pooling includes [CLS], set it to True.)"""
    prefixes = [format_prefix(instruction, template) for instruction, _ in items]
    offsets = any(prefixes)  # offsets are only needed to find where an instruction ends
    enc = tokenizer([prefix + text for prefix, (_, text) in zip(prefixes, items)], add_special_tokens=True,
                    return_offsets_mapping=offsets, return_special_tokens_mask=True, truncation=False)
    out = []
    for row, prefix in enumerate(prefixes):
        ids, specials = enc["input_ids"][row], enc["special_tokens_mask"][row]
        skip = _count_prefix_tokens(enc["offset_mapping"][row], len(prefix)) if prefix else 0
        if not pool_leading_specials:
            skip = max(skip, _leading_specials(specials))
        kept = truncate(ids, specials, max_length)
        out.append(TokenizedText(ids=kept, skip=min(skip, len(kept) - 1), truncated=len(kept) < len(ids)))
    return out


def validate_texts(texts) -> tuple[list[tuple[str | None, str]], bool]:
    """Normalise input to (instruction, text) pairs; a lone string is allowed and flagged."""
    if isinstance(texts, str):
        return validate_texts([texts])[0], True
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a list of strings or (instruction, text) pairs, got {type(texts).__name__}")
    items: list[tuple[str | None, str]] = []
    for index, item in enumerate(texts):
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            instruction, text = item
        elif isinstance(item, str):
            instruction, text = None, item
        else:
            raise ValueError(f"texts[{index}] must be a string or an (instruction, text) pair, got {item!r:.80}")
        if not text.strip():
            raise ValueError(f"texts[{index}] is empty: there is nothing to embed")
        items.append((instruction, text))
    return items, False
