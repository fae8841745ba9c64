"""Latent-attention pooling (NV-Embed, Lee et al. 2024, arXiv 2405.17428, §3.2): a trainable layer
between the token states and the mean.

Each token state is a query that attends to a trainable latent array (r latents of width d, keys and
values alike); a GEGLU MLP follows; both add to the token state (residual). The encoder then pools the
result as usual (NV-Embed: mean over the text's tokens, instruction excluded). The paper's reason: a
plain mean dilutes the key phrases and the last token over-weights the end; the latents act as a learned
dictionary each token is re-expressed in.

The layout is that of NV-Embed's released LatentAttentionModel (modeling_nvembed.py): LayerNorm before
the attention (on tokens and latents) and before the MLP, 8 heads each as wide as the model (inner width
8d), no biases in the attention, MLP of width 4d, r = 512. Differences on purpose:
- the two output projections start at zero, so an untrained layer is the identity: an encoder with the
  option on starts exactly where plain mean pooling is and training moves it from there (as LoRA starts
  with B = 0); NV-Embed initialises them randomly;
- no L2 normalisation inside (NV-Embed's output_normalize): `encode(normalize=True)` does it;
- float32 whatever the backbone's dtype (the layer is small; it trains in float32 like LoRA weights).
A token attends to the latents only, never to other tokens, so padding and batch composition cannot
change a text's vector. No dropout: train and eval mode compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LatentAttention(nn.Module):
    """(B, T, d) token states -> (B, T, d) states re-expressed through `latents` learned vectors."""

    def __init__(self, dim: int, latents: int = 512, heads: int = 8, mlp_mult: int = 4) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim  # NV-Embed: every head as wide as the model
        self.latents = nn.Parameter(torch.randn(latents, dim))
        self.norm_tokens, self.norm_latents, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.mlp_in = nn.Linear(dim, 2 * mlp_mult * dim)  # GEGLU: half values, half gates
        self.mlp_out = nn.Linear(mlp_mult * dim, dim)
        for layer in (self.to_out, self.mlp_out):  # identity at the start (see the module docstring)
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.mlp_out.bias)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-attention from the tokens (B, T, d) to the latents; returns (B, T, d)."""
        batch, length, _ = x.shape
        q = self.to_q(self.norm_tokens(x)).view(batch, length, self.heads, -1).transpose(1, 2)  # (B, h, T, e)
        k, v = self.to_kv(self.norm_latents(self.latents)).chunk(2, dim=-1)  # (r, h*e) each
        k, v = (t.view(t.shape[0], self.heads, -1).transpose(0, 1).expand(batch, -1, -1, -1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, e)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = states.float()  # (B, T, d)
        x = x + self.attend(x)
        values, gates = self.mlp_in(self.norm_mlp(x)).chunk(2, dim=-1)
        return x + self.mlp_out(values * F.gelu(gates))
