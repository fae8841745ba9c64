"""Exports and model cards: sentence-transformers and merged folders reproduce lm2vec's vectors.

The sentence-transformers round trip loads the folder in a fresh interpreter with a minimal
environment and asserts lm2vec was never imported: the folder must stand on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import COMMON, byte_tokenizer, tiny_encoder, tiny_model
from transformers import AutoConfig, AutoModel
from typer.testing import CliRunner

from lm2vec import Encoder, EncoderConfig, is_bidirectional
from lm2vec.export import ExportError, cosines, export_merged, export_sentence_transformers
from lm2vec.export.engines import ENGINE_FLAGS, engine_flag_changes
from lm2vec.export.model_card import MARKER, render_model_card
from lm2vec.export.sentence_transformers import ST_POOLING

TEXTS = ["A man is playing a guitar.", "cats", "The committee postponed its decision until the next meeting."]

ST_SCRIPT = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
plain = model.encode(json.loads(sys.argv[2]), batch_size=3).tolist()
query = model.encode(json.loads(sys.argv[2]), prompt_name="query").tolist()
assert "lm2vec" not in sys.modules, "the export needed lm2vec"
print(json.dumps({"plain": plain, "query": query, "causal": model[0].model.config.is_causal}))
"""


def _clean_env(tmp_path) -> dict[str, str]:
    """No PYTHONPATH, no hub access, a fresh HOME: only the folder and installed packages."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }


def test_sentence_transformers_folder_loads_without_lm2vec(tmp_path):
    encoder = tiny_encoder(max_length=48)
    out = export_sentence_transformers(encoder, tmp_path / "st", prompts={"query": "Retrieve passages:"})
    assert out >= 0.9999
    run = subprocess.run(
        [sys.executable, "-I", "-c", ST_SCRIPT, str(tmp_path / "st"), json.dumps(TEXTS)],
        check=False,
        capture_output=True,
        text=True,
        env=_clean_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["causal"] is False
    assert np.abs(np.array(got["plain"]) - encoder.encode(TEXTS)).max() < 1e-5
    want = encoder.encode(TEXTS, instruction="Retrieve passages:")
    assert cosines(np.array(got["query"], dtype=np.float32), want).min() >= 0.9999


LEGACY_KEY = {"mean": "pooling_mode_mean_tokens", "weighted_mean": "pooling_mode_weightedmean_tokens",
              "last": "pooling_mode_lasttoken", "first": "pooling_mode_cls_token"}
CASES = [
    ("llama", "mean", True),
    ("qwen2", "last", True),
    ("gemma3_text", "first", False),
    ("gpt2", "weighted_mean", False),
]


@pytest.mark.parametrize(("model_type", "pooling", "bos"), CASES)
def test_sentence_transformers_export_matches_each_pooling(tmp_path, model_type, pooling, bos):
    from sentence_transformers import SentenceTransformer

    config = EncoderConfig(pooling=pooling, max_length=40)
    encoder = Encoder(tiny_model(model_type), byte_tokenizer(add_bos=bos), config)
    assert export_sentence_transformers(encoder, tmp_path / "st") >= 0.9999
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert is_bidirectional(model[0].model)  # plain load, module flags untouched
    long = ["word " * 30, "tiny"]  # truncated the same way, padded in one batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.abs(model.encode(long) - encoder.encode(long)).max() < 1e-5
    [pooling_file] = (tmp_path / "st").glob("*_Pooling/config.json")  # 2_Pooling after a BOS WordWeights
    pooling_config = json.loads(pooling_file.read_text())
    assert pooling_config["include_prompt"] is False
    legacy = {k: v for k, v in pooling_config.items() if k.startswith("pooling_mode_")}  # what TEI parses
    assert legacy == {key: key == LEGACY_KEY[pooling] for key in LEGACY_KEY.values()} | {
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    assert model[-1].pooling_mode == ST_POOLING[pooling]  # sentence-transformers still reads `pooling_mode`


@pytest.mark.parametrize("pooling", ["weighted_mean", "first"])
def test_pooling_that_cannot_skip_the_bos_is_refused(tmp_path, pooling):
    with pytest.raises(ExportError, match="leading special token"):
        export_sentence_transformers(tiny_encoder(pooling=pooling), tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_architecture_that_reads_module_flag_gets_eager_attention(tmp_path):
    encoder = tiny_encoder("stablelm")  # sdpa reads module.is_causal when there is no padding
    assert export_sentence_transformers(encoder, tmp_path / "st") >= 0.9999
    config = json.loads((tmp_path / "st" / "sentence_bert_config.json").read_text())
    assert config["model_kwargs"]["attn_implementation"] == "eager"
    with pytest.warns(UserWarning, match="eager"):
        assert export_merged(tiny_encoder("stablelm"), tmp_path / "merged") >= 0.9999


def test_merged_export_is_plain_bidirectional_safetensors(tmp_path):
    encoder = tiny_encoder("qwen2", pooling="weighted_mean", max_length=64)
    assert export_merged(encoder, tmp_path / "m") >= 0.9999
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert (
        "model.safetensors" in files
        and "README.md" in files
        and not any(f.startswith("adapter") for f in files)
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["is_causal"] is False
    assert is_bidirectional(AutoModel.from_pretrained(tmp_path / "m"))
    assert (
        np.abs(
            Encoder.from_pretrained(tmp_path / "m", device="cpu").encode(TEXTS) - encoder.encode(TEXTS)
        ).max()
        < 1e-5
    )


# ---- the flags serving engines read -------------------------------------------------------------
FLAGGED = {"qwen2": {"is_causal": False}, "qwen3": {"is_causal": False, "use_bidirectional_attention": True},
           "llama": {"is_causal": False, "use_bidirectional_attention": True},
           "mistral": {"is_causal": False, "use_bidirectional_attention": True},
           "gemma3_text": {"is_causal": False, "use_bidirectional_attention": True}}


def small_window_gemma3(window: int = 6):
    """A tiny Gemma 3 whose two layers are both sliding-window layers with a window shorter than the texts."""
    config = AutoConfig.for_model("gemma3_text", **COMMON, sliding_window=window)
    torch.manual_seed(0)
    return AutoModel.from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("model_type", sorted(FLAGGED))
def test_merged_export_writes_the_flag_each_engine_reads(tmp_path, model_type):
    model = small_window_gemma3() if model_type == "gemma3_text" else tiny_model(model_type)
    encoder = Encoder(model, byte_tokenizer(), EncoderConfig(max_length=64))
    assert export_merged(encoder, tmp_path / "m") >= 0.9999
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {k: config.get(k) for k in FLAGGED[model_type]} == FLAGGED[model_type]
    assert FLAGGED[model_type] == {"is_causal": False, **ENGINE_FLAGS[model_type]}
    reloaded = AutoModel.from_pretrained(tmp_path / "m")
    assert is_bidirectional(reloaded)  # transformers still loads it bidirectionally, with no lm2vec code
    long = ["The committee postponed its decision until the next meeting, citing incomplete data.", "cats"]
    again = Encoder.from_pretrained(tmp_path / "m", device="cpu").encode(long)
    assert np.abs(again - encoder.encode(long)).max() < 1e-5  # attention unchanged, sliding window included
    if model_type == "gemma3_text":  # transformers' own convention: stored doubled (minus 2), halved on load
        assert config["sliding_window"] == 10 and reloaded.config.sliding_window == 6


def test_sentence_transformers_export_writes_the_same_flags(tmp_path):
    export_sentence_transformers(tiny_encoder("qwen3"), tmp_path / "st")
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["is_causal"] is False and config["use_bidirectional_attention"] is True


def test_causal_encoder_gets_no_engine_flags():
    causal = Encoder(tiny_model("qwen3"), byte_tokenizer(), EncoderConfig(bidirectional=False))
    assert engine_flag_changes(causal.model) == {}
    assert engine_flag_changes(tiny_encoder("gpt2").model) == {}  # no engine reads a flag for it


def test_merged_export_folds_lora_in(tmp_path):
    from lm2vec.training.lora import attach_lora
    from lm2vec.training.recipe import LoraSettings

    encoder = tiny_encoder()
    encoder.model = attach_lora(encoder.model, LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    for name, parameter in encoder.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # a trained-looking adapter
    encoder.model.eval()
    with_adapter = encoder.encode(TEXTS)
    assert export_merged(encoder, tmp_path / "m") >= 0.9999
    assert "lora" not in (tmp_path / "m" / "model.safetensors").read_bytes()[:20000].decode("latin1")
    reloaded = Encoder.from_pretrained(tmp_path / "m", device="cpu").encode(TEXTS)
    assert np.abs(reloaded - with_adapter).max() < 1e-4


def test_cli_export_writes_both_formats(tmp_path):
    from lm2vec.cli import app

    source = tiny_encoder(max_length=32).save_pretrained(tmp_path / "enc")
    runner = CliRunner()
    prompts = ["--prompt", "query=Retrieve passages:", "--default-prompt", "query"]
    for fmt in ("merged", "sentence-transformers"):
        result = runner.invoke(app, ["export", str(source), str(tmp_path / fmt), "--format", fmt, *prompts])
        assert result.exit_code == 0, result.output
        assert "min cosine" in result.output and (tmp_path / fmt / "config.json").is_file()
    st_config = json.loads((tmp_path / "sentence-transformers" / "config_sentence_transformers.json").read_text())
    assert st_config["default_prompt_name"] == "query" and st_config["prompts"]["query"] == "Retrieve passages: "
    bad = runner.invoke(app, ["export", str(source), str(tmp_path / "x"), "--format", "tflite"])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
    bad = runner.invoke(app, ["export", str(source), str(tmp_path / "x"), "--format", "merged", "--default-prompt", "q"])
    assert isinstance(bad.exception, ValueError) and "names no --prompt" in str(bad.exception)  # a usage error


# ---- model cards ------------------------------------------------------------------------------------
STAGES = {
    "mntp": {
        "objective": "mntp",
        "data": "wiki1m",
        "max_steps": 1000,
        "batch_size": 32,
        "grad_accum": 1,
        "lr": 5e-5,
        "max_length": 512,
        "mask_rate": 0.2,
        "lora": {"r": 16, "alpha": 32},
    },
    "simcse": {
        "objective": "simcse",
        "data": ["wiki1m"],
        "max_steps": 1000,
        "batch_size": 128,
        "lr": 3e-5,
        "max_length": 128,
        "attention_dropout": 0.3,
        "lora": {"r": 16, "alpha": 32},
    },
}
EVAL = {
    "model": "x",
    "tasks": {
        "STSBenchmark": {"main_score": 0.7812, "main_metric": "cosine_spearman"},
        "SciFact": {"main_score": None, "main_metric": "ndcg_at_10"},
    },
}


def test_model_card_has_base_licence_recipe_data_and_eval():
    encoder = tiny_encoder(base_model="smollm2-135m", training=STAGES)
    card = render_model_card(encoder, "sentence-transformers", "my-encoder", EVAL)
    for needle in (
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
        "license: apache-2.0",
        MARKER,
        "| mntp | mntp | wiki1m | 1000 | 32 x 1 | 5e-05 | 512 | 16 / 32 |",
        '"mask_rate": 0.2',
        '"attention_dropout": 0.3',
        "- `wiki1m`",
        "| STSBenchmark | cosine_spearman | 78.12 |",
        "| SciFact | ndcg_at_10 | n/a |",
        'SentenceTransformer("my-encoder")',
        "## Intended use",
        "## Limitations",
        "**apache-2.0**",
    ):
        assert needle in card, needle


def test_save_pretrained_writes_card_but_keeps_a_hand_written_one(tmp_path):
    encoder = tiny_encoder(base_model="smollm2-135m")
    target = tmp_path / "enc"
    encoder.save_pretrained(target)
    card = (target / "README.md").read_text()
    assert MARKER in card and "None: the base model's weights" in card
    (target / "mteb_results.json").write_text(json.dumps(EVAL))
    encoder.save_pretrained(target)  # our card is rewritten, now with the evaluation beside it
    assert "| STSBenchmark | cosine_spearman | 78.12 |" in (target / "README.md").read_text()
    (target / "README.md").write_text("# my own card\n")
    encoder.save_pretrained(target)
    assert (target / "README.md").read_text() == "# my own card\n"
