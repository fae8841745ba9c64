"""What `encode` does to finished vectors: Matryoshka truncation and quantized precisions.

One place for both, so `Encoder.encode`, the server and the CLI cut and quantize vectors the same way.
Truncation keeps the first d components (what a Matryoshka-trained model, `matryoshka_dims` in a stage,
is trained for) and renormalises them when unit vectors were asked for. Quantization is
sentence-transformers' `quantize_embeddings`, an optional dependency imported only when a precision
other than float32 is asked for, so core stays importable without it.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
INSTALL_HINT = "pip install sentence-transformers (or lm2vec[export])"


def check_dimensions(dimensions: int | None, full: int) -> None:
    """`dimensions` must be None (all) or an integer in [1, full]."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer) or not 1 <= dimensions <= full:
        raise ValueError(f"dimensions must be an integer between 1 and the model's dimension {full}, got {dimensions!r}")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def truncate(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """(n, D) -> (n, dimensions) float32, L2-renormalised row by row if `normalize` (a cut unit vector
    is shorter than 1); zero rows stay zero. dimensions None cuts nothing and changes nothing: vectors
    that should be unit vectors already are (so the server's default output stays bit for bit)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dimensions is None:
        return vectors
    cut = vectors[..., :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=-1, keepdims=True), 1e-12) if normalize else cut


def quantizer(precision: str):
    """sentence-transformers' `quantize_embeddings`, or an ImportError that says how to install it."""
    try:
        from sentence_transformers import quantize_embeddings
    except ImportError as error:
        raise ImportError(f"precision={precision!r} needs sentence-transformers: {INSTALL_HINT}") from error
    return quantize_embeddings


def quantize(vectors: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, d) -> `precision`, by sentence-transformers' `quantize_embeddings`:
    int8 / uint8: (n, d), each dimension's [min, max] cut into 256 buckets; the ranges come from
      `calibration_embeddings` (m, d) when given, else from `vectors` themselves (then a code depends on
      what else was encoded in the call, and one vector alone cannot be quantized);
    binary / ubinary: (n, ceil(d / 8)) int8 / uint8, one sign bit per dimension packed 8 to a byte
      (binary is ubinary - 128). float32 returns the vectors unchanged."""
    check_precision(precision)
    if precision == "float32":
        return np.asarray(vectors, dtype=np.float32)
    quantize_embeddings = quantizer(precision)
    calibration = None if calibration_embeddings is None else np.asarray(calibration_embeddings, dtype=np.float32)
    if precision.endswith("int8") and calibration is None and len(vectors) == 1:
        raise ValueError(f"precision={precision!r} takes each dimension's range from the vectors quantized together; "
                         "one vector has none: pass calibration_embeddings (encode output of representative texts)")
    return quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision,
                               calibration_embeddings=calibration)


def finish(vectors: np.ndarray, dimensions: int | None = None, normalize: bool = False, precision: str = "float32",
           calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """Truncate (and renormalise) then quantize. Calibration embeddings go through the same truncation
    and normalisation first, so they may be full-width `encode` output or already cut to `dimensions`
    (int8 / uint8 ranges then match the vectors they quantize)."""
    out = truncate(vectors, dimensions, normalize)
    if calibration_embeddings is not None:
        shape, widths = np.shape(calibration_embeddings), sorted({out.shape[-1], np.shape(vectors)[-1]})
        if len(shape) != 2 or shape[1] not in widths:
            raise ValueError(f"calibration_embeddings must be (m, {' or '.join(map(str, widths))}), got {shape}")
        calibration_embeddings = truncate(calibration_embeddings, out.shape[-1], normalize)
    return quantize(out, precision, calibration_embeddings)
