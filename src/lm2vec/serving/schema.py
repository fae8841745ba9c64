"""The OpenAI embeddings wire format: request validation, response shaping, error bodies.

Kept apart from the transport (server.py) so the rules are plain functions that tests can call.
Every client mistake becomes an `ApiError` whose body has OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from lm2vec.core.postprocess import PRECISIONS, finish


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI-style error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def invalid(message: str, code: str = "invalid_value", param: str | None = "input") -> ApiError:
    return ApiError(400, message, code, param=param)


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings body. `input` is checked by `parse_inputs` for precise messages."""

    model_config = ConfigDict(extra="forbid")

    input: Any
    model: StrictStr | None = None  # accepted and echoed as the served name (like TEI; one model per server)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None  # OpenAI's end-user tag; accepted, unused
    instruction: StrictStr | None = None  # lm2vec extension: attended to, not pooled
    # lm2vec extension: int8 / uint8 / binary / ubinary vectors (core/postprocess.py) as integer lists
    # (or base64 of their bytes); int8 / uint8 ranges come from the request's own inputs
    precision: Literal[PRECISIONS] = "float32"


def parse_request(body: bytes) -> EmbeddingRequest:
    """Bytes -> validated request; JSON and schema errors become 400s that name the field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(f"request body is not valid JSON: {error}", "invalid_json", None) from None
    if not isinstance(data, dict):
        raise invalid("request body must be a JSON object", "invalid_json", None)
    if "input" not in data:
        raise invalid("'input' is required", "missing_required_parameter")
    try:
        return EmbeddingRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise invalid(f"unknown field '{field}'", "unknown_parameter", field) from None
        raise invalid(f"'{field}': {first['msg']}", "invalid_value", field) from None


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def parse_inputs(value: Any) -> tuple[Literal["text", "tokens"], list]:
    """`input` -> ("text", [str, ...]) or ("tokens", [[int, ...], ...]); anything else is a 400.

    Accepted like OpenAI: a string, a list of strings, a list of token ids, a list of such lists."""
    if isinstance(value, str) or _is_token_list(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise invalid(
            "'input' must be a non-empty string, a non-empty list of strings, a list of token ids "
            "or a list of lists of token ids",
            "invalid_input",
        )
    if all(isinstance(item, str) for item in value):
        for index, text in enumerate(value):
            if not text.strip():
                raise invalid(
                    f"input[{index}] is empty: there is nothing to embed", "empty_input", f"input[{index}]"
                )
        return "text", value
    if all(isinstance(item, list) for item in value):
        for index, ids in enumerate(value):
            if not _is_token_list(ids):
                raise invalid(
                    f"input[{index}] must be a non-empty list of integer token ids",
                    "invalid_input",
                    f"input[{index}]",
                )
        return "tokens", value
    bad = next(i for i, item in enumerate(value) if not isinstance(item, str))
    raise invalid(
        f"input[{bad}] must be a string like the other inputs, got {type(value[bad]).__name__}",
        "invalid_input",
        f"input[{bad}]",
    )


def check_token_ids(batch: list[list[int]], vocab_size: int) -> None:
    """Ids outside the embedding table would crash the forward pass: refuse them up front."""
    for index, ids in enumerate(batch):
        low, high = min(ids), max(ids)
        if low < 0 or high >= vocab_size:
            raise invalid(
                f"input[{index}] has token id {low if low < 0 else high} outside [0, {vocab_size})",
                "invalid_token_id",
                f"input[{index}]",
            )


def shape_vectors(vectors: np.ndarray, dimensions: int | None, normalize: bool, precision: str = "float32") -> np.ndarray:
    """`Encoder.encode`'s own truncation and quantization (core/postprocess.py): keep the first `dimensions`
    components, renormalised when the server serves unit vectors (as OpenAI does), then quantize."""
    return finish(vectors, dimensions, normalize, precision)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | list[int] | str:
    """A list of floats (ints for quantized vectors), or base64 of the vector's bytes: little-endian
    float32 (what OpenAI's base64 format holds), or one byte per int8 / uint8 value."""
    if encoding_format == "base64":
        raw = vector.astype("<f4") if vector.dtype.kind == "f" else vector
        return base64.b64encode(raw.tobytes()).decode("ascii")
    return vector.tolist()


def embedding_response(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict[str, Any]:
    data = [
        {"object": "embedding", "embedding": encode_vector(v, encoding_format), "index": i}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
