"""`model_kwargs` reach every from_pretrained (Encoder, training stages, export, the CLI), recipes check
them, and 8/4-bit bases need bitsandbytes, named in the error when it is missing."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml
from typer.testing import CliRunner

from lm2vec import Encoder
from lm2vec.cli import app
from lm2vec.core.loading import (
    MissingPackageError,
    check_model_kwargs,
    parse_model_kwargs,
    quantization_kwargs,
)
from lm2vec.training.recipe import Recipe, RecipeError, StageConfig, dump_recipe
from lm2vec.training.stage_model import load_stage_encoder, stage_load_kwargs

EAGER = {"attn_implementation": "eager"}


def test_model_kwargs_reach_the_loaded_model(model_dir):
    assert Encoder.from_pretrained(model_dir, device="cpu").model.config._attn_implementation == "sdpa"
    eager = Encoder.from_pretrained(model_dir, device="cpu", model_kwargs=EAGER)
    assert eager.model.config._attn_implementation == "eager"
    bf16 = Encoder.from_pretrained(model_dir, device="cpu", model_kwargs={"dtype": "bfloat16"})
    assert bf16.model.dtype == torch.bfloat16
    explicit = Encoder.from_pretrained(model_dir, device="cpu", dtype="float32", model_kwargs={"dtype": "bfloat16"})
    assert explicit.model.dtype == torch.float32, "an explicit dtype= wins over model_kwargs'"


def test_model_kwargs_must_be_a_mapping_of_argument_names():
    with pytest.raises(ValueError, match="must be a mapping"):
        check_model_kwargs(["attn_implementation", "eager"])
    with pytest.raises(ValueError, match="argument names"):
        check_model_kwargs({"not a name": 1})
    with pytest.raises(ValueError, match="JSON object"):
        parse_model_kwargs("{attn_implementation: eager}")
    assert parse_model_kwargs('{"revision": "main"}') == {"revision": "main"}


def test_cli_passes_model_kwargs_and_rejects_bad_json(model_dir):
    result = CliRunner().invoke(app, ["info", str(model_dir), "--model-kwargs", json.dumps(EAGER)])
    assert result.exit_code == 0, result.output
    assert "eager" in result.output
    bad = CliRunner().invoke(app, ["info", str(model_dir), "--model-kwargs", "eager"])
    assert bad.exit_code == 2 and "--model-kwargs" in bad.output


def _recipe(model, **fields) -> Recipe:
    return Recipe(stages=[StageConfig(objective="simcse", data="x")], model=str(model), **fields)


def test_recipe_checks_model_kwargs_quantization_and_engine():
    with pytest.raises(RecipeError, match="must be a mapping"):
        _recipe("m", model_kwargs="eager")
    with pytest.raises(RecipeError, match="precision"):
        _recipe("m", model_kwargs={"dtype": "bfloat16"})
    with pytest.raises(RecipeError, match="quantization must be"):
        _recipe("m", quantization="3bit")
    with pytest.raises(RecipeError, match="distributed must be"):
        _recipe("m", distributed="deepspeed")
    with pytest.raises(RecipeError, match="bitsandbytes"):
        _recipe("m", distributed="fsdp", quantization="4bit")
    with pytest.raises(RecipeError, match="finetune: full"):
        Recipe(stages=[StageConfig(objective="simcse", data="x", finetune="full")], quantization="8bit")
    with pytest.raises(RecipeError, match="keep_best"):
        Recipe(stages=[StageConfig(objective="simcse", data="x", eval_every=1, eval_data="d", keep_best=True)],
               distributed="fsdp")


def test_the_run_recipe_never_holds_the_hub_token(tmp_path):
    dump_recipe(_recipe("m", model_kwargs={"token": "hf_secret", "revision": "v1"}), tmp_path / "recipe.yaml")
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())["model_kwargs"]
    assert saved == {"token": "<redacted>", "revision": "v1"}


@pytest.fixture()
def loads(monkeypatch):
    """Every (path, kwargs) given to AutoModel / AutoModelForCausalLM.from_pretrained."""
    seen = []
    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained.__func__

        def spy(klass, path, *args, _original=original, **kwargs):
            seen.append((str(path), kwargs))
            return _original(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return seen


def test_training_loads_every_copy_with_the_recipe_model_kwargs(model_dir, tmp_path, loads):
    """A bf16 stage loads its base (MNTP: the CausalLM) and, to merge, a float32 reload: both with them."""
    from lm2vec.training.loop import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence number {i} about a topic\n" for i in range(20)))
    stage = StageConfig(objective="mntp", data=str(corpus), max_steps=2, batch_size=2, max_length=16,
                        precision="bf16", save_every=10)
    final = train(Recipe(stages=[stage], model=str(model_dir), model_kwargs={**EAGER, "revision": "main"}),
                  tmp_path / "run")
    assert len(loads) >= 2 and all(kw.get("attn_implementation") == "eager" for _, kw in loads), loads
    assert [kw["dtype"] for _, kw in loads][:2] == [torch.bfloat16, torch.float32]
    assert Encoder.from_pretrained(final, device="cpu").encode(["a test"]).shape == (1, 64)


def test_a_later_stage_keeps_model_kwargs_but_not_hub_pointers(model_dir):
    recipe = _recipe(model_dir, model_kwargs={**EAGER, "revision": "v1", "subfolder": "x"})
    assert stage_load_kwargs(recipe, str(model_dir), torch.float32, "cpu")["revision"] == "v1"
    later = stage_load_kwargs(recipe, "/runs/stage1/merged", torch.float32, "cpu")
    assert later == {**EAGER, "dtype": torch.float32}
    encoder, _ = load_stage_encoder(str(model_dir), recipe.stages[0], _recipe(model_dir, model_kwargs=EAGER), "cpu")
    assert encoder.model.config._attn_implementation == "eager"


def test_export_loads_with_model_kwargs(model_dir, tmp_path, loads):
    from lm2vec.export import export

    export(str(model_dir), tmp_path / "out", "merged", model_kwargs=EAGER, verify=False)
    assert loads[0] == (str(model_dir), {"trust_remote_code": False, **EAGER, "dtype": torch.float32})


def test_quantized_base_needs_bitsandbytes_and_names_it(model_dir, monkeypatch):
    recipe = _recipe(model_dir, quantization="4bit")
    with pytest.raises(MissingPackageError, match="pip install bitsandbytes"):
        stage_load_kwargs(recipe, str(model_dir), torch.bfloat16, "cpu")
    import lm2vec.core.loading as loading

    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: name if name == "bitsandbytes" else real(name))
    load = stage_load_kwargs(recipe, str(model_dir), torch.bfloat16, "cuda:1")
    config = load["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert load["device_map"] == {"": 1}, "bitsandbytes places the weights on this process's GPU itself"
    assert quantization_kwargs("8bit")["quantization_config"].load_in_8bit


def test_train_command_merges_model_kwargs_into_the_recipe(model_dir, tmp_path, monkeypatch):
    import lm2vec.training.loop as loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda recipe, output, **options: seen.append(recipe) or output)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": str(model_dir), "model_kwargs": {"revision": "v1"},
                                                     "stages": [{"objective": "simcse", "data": "x"}]}))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run"),
                                      "--model-kwargs", json.dumps({**EAGER, "device_map": {"": 0}})])
    assert result.exit_code == 0, result.output
    assert seen[0].model_kwargs == {"revision": "v1", **EAGER, "device_map": {"": 0}}
