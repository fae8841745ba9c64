"""ONNX and OpenVINO exports (export/graph.py): the traced graph attends bidirectionally and gives lm2vec's vectors.

Each format is exported once from a saved tiny encoder through `lm2vec export` and checked with its own
engine (ONNX Runtime, OpenVINO), the way `SentenceTransformer(path, backend=...)` runs it: same inputs,
same outputs. A causal export is the control: the same check must see the last token NOT reach the first.
`SentenceTransformer(path, backend=...)` itself needs optimum-onnx / optimum-intel; where those do not
import (the newest releases do not with transformers 5.x) that one test skips and says why.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import tiny_encoder
from typer.testing import CliRunner

import lm2vec.export as export_package
from lm2vec.cli import app
from lm2vec.export import ExportError, cosines, export
from lm2vec.export import graph as graph_module
from lm2vec.export.graph import (
    GRAPH_FILES,
    encode_with,
    first_token_moves,
    onnx_runner,
    openvino_runner,
    st_backend_problem,
    trace_onnx,
)

TEXTS = ["A man is playing a guitar.", "cats", "The committee postponed its decision until the next meeting.",
         "Stock prices fell sharply in early trading after the report was published."]
RUNNERS = {"onnx": onnx_runner, "openvino": openvino_runner}


def _needs(fmt: str) -> None:
    missing = graph_module.missing_packages(fmt)
    if missing:
        pytest.skip(f"the {fmt} extra is not installed (missing {', '.join(missing)})")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny encoder (byte tokenizer with a BOS, so the folder carries WordWeights) and its vectors."""
    encoder = tiny_encoder(max_length=48)
    folder = tmp_path_factory.mktemp("encoder") / "tiny"
    encoder.save_pretrained(folder)
    return folder, encoder


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def exported(request, saved, tmp_path_factory):
    """Each format exported once through the command line."""
    fmt = request.param
    _needs(fmt)
    out = tmp_path_factory.mktemp(fmt) / "export"
    done = CliRunner().invoke(app, ["export", str(saved[0]), str(out), "--format", fmt])
    assert done.exit_code == 0, done.output
    assert float(re.search(r"min cosine vs lm2vec ([0-9.]+)", done.output).group(1)) >= 0.9999
    return fmt, out


def test_the_exported_graph_attends_bidirectionally_and_gives_lm2vec_vectors(exported, saved):
    fmt, folder = exported
    encoder = saved[1]
    run = RUNNERS[fmt](folder / GRAPH_FILES[fmt])
    assert first_token_moves(run, encoder.model) > 1e-3
    vectors = encode_with(run, encoder, TEXTS, batch_size=len(TEXTS))  # one right-padded batch
    assert cosines(vectors, encoder.encode(TEXTS)).min() >= 0.9999
    assert (folder / "modules.json").is_file() and (folder / "lm2vec_config.json").is_file()
    assert f'backend="{fmt}"' in (folder / "README.md").read_text()


def test_the_folder_still_loads_in_sentence_transformers_with_the_torch_backend(exported, saved):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(exported[1]), device="cpu")
    vectors = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    assert cosines(vectors, saved[1].encode(TEXTS)).min() >= 0.9999


def test_sentence_transformers_backend_loads_the_graph(exported, saved):
    fmt, folder = exported
    problem = st_backend_problem(fmt)
    if problem:
        pytest.skip(f"SentenceTransformer(backend={fmt!r}) cannot run here: {problem} (the newest optimum-onnx "
                    "0.1.0 / optimum-intel 2.2.0 need transformers<4.58 / <5.6; docs/serving.md)")
    from sentence_transformers import SentenceTransformer

    kwargs = {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}} if fmt == "openvino" else {}
    model = SentenceTransformer(str(folder), backend=fmt, device="cpu", model_kwargs=kwargs)
    vectors = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    assert cosines(vectors, saved[1].encode(TEXTS)).min() >= 0.999


def test_a_causal_backbone_traces_to_a_causal_graph_and_the_check_sees_it(tmp_path):
    """The control: the same tracing and check on the causal model find that the last token never reaches
    the first (so the bidirectional result above comes from the graph, not from the check)."""
    _needs("onnx")
    encoder = tiny_encoder(max_length=48, bidirectional=False)
    run = onnx_runner(trace_onnx(encoder.model, tmp_path / "causal" / "model.onnx"))
    assert first_token_moves(run, encoder.model) == 0.0
    assert cosines(encode_with(run, encoder, TEXTS, batch_size=4), encoder.encode(TEXTS)).min() >= 0.9999


def test_missing_engine_packages_and_inference_modes_are_refused_before_any_work(saved, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="inference mode, not a weights dtype"):
        export(str(saved[0]), tmp_path / "x", "onnx", dtype="bf16-matmul")
    monkeypatch.setattr(export_package, "missing_packages", lambda fmt: ["openvino"])
    with pytest.raises(ImportError, match=r"pip install 'lm2vec\[openvino\]'"):
        export(str(saved[0]), tmp_path / "y", "openvino")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert np.isfinite(saved[1].encode(TEXTS)).all()


def test_graph_exports_refuse_what_the_sentence_transformers_export_refuses(pre_encoder_dir, tmp_path, monkeypatch):
    """Echo, a contextual token and latent attention: the same ExportError before any graph is traced."""
    monkeypatch.setattr(export_package, "missing_packages", lambda fmt: [])  # refused before an engine is needed
    encoders = {"echo": tiny_encoder(max_length=48, echo=True),
                "latent_attention": tiny_encoder(max_length=48, latent_attention=True, latent_attention_latents=16),
                "contextual": tiny_encoder(max_length=48, contextual=str(pre_encoder_dir), bidirectional=False,
                                           pooling="last")}
    for name, encoder in encoders.items():
        encoder.save_pretrained(tmp_path / name)
        for fmt in GRAPH_FILES:
            out = tmp_path / f"{name}-{fmt}"
            with pytest.raises(ExportError, match=f"{name} cannot be exported to the {fmt} format"):
                export(str(tmp_path / name), out, fmt)
            assert not out.exists()
