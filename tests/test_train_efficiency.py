"""Training per CPU minute: bf16 base weights, MNTP packing, length-grouped batches; dev evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_encoder
from safetensors.torch import load_file
from scipy.stats import spearmanr

from lm2vec import Encoder
from lm2vec.data.errors import DataError
from lm2vec.data.scored_pairs import load_scored_pairs
from lm2vec.training import precision as precision_module
from lm2vec.training.dev_eval import DevEvaluator
from lm2vec.training.loop import StageRunner
from lm2vec.training.objectives import OBJECTIVES
from lm2vec.training.objectives.mntp import MNTPTask, pack_blocks
from lm2vec.training.order import batch_indices, epoch_order
from lm2vec.training.precision import resolve_precision
from lm2vec.training.recipe import Recipe, RecipeError, StageConfig, load_recipe

WORDS = ["cat", "dog", "bird", "fox", "owl", "eel", "ant", "bee"]
SENTENCES = [f"the {w} number {i} sat {'very ' * (i % 5)}quietly on the {WORDS[(i + 3) % 8]}." for i, w in
             enumerate(WORDS * 4)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory):
    """A scored-pair dev set in JSONL: pairs of corpus sentences with made-up gold scores."""
    path = tmp_path_factory.mktemp("dev") / "dev.jsonl"
    rows = [{"sentence1": SENTENCES[i], "sentence2": SENTENCES[(i * 7 + 3) % len(SENTENCES)], "score": (i * 37) % 11}
            for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _runner(model_dir, out, **settings):
    base = dict(objective="mntp", data=str(settings.pop("data")), max_steps=8, batch_size=4, max_length=32,
                lr=3e-3, warmup_steps=0, save_every=100, attention_dropout=0.0, lora={"dropout": 0.0})
    stage = StageConfig(**{**base, **settings})
    recipe = Recipe(stages=[stage], model=str(model_dir), max_length=32)
    return StageRunner(recipe, stage, str(model_dir), out / "stage", out / "encoder", device="cpu")


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "stage" / "log.jsonl").read_text().splitlines()) if "loss" in r]


# ---- precision ------------------------------------------------------------------------------------
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("no", "cpu") == "fp32" and resolve_precision("bf16-autocast", "cpu") == "bf16-autocast"
    with pytest.raises(RecipeError, match="precision must be one of"):
        StageConfig(objective="mntp", data="x", precision="int4")


@pytest.mark.parametrize("objective", ["mntp", "supervised"])
def test_bf16_base_weights_follow_the_float32_loss_curve(objective, model_dir, corpus, tmp_path):
    """Frozen base in bf16, LoRA/loss/optimiser in float32: the same loss curve as float32 within 0.03
    per step (tiny model, 8 steps, no dropout, so the runs differ only by bf16 rounding)."""
    data = corpus
    if objective == "supervised":
        data = tmp_path / "triplets.jsonl"
        data.write_text("".join(json.dumps({"query": s, "positive": s.replace("sat", "rested"),
                                            "negatives": [SENTENCES[(i + 9) % len(SENTENCES)]]}) + "\n"
                                for i, s in enumerate(SENTENCES)))
    curves = {}
    for precision in ("fp32", "bf16"):
        runner = _runner(model_dir, tmp_path / precision, data=data, objective=objective, precision=precision)
        runner.run()
        if precision == "bf16":
            assert runner.encoder.model.get_input_embeddings().weight.dtype == torch.float32  # merged back to fp32
        curves[precision] = _losses(tmp_path / precision)
    assert np.abs(np.subtract(curves["fp32"], curves["bf16"])).max() < 0.03, curves
    assert np.mean(curves["bf16"][-2:]) < np.mean(curves["bf16"][:2])  # and it trains
    saved = Encoder.from_pretrained(tmp_path / "bf16" / "encoder", device="cpu")
    assert next(saved.model.parameters()).dtype == torch.float32


def test_bf16_stage_trains_float32_lora_on_bf16_base(model_dir, corpus, tmp_path):
    runner = _runner(model_dir, tmp_path, data=corpus, precision="bf16")
    runner.setup()
    lora = [p for n, p in runner.peft.named_parameters() if "lora_" in n]
    frozen = [p for n, p in runner.peft.named_parameters() if "lora_" not in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)


def _vectors(encoder, texts=SENTENCES[:6]):
    encoder.model.eval()
    with torch.no_grad():
        return encoder.embed(encoder.collate(encoder.tokenize([(None, t) for t in texts]))).float()


def test_bf16_next_stage_starts_exactly_where_the_last_one_ended(model_dir, corpus, tmp_path):
    """On a bf16 base, stage 2 runs stage 1's adapter unmerged and frozen: at its first step it computes
    what stage 1 ended with (bf16 base + float32 delta), where reloading the merged weights in bf16 does
    not; only the new adapter trains and is saved, and the final encoder is the float32 merge of both."""
    from lm2vec.core.adapters import load_adapter
    from lm2vec.training.loop import train

    stages = [StageConfig(objective="mntp", data=str(corpus), max_steps=8, batch_size=4, max_length=32, lr=1e-2,
                          warmup_steps=0, save_every=100, precision="bf16", lora={"dropout": 0.0}),
              StageConfig(objective="simcse", data=str(corpus), max_steps=2, batch_size=4, max_length=32, lr=1e-2,
                          warmup_steps=0, save_every=100, precision="bf16", attention_dropout=0.1)]
    recipe = Recipe(stages=stages, model=str(model_dir), max_length=32)
    final = train(recipe, tmp_path / "run")
    first_adapter, second_adapter = tmp_path / "run/stage1-mntp/adapter", tmp_path / "run/stage2-simcse/adapter"

    ended = tiny_stage_encoder(model_dir, torch.bfloat16)  # what stage 1 trained: bf16 base + its delta
    ended.model = load_adapter(ended.model, first_adapter)
    merged_start = tmp_path / "run/stage1-mntp/merged"
    runners = {name: StageRunner(recipe, stages[1], str(merged_start), tmp_path / name / "s", tmp_path / name / "e",
                                 device="cpu", earlier_adapters=adapters)
               for name, adapters in (("stacked", [first_adapter]), ("rounded", []))}
    for runner in runners.values():
        runner.setup()
    reference = _vectors(ended)
    stacked_gap = (_vectors(runners["stacked"].encoder) - reference).abs().max()
    rounded_gap = (_vectors(runners["rounded"].encoder) - reference).abs().max()
    assert stacked_gap < 1e-6 and rounded_gap > 1e-3, (stacked_gap, rounded_gap)
    trainable = [n for n, p in runners["stacked"].peft.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)

    assert not (second_adapter / "earlier0").exists()
    assert all(".earlier" not in k for k in load_file(second_adapter / "adapter_model.safetensors"))
    expected = tiny_stage_encoder(model_dir, torch.float32)
    expected.model = load_adapter(load_adapter(expected.model, first_adapter, merge=True), second_adapter, merge=True)
    saved = Encoder.from_pretrained(final, device="cpu")
    assert torch.allclose(_vectors(saved), _vectors(expected), atol=1e-5)


def tiny_stage_encoder(model_dir, dtype):
    """The tiny model as a bidirectional Encoder with base weights in `dtype` (as a training stage loads it)."""
    from transformers import AutoModel, AutoTokenizer

    from lm2vec.core.encoder import EncoderConfig

    backbone = AutoModel.from_pretrained(model_dir, dtype=dtype)
    return Encoder(backbone, AutoTokenizer.from_pretrained(model_dir), EncoderConfig(max_length=32))


# ---- packing and length grouping ------------------------------------------------------------------
def test_packing_keeps_every_token_exactly_once():
    documents = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15, 16]]
    blocks = pack_blocks(documents, block=4, separator=2, prefix=[1])
    assert all(b[0] == 1 for b in blocks) and [len(b) for b in blocks] == [4, 4, 4, 4, 4, 2]  # last: padded later
    stream = [t for b in blocks for t in b[1:]]
    assert stream == [5, 6, 7, 2, 8, 2, 9, 10, 11, 12, 13, 2, 14, 15, 16, 2]
    with pytest.raises(ValueError, match="no room"):
        pack_blocks(documents, block=1, separator=None, prefix=[1])


def test_mntp_task_packs_the_corpus_into_full_blocks(corpus):
    encoder = tiny_encoder()
    stage = StageConfig(objective="mntp", data=str(corpus), max_length=32)
    blocks = MNTPTask(stage, encoder, None).load_examples()
    assert all(len(b) == 32 for b in blocks[:-1]) and 1 < len(blocks[-1]) <= 32
    tokenizer = encoder.tokenizer
    expected = [t for s in SENTENCES for t in tokenizer(s, add_special_tokens=False)["input_ids"] + [2]]
    assert [t for b in blocks for t in b[1:]] == expected  # each block opens with the tokenizer's BOS
    batch = MNTPTask(stage, encoder, None).collate(blocks[:4], torch.Generator().manual_seed(0))
    assert batch["attention_mask"].float().mean() == 1.0  # no padding
    unpacked = MNTPTask(StageConfig(objective="mntp", data=str(corpus), max_length=32, pack=False), encoder, None)
    assert len(unpacked.load_examples()) == len(SENTENCES)


def test_length_grouped_order_is_a_permutation_with_similar_lengths_per_step():
    lengths = [int(x) for x in torch.randint(5, 200, (400,), generator=torch.Generator().manual_seed(3))]
    grouped, plain = epoch_order(400, 7, 0, lengths, per_step=8), epoch_order(400, 7, 0)
    assert sorted(grouped) == list(range(400))

    def mean_spread(order):
        return np.mean([np.ptp([lengths[i] for i in order[k : k + 8]]) for k in range(0, 400, 8)])

    assert mean_spread(grouped) < mean_spread(plain) / 4
    stage = StageConfig(objective="simcse", data="x", batch_size=4, seed=1)
    single = StageConfig(objective="simcse", data="x", batch_size=8, seed=1)
    for step in range(60):  # past one epoch: the 2-process split is still one process's batch
        both = (batch_indices(400, step, 0, stage, 0, 2, lengths) + batch_indices(400, step, 0, stage, 1, 2, lengths))
        assert both == batch_indices(400, step, 0, single, 0, 1, lengths)


def test_padding_share_is_logged_and_packing_removes_it(model_dir, corpus, tmp_path):
    padding = {}
    for pack in (True, False):
        _runner(model_dir, tmp_path / str(pack), data=corpus, max_steps=3, max_length=96, pack=pack,
                group_by_length=False).run()
        records = [json.loads(x) for x in (tmp_path / str(pack) / "stage" / "log.jsonl").read_text().splitlines()]
        padding[pack] = np.mean([r["padding"] for r in records])
    assert padding[True] == 0.0 and padding[False] > 0.05


def test_simcse_instruction_is_attended_but_not_pooled(corpus):
    encoder = tiny_encoder()
    plain = OBJECTIVES["simcse"](StageConfig(objective="simcse", data=str(corpus)), encoder).collate(["a cat"], None)
    stage = StageConfig(objective="simcse", data=str(corpus), instruction="Retrieve semantically similar text:")
    instructed = OBJECTIVES["simcse"](stage, encoder).collate(["a cat"], None)
    assert instructed["input_ids"].shape[1] > plain["input_ids"].shape[1]
    assert instructed["pool_mask"].sum() == plain["pool_mask"].sum()  # the same text tokens are pooled


# ---- dev evaluation -------------------------------------------------------------------------------
def test_scored_pairs_load_sts_benchmark_layout_and_jsonl(tmp_path, dev_file):
    sts = tmp_path / "sts-dev.csv"
    sts.write_text("main-captions\tMSRvid\t2012test\t0000\t5.000\tA man dances.\tA man is dancing.\n"
                   "main-news\theadlines\t2013\t0001\t0.5\tStocks fell.\tA cat sleeps.\tsrc\textra\n")
    pairs = load_scored_pairs(sts)
    assert pairs.sentence1 == ["A man dances.", "Stocks fell."] and pairs.scores == [5.0, 0.5]
    assert len(load_scored_pairs(dev_file).scores) == 24
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "score": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: sentence1 and sentence2"):
        load_scored_pairs(bad)
    with pytest.raises(DataError, match="not found"):
        load_scored_pairs(tmp_path / "missing.csv")


def test_dev_score_is_spearman_of_the_cosines(dev_file):
    encoder = tiny_encoder()
    pairs = load_scored_pairs(dev_file)
    a, b = encoder.encode(pairs.sentence1), encoder.encode(pairs.sentence2)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    expected = spearmanr(cosines, pairs.scores).statistic
    assert DevEvaluator(encoder, str(dev_file), limit=None).score() == pytest.approx(expected, abs=1e-6)
    assert len(DevEvaluator(encoder, str(dev_file), limit=10).gold) == 10


def test_eval_every_logs_dev_scores_beside_the_loss(model_dir, corpus, dev_file, tmp_path):
    _runner(model_dir, tmp_path, data=corpus, objective="simcse", attention_dropout=0.1, max_steps=5,
            eval_every=2, eval_data=str(dev_file)).run()
    records = [json.loads(x) for x in (tmp_path / "stage" / "log.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in records if "dev_spearman" in r]
    assert evaluated == [0, 2, 4, 5]  # before training, every 2 steps, and the last step
    assert all(-1 <= r["dev_spearman"] <= 1 for r in records if "dev_spearman" in r)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    assert (tmp_path / "stage" / "loss.png").stat().st_size > 1000


def test_keep_best_ends_with_the_weights_of_the_best_dev_step(model_dir, corpus, dev_file, tmp_path, monkeypatch):
    scripted, snapshots = iter([0.1, 0.2, 0.6, 0.3, 0.4]), []

    def fake_score(self):  # a scripted dev curve whose best is step 4; remember the weights at each eval
        snapshots.append({n: p.detach().clone() for n, p in self.encoder.model.named_parameters() if "lora_" in n})
        return next(scripted)

    monkeypatch.setattr(DevEvaluator, "score", fake_score)
    runner = _runner(model_dir, tmp_path, data=corpus, max_steps=8, eval_every=2, eval_data=str(dev_file),
                     keep_best=True, precision="fp32")
    runner.run()
    best = snapshots[2]  # evaluations at steps 0, 2, 4, 6, 8
    saved_adapter = load_file(tmp_path / "stage" / "adapter" / "adapter_model.safetensors")
    final = {n.removeprefix("base_model.model."): p for n, p in saved_adapter.items()}
    assert all(torch.equal(final[n.replace(".default", "")], best[n]) for n in best)
    assert not all(torch.equal(snapshots[-1][n], best[n]) for n in best)
    saved = json.loads((tmp_path / "encoder" / "lm2vec_config.json").read_text())["training"]["mntp"]
    assert saved["best_step"] == 4 and saved["best_dev_spearman"] == 0.6
    with pytest.raises(RecipeError, match="keep_best needs eval_every"):
        StageConfig(objective="mntp", data="x", keep_best=True)


@pytest.mark.parametrize("name", ["annealed-simcse", "demo", "llm2vec-supervised", "llm2vec-unsupervised", "uni-simcse"])
def test_shipped_recipes_validate_and_load_by_name(name):
    recipe = load_recipe(name)
    assert recipe.stages and all(stage.max_steps >= 1 for stage in recipe.stages)
    assert load_recipe(f"recipes/{name}.yaml") == recipe  # the path README used before recipes moved


def test_unknown_recipe_names_the_built_in_ones(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found: nope.*built-in: annealed-simcse, demo, llm2vec-supervised"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "llm2vec-unsupervised.yaml")  # a path elsewhere is never swapped for a built-in
