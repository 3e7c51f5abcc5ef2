"""A Transformer encoder for the swap ablation (Mamba -> self-attention), same interface.

Post-norm layers like the Mamba stack, x = LN(x + Attn(x)); x = LN(x + FF(x)), with a feed-
forward width equal to d_model: the smallest conventional layer, 6 d^2 weights against Mamba's
~3.3 d^2 at expand 1 (attention alone is 4 d^2, so a layer cannot be made smaller).

**Positions.** A model trained on windows of a few hundred frames is scored on whole videos of
thousands. Absolute position codes (the earlier sinusoids) would then be read at positions never
seen in training, which confounds the ablation. Here attention is *local and causal*: each frame
attends to itself and the ``window - 1`` frames before it, and no position code is added (the
causal mask orders the frames; "NoPE", Haviv et al. 2022). Trained on windows of ``window``
frames, the model sees at inference exactly the context it was trained with, at any video
length, and the cost is linear in the length. ``window`` = 0 means unlimited (full causal
attention, quadratic). The non-causal variant (``causal: false``) attends to the whole
sequence (a test of the causality tests, not a study variant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TransformerLayer(nn.Module):
    """(batch, length, d_model) -> same; post-norm self-attention and feed-forward."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, window: int = 0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.causal = causal
        self.window = window
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        # No dropout on the attention weights: on a CPU it sends scaled_dot_product_attention to
        # its unfused path (3.5x slower training here); dropout stays on both residual branches.
        self.attn_dropout = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = self._attend(q, k, v, self.attn_dropout if self.training else 0.0)
        x = self.norm1(x + self.drop(self.out(a.transpose(1, 2).reshape(b, l, d))))
        return self.norm2(x + self.drop(self.ff(x)))


    def _attend(self, q, k, v, p: float) -> torch.Tensor:
        """(b, h, l, dh) each -> (b, h, l, dh): causal attention over the last ``window`` frames."""
        l, w = q.shape[2], self.window
        if not self.causal or w <= 0 or l <= w:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        # Blocks of w queries attend to their own block and the one before, through a band mask:
        # key j is visible to query i when i - w < j <= i. Memory and time linear in l.
        out = torch.empty_like(q)
        qi = torch.arange(w, device=q.device)
        for start in range(0, l, w):
            stop = min(start + w, l)
            k0 = max(0, start - w)
            qpos = start + qi[: stop - start]
            kpos = torch.arange(k0, stop, device=q.device)
            mask = (kpos[None, :] <= qpos[:, None]) & (kpos[None, :] > qpos[:, None] - w)
            out[:, :, start:stop] = F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, k0:stop], v[:, :, k0:stop], attn_mask=mask, dropout_p=p)
        return out


class TransformerEncoder(nn.Module):
    """``n_layers`` layers of local causal attention (module doc): (batch, length, d_model) -> same."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, dropout: float, causal: bool, window: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, dropout, causal, window) for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
