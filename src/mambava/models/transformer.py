"""A Transformer encoder for the swap ablation (Mamba -> self-attention), same interface.

Post-norm layers like the Mamba stack, x = LN(x + Attn(x)); x = LN(x + FF(x)), with a feed-
forward width equal to d_model: the smallest conventional layer, 6 d^2 weights against Mamba's
~3.3 d^2 at expand 1 (attention alone is 4 d^2, so a layer cannot be made smaller). Sinusoidal
positions are computed for any length, and attention uses ``scaled_dot_product_attention``
(``is_causal`` for the causal variant), so no (length, length) mask is ever built; time and the
attention computation still grow with length squared.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) sine/cosine position codes (Vaswani et al., 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.to(dtype)


class TransformerLayer(nn.Module):
    """(batch, length, d_model) -> same; post-norm self-attention and feed-forward."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = self.norm1(x + self.drop(self.out(a.transpose(1, 2).reshape(b, l, d))))
        return self.norm2(x + self.drop(self.ff(x)))


class TransformerEncoder(nn.Module):
    """Positions + ``n_layers`` layers: (batch, length, d_model) -> same."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, dropout: float, causal: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, dropout, causal) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x)
        return x
