"""Masked next-token prediction (MNTP), step 2 of LLM2Vec (BehnamGhader et al. 2024, arXiv 2404.05961, §2.2).

Once attention is bidirectional, a decoder is taught to use future context by masking tokens and
predicting each masked token i from the output at position i-1: the position the causal LM head
was trained to read its next token from. So the first real token of a sequence is never a target.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lm2vec.core.batching import pad_batch
from lm2vec.core.encoder import Encoder
from lm2vec.training.objectives.base import load_corpus
from lm2vec.training.recipe import StageConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # ignored by F.cross_entropy, as in Hugging Face labels


def replacement_ids(tokenizer, model_vocab_size: int) -> torch.Tensor:
    """Ids a random replacement may take: the tokenizer's real, non-special tokens. `config.vocab_size`
    is often padded past the tokenizer (rows that were never trained), so it is not the range to draw from."""
    specials = set(tokenizer.all_special_ids)
    ids = sorted(i for i in tokenizer.get_vocab().values() if i < model_vocab_size and i not in specials)
    return torch.tensor(ids, dtype=torch.long)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int | torch.Tensor,
    rate: float = 0.2,
    strategy: str = "80-10-10",
    special_token_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select each maskable token with probability `rate`; return (masked_ids, labels).

    labels is -100 except at selected positions, which keep the original id. Padding, special tokens
    and the first real token of each row (left or right padding) are never selected: under MNTP the
    first real token has no real predecessor to be predicted from.
    strategy "80-10-10" (BERT, used by LLM2Vec for Llama): selected -> 80% mask, 10% random, 10% kept.
    strategy "all-mask" (LLM2Vec used rate 0.8 all-mask for Mistral): every selected -> mask token.
    Selection is Bernoulli per token, as in Hugging Face's MLM collator that LLM2Vec used; `generator`
    must live on input_ids' device. Llama-style tokenizers have no mask token; LLM2Vec used "_".
    `vocab_size`: an int draws random ids from range(vocab_size); a tensor draws from its ids.
    """
    if strategy not in ("80-10-10", "all-mask"):
        raise ValueError(f"unknown masking strategy {strategy!r}; use '80-10-10' or 'all-mask'")
    real = attention_mask.bool()  # (B, T)
    first_real = real.int().argmax(dim=1, keepdim=True)  # (B, 1) index of the first 1 in each row
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    specials = torch.tensor(list(special_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    maskable = real & (positions > first_real) & ~torch.isin(input_ids, specials)  # (B, T)

    def rand() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device)

    selected = maskable & (rand() < rate)  # (B, T)
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    if strategy == "all-mask":
        return torch.where(selected, mask_token_id, input_ids), labels
    u = rand()  # one draw decides mask / random / keep, so the three cases are disjoint
    if isinstance(vocab_size, torch.Tensor):  # draw from these ids (see `replacement_ids`)
        picks = torch.randint(len(vocab_size), input_ids.shape, generator=generator, device=input_ids.device)
        random_ids = vocab_size.to(input_ids.device)[picks].to(input_ids.dtype)
    else:
        random_ids = torch.randint(
            vocab_size, input_ids.shape, generator=generator, device=input_ids.device, dtype=input_ids.dtype
        )
    masked_ids = torch.where(selected & (u < 0.8), mask_token_id, input_ids)
    masked_ids = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, masked_ids)
    return masked_ids, labels


def mntp_loss_from_hidden(
    hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """Cross-entropy of each labelled token i predicted from hidden[i-1] (LLM2Vec §2.2, MNTP).

    Only the N labelled rows go through lm_head: with ~20% masking and vocabularies up to 262k,
    full (B, T, V) logits would be mostly wasted memory. `softcap` reproduces the tanh logit
    soft-capping that some CausalLM heads apply (gemma2 `final_logit_softcapping`).
    Returns a 0-dim loss; with no labelled token it is 0 yet still connected to hidden and lm_head,
    so backward (and DDP's gradient hooks) run as usual.
    """
    targets = labels[:, 1:]  # (B, T-1) token i ...
    selected = targets != IGNORE_INDEX  # (B, T-1)
    rows = hidden[:, :-1][selected]  # (N, D) ... read from position i-1
    logits = lm_head(rows).float()  # (N, V)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if rows.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets[selected])


def mntp_loss(
    backbone: nn.Module,
    lm_head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    config=None,
) -> torch.Tensor:
    """MNTP loss of a bidirectional backbone (e.g. `AutoModelForCausalLM...base_model`) and its LM head.

    `lm_head` is `model.get_output_embeddings()`. The logit soft-capping of the CausalLM is read from
    `config` or else `backbone.config`. Other per-architecture logit scalings (granite, cohere) are
    not applied: they only change the effective temperature of this loss.
    """
    config = config if config is not None else getattr(backbone, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
    return mntp_loss_from_hidden(hidden, lm_head, labels, softcap=softcap)


def pack_blocks(documents: list[list[int]], block: int, separator: int | None, prefix: list[int]) -> list[list[int]]:
    """Concatenate token lists (a `separator` after each document) and cut the stream into blocks of
    `block` tokens, each opened by `prefix` (the tokenizer's BOS, if it adds one). Every stream token
    lands in exactly one block; the last block may be shorter (it is padded, never dropped).

    Documents share a block as in llm2vec's run_mntp (Hugging Face `group_texts`): attention is
    bidirectional within a block, across document boundaries, and never between blocks. The loss
    keeps its definition: masked token i is predicted from the output at i-1 of its own block.
    """
    room = block - len(prefix)
    if room < 1:
        raise ValueError(f"max_length {block} leaves no room after the {len(prefix)} prefix tokens")
    stream = [t for doc in documents for t in (doc + ([separator] if separator is not None else []))]
    return [prefix + stream[start : start + room] for start in range(0, len(stream), room)]


class MNTPTask:
    """Masked next-token prediction: mask tokens, predict token i from the output at i-1."""

    def __init__(self, stage: StageConfig, encoder: Encoder, lm_head: torch.nn.Module) -> None:
        self.stage, self.encoder, self.lm_head = stage, encoder, lm_head
        tokenizer = encoder.tokenizer
        # The vocabulary entry itself, as llm2vec does: on SentencePiece tokenizers tokenizer("_") gives "▁_",
        # yet "_" is a token of its own.
        self.mask_id = tokenizer.convert_tokens_to_ids(stage.mask_token)
        if self.mask_id is None or self.mask_id == tokenizer.unk_token_id:
            raise ValueError(f"mask_token {stage.mask_token!r} is not in this tokenizer's vocabulary")
        self.specials = tokenizer.all_special_ids
        self.vocab = replacement_ids(tokenizer, encoder.model.config.get_text_config().vocab_size)
        self.softcap = getattr(encoder.model.config.get_text_config(), "final_logit_softcapping", None)

    def load_examples(self) -> list[list[int]]:
        """Token-id rows: packed blocks of max_length tokens, or one (truncated) text per row."""
        texts = load_corpus(self.stage)
        if not self.stage.pack:
            return [t.ids for t in self.encoder.tokenize([(None, text) for text in texts])]
        tokenizer = self.encoder.tokenizer
        documents = tokenizer(texts, add_special_tokens=False)["input_ids"]
        with_specials = tokenizer("x")["input_ids"]
        prefix = with_specials[: len(with_specials) - len(tokenizer("x", add_special_tokens=False)["input_ids"])]
        blocks = pack_blocks(documents, self.stage.max_length, tokenizer.eos_token_id, prefix)
        logger.info("MNTP: %d texts packed into %d blocks of %d tokens", len(texts), len(blocks), self.stage.max_length)
        return blocks

    def lengths(self, examples: list[list[int]]) -> list[int]:
        return [len(ids) for ids in examples]

    def collate(self, rows: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, [0] * len(rows), self.encoder.pad_token_id, self.encoder.config.padding_side)
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.mask_id, self.vocab,
                                     self.stage.mask_rate, self.stage.mask_strategy, self.specials, generator)
        return {**batch, "input_ids": masked, "labels": labels}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder.hidden_states(batch)  # (B, T, D)
        return mntp_loss_from_hidden(hidden, self.lm_head, batch["labels"].to(hidden.device), softcap=self.softcap)
