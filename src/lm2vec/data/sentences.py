"""Sentence splitting for corpora (SimCSE trains on sentences): a regex plus abbreviation rules.

Deterministic and dependency-free. Imports nothing from lm2vec.
"""

from __future__ import annotations

import re

# A candidate boundary: sentence punctuation, optional closing quotes/brackets, whitespace, then
# something that can start a sentence (an optional opening quote/bracket and a capital or digit).
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_PREVIOUS_WORD = re.compile(r"(\S+)$")
_NEXT_WORD = re.compile(r"[\"'“‘(\[]?(\w+)")
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # U.S, e.g, G.I, p.m (final "." is the candidate)
# fmt: off
# Never end a sentence: titles, Latin and reference abbreviations, months.
NEVER_FINAL = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "rev", "hon", "gen", "col", "lt", "sgt", "capt", "cmdr", "adm", "gov",
    "sen", "rep", "pres", "st", "mt", "ft", "e.g", "i.e", "cf", "vs", "v", "c", "ca", "approx", "no", "nos",
    "fig", "figs", "vol", "vols", "pp", "p", "ed", "eds", "op", "sp", "spp", "subg", "var", "jan", "feb",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
# Often end a sentence: split only when the next word is a common sentence opener.
SOMETIMES_FINAL = frozenset({
    "etc", "inc", "ltd", "co", "corp", "bros", "jr", "sr", "al",
})
SENTENCE_OPENERS = frozenset({
    "The", "A", "An", "In", "It", "Its", "This", "That", "These", "Those", "They", "He", "She", "His",
    "Her", "There", "Their", "As", "On", "At", "By", "For", "From", "After", "Before", "Since", "During",
    "However", "When", "While", "Although", "Many", "Most", "Some", "Other", "Another",
})
# fmt: on


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a regex plus an abbreviation check; lines split first.

    A boundary is ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace and a
    capital or digit. A period does not end a sentence after a title or Latin abbreviation
    ("Dr.", "e.g.", "St."), a single-capital initial ("Arthur C. Clarke"; "I" counts as a Roman
    numeral, as in "World War I."), and never inside a number ("3.14" has no space). After a dotted
    acronym ("U.S.") or "etc.", "Inc.", "Jr." it ends one only if a common opener ("The", "In",
    "It", ...) follows. Deterministic and dependency-free; not a replacement for a trained splitter.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            if _is_boundary(line, start, match):
                sentences.append(line[start : match.end()].strip())
                start = match.end()
        sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _is_boundary(line: str, start: int, match: re.Match[str]) -> bool:
    """Decide whether a candidate boundary ending in "." is a real sentence end."""
    punctuation = match.group().rstrip()
    if not punctuation.startswith(".") or punctuation.startswith(".."):
        return True  # "!", "?" and ellipses end sentences
    previous = _PREVIOUS_WORD.search(line, start, match.start())
    if previous is None:
        return False
    word = previous.group(1).lstrip("\"'“‘([")
    if (len(word) == 1 and word.isupper() and word != "I") or word.lower() in NEVER_FINAL:
        return False
    if word.lower() in SOMETIMES_FINAL or _ACRONYM.fullmatch(word):
        following = _NEXT_WORD.match(line, match.end())
        return following is not None and following.group(1) in SENTENCE_OPENERS
    return True
