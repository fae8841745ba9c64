"""Masked next-token prediction (MNTP), step 2 of LLM2Vec (BehnamGhader et al. 2024, arXiv 2404.05961, §2.2).

Once attention is bidirectional, a decoder is taught to use future context by masking tokens and
predicting each masked token i from the output at position i-1: the position the causal LM head
was trained to read its next token from. So the first real token of a sequence is never a target.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # ignored by F.cross_entropy, as in Hugging Face labels


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
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
