"""Data for lm2vec: raw-text corpora (MNTP, SimCSE), supervised triplets, built-in corpora.

Every loader shares one error policy (:mod:`lm2vec.data.errors`): malformed records are either
raised at the first one or skipped with one warning that counts them and names ``file:line``.
"""

from lm2vec.data.builtin import BUILTIN_CORPORA, BuiltinCorpusMissing, builtin_corpus
from lm2vec.data.errors import DataError, DataWarning
from lm2vec.data.sentences import split_sentences
from lm2vec.data.text import FORMATS, load_texts, parse_hf_source
from lm2vec.data.triplets import (
    Triplet,
    detokenize_ptb,
    load_pairs_source,
    load_triplets,
    msmarco_triplets,
    save_triplets,
    snli_triplets,
    wikisplit_triplets,
)

__all__ = [
    "BUILTIN_CORPORA",
    "FORMATS",
    "BuiltinCorpusMissing",
    "DataError",
    "DataWarning",
    "Triplet",
    "builtin_corpus",
    "detokenize_ptb",
    "load_pairs_source",
    "load_texts",
    "load_triplets",
    "msmarco_triplets",
    "parse_hf_source",
    "save_triplets",
    "snli_triplets",
    "split_sentences",
    "wikisplit_triplets",
]
