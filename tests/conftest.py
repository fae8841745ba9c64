"""Tiny random decoders built from configs (2 layers, hidden 64) and a byte-level tokenizer for them.

Real architectures, random weights: they exercise the same attention and masking code as the real
checkpoints in a fraction of a second, which is what unit tests need.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# CLI output is matched on content: a wide console, so rich never wraps a long temp path mid-message.
os.environ["COLUMNS"] = "250"

import pytest  # noqa: E402
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 300  # 256 byte tokens + specials, rounded up
COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
SPECIAL = {"gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, n_inner=128, vocab_size=VOCAB,
                        bos_token_id=1, eos_token_id=2)}
ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2",
                 "olmo2", "starcoder2", "granite", "cohere", "stablelm", "smollm3"]
SHARED_DATA = Path(os.environ.get("LM2VEC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def tiny_config(model_type: str, attn: str = "sdpa"):
    """A 2-layer config of the given architecture with deterministic small sizes."""
    kwargs = SPECIAL.get(model_type, COMMON)
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = attn
    return config


def tiny_model(model_type: str = "llama", attn: str = "sdpa", seed: int = 0, causal_lm: bool = False):
    """Random-weight base model (or CausalLM) in eval mode, seeded so tests are repeatable."""
    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    model = cls.from_config(tiny_config(model_type, attn), attn_implementation=attn)
    return model.eval()


def byte_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with no merges (one token per byte) and real character offsets."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({ch: i + 3 for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


def tiny_encoder(model_type: str = "llama", attn: str = "sdpa", **config):
    """An Encoder around a tiny random model, bidirectional unless told otherwise."""
    from lm2vec import Encoder, EncoderConfig

    return Encoder(tiny_model(model_type, attn), byte_tokenizer(), EncoderConfig(**config))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Llama CausalLM saved like a real checkpoint, with the byte tokenizer (read-only)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", causal_lm=True).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def tiny_bert(path: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with the byte tokenizer, saved at `path`: a stand-in for the
    contextual token's pre-encoder (all-MiniLM-L6-v2 in real use)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    byte_tokenizer(add_bos=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pre_encoder_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def killed_at_step(monkeypatch, step: int, run) -> None:
    """Run `run()` with the training loop killed (KeyboardInterrupt) when it reaches `step` (0-based)."""
    from lm2vec.training.loop import StageRunner

    original = StageRunner.train_step

    def crash(self, at):
        if at == step:
            raise KeyboardInterrupt("killed")
        return original(self, at)

    monkeypatch.setattr(StageRunner, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(StageRunner, "train_step", original)


def spawn_ranks(worker, args: tuple, world: int = 2) -> None:
    """Run `worker(rank, *args)` in `world` fresh processes (mp.spawn); a rank's exception fails the test."""
    mp.spawn(_run_then_exit, args=(worker, args), nprocs=world, join=True)


def _run_then_exit(rank: int, worker, args: tuple) -> None:
    """The worker's results are in the files it wrote; interpreter finalization after that only tears down
    torch's threads, and CI saw it abort a rank there once in a while ("terminate called without an active
    exception", 2 of 7 spawning tests in one run; 0 of ~200 spawns here). Skipping it keeps a passing
    worker passing; an exception still reaches mp.spawn as before."""
    worker(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def gloo_group(rank: int, init_file: str, world: int = 2):
    """A gloo process group for a spawned worker; every rank finishes its collectives before any
    destroys the group (as lm2vec.core.distributed.shutdown does)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
