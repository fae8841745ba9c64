"""Echo embeddings (Springer et al. 2024, "Repetition Improves Language Model Embeddings", arXiv 2402.15449).

A causal model's token states cannot see later tokens. Echo writes the text twice ("Query: x\\nQuery
again: x") and pools only the second copy, whose every token has already read the whole text once. The
price is a sequence about twice as long. It is an input format plus a pooled span, so it works with
causal and bidirectional attention alike and needs no weights.

Defaults follow the authors' released code (github.com/jakespringer/echo-embeddings): their query
template, which they also use for symmetric tasks (`Query:{x}\\nQuery again:{x}`), pooled over the
second copy and the tokenizer's closing special tokens (their `{</s>}`). Differences on purpose:
- one template for every input (theirs: a query and a document template); an instruction goes first,
  through the encoder's `instruction_template` as for plain inputs, and is attended but never pooled;
- the tokenizer adds its own BOS/EOS (their templates spell out `<s>` and `</s>`);
- as in their parser, `max_length` bounds each copy of the text, not the whole sequence: an echoed text
  keeps the same words as a plain one, in a sequence of up to 2 x max_length + template tokens.
"""

from __future__ import annotations

from lm2vec.core.tokenization import DEFAULT_TEMPLATE, TokenizedText, format_prefix

ECHO_TEMPLATE = "Query: {text}\nQuery again: {text}"
PLACEHOLDER = "{text}"


def check_echo_template(template: str) -> str:
    """The template if it holds the text exactly twice, else a ValueError that says so."""
    if template.count(PLACEHOLDER) != 2:
        raise ValueError(f"echo_template must contain '{PLACEHOLDER}' exactly twice (the text, then its echo), "
                         f"got {template!r}")
    return template


def _cut(tokenizer, texts: list[str], max_length: int) -> list[tuple[str, bool]]:
    """Each text cut after its first `max_length` tokens (at that token's last character), and whether it was."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        out.append((text, False) if len(offsets) <= max_length else (text[: offsets[max_length - 1][1]], True))
    return out


def _span(offsets: list[tuple[int, int]], specials: list[int], start: int, end: int) -> tuple[int, int]:
    """(first, stop): the tokens that overlap characters [start, end), then the special tokens right after
    them (an EOS the tokenizer appends is pooled, as for a plain text)."""
    inside = [i for i, (a, b) in enumerate(offsets) if not specials[i] and a < end and b > start]
    first, stop = inside[0], inside[-1] + 1
    while stop < len(specials) and specials[stop]:
        stop += 1
    return first, stop


def tokenize_echo(tokenizer, items: list[tuple[str | None, str]], max_length: int, template: str = ECHO_TEMPLATE,
                  instruction_template: str = DEFAULT_TEMPLATE) -> list[TokenizedText]:
    """`instruction prefix + template` with the text in both places, in one tokenizer call; pooling
    skips everything before the second copy (instruction and first copy included) and the template
    text after it."""
    before, between, after = check_echo_template(template).split(PLACEHOLDER)
    cut = _cut(tokenizer, [text for _, text in items], max_length)
    strings, spans = [], []
    for (instruction, _), (text, _) in zip(items, cut):
        head = format_prefix(instruction, instruction_template) + before + text + between
        strings.append(head + text + after)
        spans.append((len(head), len(head) + len(text)))
    enc = tokenizer(strings, add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True, truncation=False)
    out = []
    for row, ((start, end), (_, was_cut)) in enumerate(zip(spans, cut)):
        ids = enc["input_ids"][row]
        first, stop = _span(enc["offset_mapping"][row], enc["special_tokens_mask"][row], start, end)
        out.append(TokenizedText(ids=ids, skip=first, truncated=was_cut, tail=len(ids) - stop))
    return out
