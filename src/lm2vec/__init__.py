"""lm2vec: turn any decoder-only language model into a text encoder (LLM2Vec), train, evaluate, serve it.

The tree and what each package may import (tests/test_layout.py checks it):

    io.py       atomic writes; imports nothing from lm2vec
    core/       the Encoder: tokens -> states -> vectors; imports io only
    data/       corpora, triplets, scored pairs; imports io only
    training/   recipes, the loop, objectives; imports core, data, io
    eval/       MTEB, local benchmark data, word-level probes; imports core, data, io
    serving/    the HTTP server; imports core, io
    export/     sentence-transformers and merged folders, model cards; imports core, io
    cli.py      the command line; imports anything
"""

__version__ = "0.1.0"

from lm2vec.core.bidirectional import BidirectionalError, is_bidirectional, make_bidirectional  # noqa: E402
from lm2vec.core.encoder import CONVERTERS, SAVE_HOOKS, Encoder, EncoderConfig  # noqa: E402
from lm2vec.export.model_card import write_model_card  # noqa: E402
from lm2vec.export.sentence_transformers import to_sentence_transformer  # noqa: E402

SAVE_HOOKS.append(write_model_card)  # every saved encoder folder gets a model card
CONVERTERS["sentence-transformers"] = to_sentence_transformer  # Encoder.to_sentence_transformer()

__all__ = ["Encoder", "EncoderConfig", "BidirectionalError", "make_bidirectional", "is_bidirectional", "__version__"]
