"""ONNX and OpenVINO exports: a sentence-transformers folder plus the backbone's graph, traced bidirectionally.

`SentenceTransformer(folder, backend="onnx")` runs `onnx/model.onnx` (`backend="openvino"`:
`openvino/openvino_model.xml`) through optimum in place of the torch backbone; tokenizer, prompts and
pooling come from the same folder as with the torch backend. The graph maps (input_ids, attention_mask)
to last_hidden_state: the names optimum's feature-extraction models feed and read.

Bidirectional attention is traced in, not configured: the graph is exported from lm2vec's own
bidirectional backbone with torch.export (`torch.onnx.export(dynamo=True)`), and transformers 5 builds
the attention mask inside that forward from `config.is_causal = False`, so the graph holds a padding-only
mask and no causal triangle. (Not the legacy TorchScript exporter: it freezes the mask code's Python
branches on tensors into constants of the example input.) Every export is checked on the graph itself,
run by its engine: changing the last token must move the first token's state, and a padded batch must
give lm2vec's vectors. OpenVINO converts that ONNX graph and keeps float32 weights; on CPUs with AMX it
computes in bf16 by default, so the check pins f32 (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lm2vec.core.batching import plan_batches
from lm2vec.core.bidirectional import probe_ids
from lm2vec.core.encoder import Encoder
from lm2vec.core.pooling import pool
from lm2vec.export.common import PROBE_TEXTS, ExportError, check_close, plain_model, probe_vectors

GRAPH_FILES = {"onnx": Path("onnx") / "model.onnx", "openvino": Path("openvino") / "openvino_model.xml"}
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "openvino": ("onnx", "onnxscript", "openvino")}
# what sentence-transformers imports for backend=... (optimum-onnx, optimum-intel)
ST_BACKEND_MODULES = {"onnx": "optimum.onnxruntime", "openvino": "optimum.intel.openvino"}
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) -> (B, T, D) states


def missing_packages(fmt: str) -> list[str]:
    """The packages an export to `fmt` needs that are not installed (the `onnx` / `openvino` extras)."""
    return [name for name in NEEDS[fmt] if importlib.util.find_spec(name) is None]


def st_backend_problem(fmt: str) -> str | None:
    """Why `SentenceTransformer(folder, backend=fmt)` cannot run here (its optimum package does not import),
    or None when it can."""
    try:
        importlib.import_module(ST_BACKEND_MODULES[fmt])
    except ImportError as error:  # also a package installed but broken against this transformers
        return f"{ST_BACKEND_MODULES[fmt]} does not import: {type(error).__name__}: {error}"
    return None


class LastHiddenState(nn.Module):
    """The backbone as the graph sees it: (input_ids, attention_mask) -> last_hidden_state (B, T, D).

    No position ids: the model counts them from the left, which are lm2vec's for right padding (the
    exported tokenizer pads on the right)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def trace_onnx(model: nn.Module, path: Path) -> Path:
    """Export the (bidirectional) backbone to ONNX with dynamic batch and sequence axes."""
    base, _ = probe_ids(model, length=8)
    ids = torch.cat([base, base.flip(1)])  # (2, 8): two rows and a padded one, so no axis specialises
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    axes = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(LastHiddenState(model).eval(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamo=True, verbose=False,
                          dynamic_shapes={"input_ids": axes, "attention_mask": axes})
    return path


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's warnings and progress lines (torchvision ops it skips, graph passes)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def write_openvino(model: nn.Module, path: Path) -> Path:
    """Trace to ONNX in a temporary folder and convert that graph to OpenVINO IR (float32 weights)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="lm2vec-ov-") as tmp:
        converted = ov.convert_model(str(trace_onnx(model, Path(tmp) / "model.onnx")))
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(converted, str(path), compress_to_fp16=False)
    return path


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    """An ONNX Runtime CPU session as a Runner."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]


def openvino_runner(path: str | Path, threads: int | None = None, precision: str | None = "f32") -> Runner:
    """An OpenVINO CPU model as a Runner; `precision` None keeps OpenVINO's default (bf16 on AMX CPUs)."""
    import openvino as ov

    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return lambda ids, mask: compiled({"input_ids": ids, "attention_mask": mask})[0]


def encode_with(run: Runner, encoder: Encoder, texts: list[str], batch_size: int = 32,
                max_tokens: int | None = None) -> np.ndarray:
    """lm2vec's encode with an engine in place of the torch backbone: the same tokens, length-sorted
    batches (right-padded) and pooling, so engine and torch vectors differ only by the engine."""
    tokenized = encoder.tokenize([(None, text) for text in texts])
    out = np.empty((len(texts), encoder.embedding_dim), dtype=np.float32)
    for indices in plan_batches([len(t.ids) for t in tokenized], batch_size, max_tokens):
        batch = encoder.collate([tokenized[i] for i in indices], padding_side="right")
        hidden = run(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
        out[indices] = pool(torch.from_numpy(np.asarray(hidden)).float(), batch["pool_mask"], encoder.config.pooling)
    return out


def first_token_moves(run: Runner, model: nn.Module) -> float:
    """How far the first token's final state moves when only the last token changes (0 when causal)."""
    states = [run(ids.numpy(), np.ones_like(ids.numpy()))[0, 0] for ids in probe_ids(model)]
    return float(np.abs(states[0] - states[1]).max())


def verify_graph(encoder: Encoder, run: Runner, what: str) -> float:
    """The graph attends as the encoder does and gives its vectors on the probe texts, in one padded batch."""
    if encoder.config.bidirectional and not first_token_moves(run, encoder.model) > 1e-6:
        raise ExportError(f"the {what} graph is causal: changing the last token does not move the first token")
    exported = encode_with(run, encoder, PROBE_TEXTS, batch_size=len(PROBE_TEXTS))
    return check_close(probe_vectors(encoder), exported, f"the {what} graph")


def verify_st_backend(encoder: Encoder, folder: Path, fmt: str) -> float:
    """`SentenceTransformer(folder, backend=fmt)` gives lm2vec's vectors (OpenVINO pinned to f32)."""
    from sentence_transformers import SentenceTransformer

    kwargs = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}} if fmt == "openvino" else {}
    model = SentenceTransformer(str(folder), backend=fmt, device="cpu", model_kwargs=kwargs)
    exported = model.encode(PROBE_TEXTS, prompt="", batch_size=len(PROBE_TEXTS), convert_to_numpy=True)
    return check_close(probe_vectors(encoder), exported, f"SentenceTransformer(backend={fmt!r})")


def add_graph(encoder: Encoder, folder: Path, fmt: str, verify: bool = True) -> float | None:
    """Write the backbone's graph for `fmt` into a sentence-transformers folder and check it with its engine,
    and with sentence-transformers' own backend where its optimum package imports."""
    model, path = plain_model(encoder), Path(folder) / GRAPH_FILES[fmt]
    if fmt == "onnx":
        trace_onnx(model, path)
        run, what = onnx_runner(path), "ONNX"
    else:
        write_openvino(model, path)
        run, what = openvino_runner(path), "OpenVINO"
    if not verify:
        return None
    worst = verify_graph(encoder, run, what)
    return min(worst, verify_st_backend(encoder, folder, fmt)) if st_backend_problem(fmt) is None else worst
