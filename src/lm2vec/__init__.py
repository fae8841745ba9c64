"""lm2vec: turn any decoder-only language model into a text encoder (LLM2Vec), train, evaluate, serve it."""

__version__ = "0.1.0"

from lm2vec.core.bidirectional import BidirectionalError, is_bidirectional, make_bidirectional  # noqa: E402
from lm2vec.core.encoder import Encoder, EncoderConfig  # noqa: E402

__all__ = ["Encoder", "EncoderConfig", "BidirectionalError", "make_bidirectional", "is_bidirectional", "__version__"]
