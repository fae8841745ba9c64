"""MTEB integration: local loaders rebuild MTEB's test sets, the adapter gives mteb what it expects, and
the scores we report are mteb's own, computed on the vectors our encoder produced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, tiny_encoder
from scipy.stats import spearmanr

mteb = pytest.importorskip("mteb")
from datasets import Dataset
from mteb.types import PromptType
from torch.utils.data import DataLoader

from lm2vec.eval import local_data
from lm2vec.eval.cache import EmbeddingCache
from lm2vec.eval.mteb import MTEBEncoder, evaluate, local_task, run_task
from lm2vec.eval.mteb_instructions import default_instructions, load_instructions

pytestmark = pytest.mark.filterwarnings("ignore:The task .* is superseded")
STS_INSTRUCTION = "Retrieve semantically similar text:"


@pytest.fixture(scope="module")
def data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"benchmark data pack not found at {SHARED_DATA} (set LM2VEC_SHARED_DATA)")
    return SHARED_DATA


class HashEncoder:
    """Deterministic bag-of-hashed-words encoder that records its calls; the instruction adds its words.

    Word weights are continuous, so cosines rarely tie and Spearman does not hinge on float rounding."""

    name_or_path = "test/hash-bow"
    embedding_dim = 32

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []

    def fingerprint(self) -> str:
        return "hash-bow-v1"

    def encode(self, texts, instruction=None, batch_size=32, normalize=False, show_progress=None):
        self.calls.append((len(texts), instruction))
        out = np.full((len(texts), self.embedding_dim), 1e-3, dtype=np.float32)
        for i, text in enumerate(texts):
            for word in f"{instruction or ''} {text}".lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.embedding_dim] += (h >> 8) % 1000 / 500 - 1
        return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def mteb_stats(kind: str, task: str) -> dict:
    """MTEB's descriptive statistics of its hub copy of a task (shipped inside the mteb package)."""
    return json.loads((Path(mteb.__file__).parent / "descriptive_stats" / kind / f"{task}.json").read_text())


def test_get_task_online_path_builds_hub_tasks():
    """Online mode uses mteb's registry as is (no download happens until evaluation)."""
    from lm2vec.eval.mteb import get_tasks

    (task,) = get_tasks(["STS12"], data_dir=None)
    assert task.metadata.dataset["path"] == "mteb/sts12-sts" and not task.data_loaded


# ---- loaders: counts from the README, texts checked against MTEB's own statistics -----------------
def test_stsbenchmark_matches_mteb_hub_copy(data):
    cols = local_data.load_stsbenchmark(data)["default"]["test"]
    stats = mteb_stats("STS", "STSBenchmark")["test"]
    assert len(cols["score"]) == 1379
    assert (
        sum(map(len, cols["sentence1"])) + sum(map(len, cols["sentence2"])) == stats["number_of_characters"]
    )
    assert min(cols["score"]) == 0.0 and max(cols["score"]) == 5.0


def test_sickr_is_all_three_files(data):
    cols = local_data.load_sickr(data)["default"]["test"]
    assert len(cols["score"]) == 9927 == mteb_stats("STS", "SICK-R")["test"]["num_samples"]
    assert (
        sum(map(len, cols["sentence1"]))
        == mteb_stats("STS", "SICK-R")["test"]["text1_statistics"]["total_text_length"]
    )
    assert 1.0 <= min(cols["score"]) and max(cols["score"]) <= 5.0


@pytest.mark.parametrize(("year", "n"), [(12, 3108), (13, 1500), (14, 3750), (15, 3000), (16, 1186)])
def test_sts_years_pool_subsets_and_skip_unscored(data, year, n):
    cols = local_data.load_sts_year(data, year)["default"]["test"]
    stats = mteb_stats("STS", f"STS{year}")["test"]
    assert len(cols["score"]) == n == stats["num_samples"]
    assert np.mean(cols["score"]) == pytest.approx(stats["label_statistics"]["avg_score"], abs=1e-9)


def test_biosses_docx_tables_and_annotator_mean(data):
    cols = local_data.load_biosses(data)["default"]["test"]
    assert len(cols["score"]) == 100
    assert cols["sentence1"][0].startswith("It has recently been shown that Craf is essential")
    assert cols["score"][0] == 4.0 and cols["score"][99] == pytest.approx(1.8)  # (2+2+1+2+2)/5


def test_twitter_semeval2015_drops_debatable_pairs(data):
    cols = local_data.load_twitter_semeval2015(data)["default"]["test"]
    assert len(cols["labels"]) == 838 and sum(cols["labels"]) == 175
    assert cols["sentence1"][0] and cols["sentence2"][0]


def test_classification_loaders(data):
    banking = local_data.load_banking77(data)["default"]
    emotion = local_data.load_emotion(data)["default"]
    amazon = local_data.load_amazon_counterfactual(data)["en"]
    assert (len(banking["train"]["label"]), len(banking["test"]["label"])) == (10003, 3080)
    assert len(set(banking["test"]["label"])) == 77
    assert [len(emotion[s]["label"]) for s in ("train", "validation", "test")] == [16000, 2000, 2000]
    test_counts = np.bincount(emotion["test"]["label"]).tolist()  # mteb's label histogram of its test split
    labels = mteb_stats("Classification", "EmotionClassification")["test"]["label_statistics"]["labels"]
    assert test_counts == [labels[str(i)]["count"] for i in range(6)]
    assert [len(amazon[s]["label"]) for s in ("train", "validation", "test")] == [4018, 335, 670]
    stats = mteb_stats("Classification", "AmazonCounterfactualClassification")["test"][
        "hf_subset_descriptive_stats"
    ]
    assert sum(map(len, amazon["test"]["text"])) == stats["en"]["text_statistics"]["total_text_length"]


def test_scifact_rebuilds_beir_test_set(data):
    split = local_data.load_scifact(data)["default"]["test"]
    corpus, queries, qrels = split["corpus"], split["queries"], split["qrels"]
    assert len(corpus["id"]) == 5183 and len(queries["id"]) == 300
    assert sum(map(len, qrels.values())) == 339 and set(qrels) == set(queries["id"])
    # mteb reads a document as (title + " " + text).strip(): the totals equal those of MTEB's hub copy
    stats = mteb_stats("Retrieval", "SciFact")["test"]
    doc_chars = sum(len(f"{t} {x}".strip()) for t, x in zip(corpus["title"], corpus["text"], strict=True))
    assert doc_chars == stats["documents_text_statistics"]["total_text_length"]
    assert sum(map(len, queries["text"])) == stats["queries_text_statistics"]["total_text_length"]


def test_unknown_local_task_names_the_available_ones(data):
    with pytest.raises(KeyError, match="offline tasks"):
        local_data.load_local("NoSuchTask", data)


# ---- adapter ---------------------------------------------------------------------------------------
def batches(texts: list[str], batch_size: int = 3) -> DataLoader:
    """The shape of mteb's text DataLoader: batches are dicts with a 'text' list."""
    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)


def test_adapter_is_an_mteb_encoder_with_cosine_similarity():
    model = MTEBEncoder(HashEncoder())
    assert isinstance(model, mteb.EncoderProtocol)
    meta = model.mteb_model_meta
    assert meta.name == "test/hash-bow" and meta.revision == "hash-bow-v1" and meta.embed_dim == 32
    a, b = np.eye(2, dtype=np.float32), np.array([[2.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    assert np.allclose(np.asarray(model.similarity_pairwise(a, b)), [1.0, np.sqrt(0.5)])
    assert np.asarray(model.similarity(a, b)).shape == (2, 2)
    plain = HashEncoder()
    plain.name_or_path = "smollm2-135m"  # mteb insists on "organization/name"
    assert MTEBEncoder(plain).mteb_model_meta.name == "lm2vec/smollm2-135m"


def test_adapter_encodes_in_order_and_instructs_queries_not_documents():
    encoder = HashEncoder()
    model = MTEBEncoder(encoder)
    texts = [f"sentence number {i}" for i in range(7)]
    sts, scifact = mteb.get_task("STS12").metadata, mteb.get_task("SciFact").metadata
    kw = {"hf_split": "test", "hf_subset": "default"}

    out = model.encode(batches(texts), task_metadata=sts, prompt_type=None, **kw)  # symmetric: both sides
    assert out.shape == (7, 32) and out.dtype == np.float32
    assert np.array_equal(out, encoder.encode(texts, instruction=STS_INSTRUCTION))
    model.encode(batches(texts), task_metadata=scifact, prompt_type=PromptType.query, **kw)
    model.encode(batches(texts), task_metadata=scifact, prompt_type=PromptType.document, **kw)
    scifact_instruction = default_instructions()["SciFact"]
    assert [c[1] for c in encoder.calls[-2:]] == [scifact_instruction, None]


def test_user_instruction_file_overrides_and_metadata_prompt_is_the_fallback(tmp_path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps({"STS12": "Find a paraphrase:", "STS13": ""}))
    model = MTEBEncoder(HashEncoder(), load_instructions(path))
    meta = {
        name: mteb.get_task(name).metadata
        for name in ("STS12", "STS13", "NFCorpus", "SprintDuplicateQuestions")
    }
    assert model.instruction_for(meta["STS12"]) == "Find a paraphrase:"
    assert model.instruction_for(meta["STS13"]) is None  # an empty string switches it off
    assert (
        model.instruction_for(meta["SprintDuplicateQuestions"])
        == "Retrieve duplicate questions from Sprint forum:"
    )
    model.instructions.pop("NFCorpus")  # not in the table: mteb's own query prompt, LLM2Vec-styled
    assert model.instruction_for(meta["NFCorpus"], PromptType.query).endswith(":")


def test_real_encoder_through_the_adapter():
    """The lm2vec Encoder (tiny random llama) through mteb's protocol: shape, and instructions matter."""
    encoder = tiny_encoder("llama")
    model = MTEBEncoder(encoder)
    scifact = mteb.get_task("SciFact").metadata
    texts = ["a claim about cells", "another claim", "x"]
    kw = {"task_metadata": scifact, "hf_split": "test", "hf_subset": "default"}
    query = model.encode(batches(texts, 2), prompt_type=PromptType.query, **kw)
    doc = model.encode(batches(texts, 2), prompt_type=PromptType.document, **kw)
    assert query.shape == doc.shape == (3, encoder.embedding_dim)
    assert np.allclose(doc, encoder.encode(texts), atol=1e-5)
    assert not np.allclose(query, doc, atol=1e-4)  # the instruction is attended to, though not pooled


# ---- end to end: mteb's main score is the Spearman of our own cosines --------------------------------
def expected_sts_spearman(encoder, data: Path, n: int | None = None) -> float:
    cols = local_data.load_stsbenchmark(data)["default"]["test"]
    e1 = encoder.encode(cols["sentence1"][:n], instruction=STS_INSTRUCTION)
    e2 = encoder.encode(cols["sentence2"][:n], instruction=STS_INSTRUCTION)
    return float(spearmanr(cosine(e1, e2), cols["score"][:n]).statistic)


def test_evaluate_stsbenchmark_reports_mteb_spearman_of_our_cosines(data, tmp_path):
    encoder = HashEncoder()
    results = evaluate(encoder, ["STSBenchmark"], data_dir=str(data), output_dir=tmp_path)
    r = results["STSBenchmark"]
    assert r["main_metric"] == "cosine_spearman"
    assert r["main_score"] == pytest.approx(expected_sts_spearman(HashEncoder(), data), abs=1e-6)
    saved = json.loads((tmp_path / "mteb_results.json").read_text())
    assert saved["tasks"]["STSBenchmark"]["main_score"] == r["main_score"]
    assert saved["instructions"]["STSBenchmark"] == STS_INSTRUCTION and saved["fingerprint"] == "hash-bow-v1"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files behind


def test_mteb_scores_the_real_encoder_on_a_slice(data):
    """Same check with the lm2vec Encoder (tiny random llama) on the first 200 STSBenchmark pairs."""
    encoder = tiny_encoder("llama")
    task = local_task("STSBenchmark", data)
    task.dataset["default"]["test"] = task.dataset["default"]["test"].select(range(200))
    result = run_task(MTEBEncoder(encoder), task, batch_size=64)
    assert result["main_score"] == pytest.approx(expected_sts_spearman(encoder, data, 200), abs=1e-4)


def test_every_local_task_builds_an_mteb_task(data):
    for name in local_data.LOADERS:
        task = local_task(name, data)
        assert task.data_loaded and task.metadata.name == name
        for subset in task.hf_subsets:
            assert all(split in task.dataset[subset] for split in task.eval_splits)


# ---- cache -------------------------------------------------------------------------------------------
def test_cache_hit_avoids_reencoding_and_resumes_interrupted_calls(tmp_path):
    encoder = HashEncoder()
    model = MTEBEncoder(encoder, cache=EmbeddingCache(tmp_path, encoder.fingerprint()), chunk_size=4)
    texts = [f"text {i}" for i in range(10)]  # chunks of 4, 4, 2
    first = model.embed(texts, "Do it:", "T", batch_size=8)
    assert len(encoder.calls) == 3
    again = model.embed(texts, "Do it:", "T", batch_size=8)
    assert len(encoder.calls) == 3 and np.array_equal(first, again)
    next(iter(tmp_path.rglob("*.npy"))).unlink()  # as if the run had died before that chunk
    model.embed(texts, "Do it:", "T", batch_size=8)
    assert len(encoder.calls) == 4
    model.embed(texts, "Another:", "T", batch_size=8)  # the instruction is part of the key
    assert len(encoder.calls) == 7


def test_evaluate_twice_hits_the_cache(data, tmp_path):
    encoder = HashEncoder()
    evaluate(encoder, ["BIOSSES"], data_dir=str(data), output_dir=tmp_path)
    n_calls = len(encoder.calls)
    second = evaluate(encoder, ["BIOSSES"], data_dir=str(data), output_dir=tmp_path)
    assert len(encoder.calls) == n_calls > 0 and 0 < second["BIOSSES"]["main_score"] < 1


def test_fewer_classification_experiments_encode_fewer_training_texts(data, tmp_path):
    """n_experiments (CPU-sized benchmarks) shrinks the union of few-shot training samples mteb encodes."""
    counts = {}
    for n in (1, 3):
        encoder = HashEncoder()
        result = evaluate(encoder, ["EmotionClassification"], data_dir=str(data), output_dir=tmp_path / str(n),
                          limit=30, n_experiments=n, use_cache=False)["EmotionClassification"]
        assert result["n_experiments"] == n and 0 < result["main_score"] < 1
        counts[n] = sum(size for size, _ in encoder.calls)
    # each experiment draws a fresh few-shot sample per label; the 30-row eval splits are encoded either way
    assert counts[1] < counts[3]
