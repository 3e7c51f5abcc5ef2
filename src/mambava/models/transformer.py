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
        # Blocks of ``query_block`` queries attend to the keys their band reaches, under a band
        # mask: key j is visible to query i when i - w < j <= i. Memory and time linear in l.
        # PyTorch's CPU flash kernel skips no masked pair inside a call, so short blocks (128
        # queries against w + 127 keys, against 512 x 1,024 at w = 512) do a third less work.
        blocks = _band_blocks(l, w, min(self.query_block, w), q.device)
        if q.device.type == "cpu" and p == 0.0 and torch.is_grad_enabled():
            return _BandAttentionCPU.apply(q, k, v, blocks)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, k0:b], v[:, :, k0:b], attn_mask=m,
                                                         dropout_p=p) for a, b, k0, m in blocks], dim=2)

    query_block: int = 128  # queries per attention call in the banded path (same result for any)


def _band_blocks(length: int, w: int, c: int, device) -> list[tuple[int, int, int, torch.Tensor]]:
    """(first query, end, first key, band mask) per block of ``c`` queries."""
    blocks = []
    for start in range(0, length, c):
        stop = min(start + c, length)
        k0 = max(0, start - w + 1)
        qpos = torch.arange(start, stop, device=device)
        kpos = torch.arange(k0, stop, device=device)
        blocks.append((start, stop, k0, (kpos[None, :] <= qpos[:, None]) & (kpos[None, :] > qpos[:, None] - w)))
    return blocks


_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _BandAttentionCPU(torch.autograd.Function):
    """The blocked band on PyTorch's CPU flash kernel, forward and backward, with each block's
    gradients added into one buffer per input. (Autograd through the blocks' slices would fill a
    zero tensor the size of q, k and v for every block: a tenth of a training step.)"""

    @staticmethod
    def forward(ctx, q, k, v, blocks):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        # the kernel takes an additive mask of the query's dtype (SDPA converts a boolean one so)
        blocks = [(a, b, k0, torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill_(~m, float("-inf")))
                  for a, b, k0, m in blocks]
        outs, lses = [], []
        for a, b, k0, mask in blocks:
            o, lse = _flash_fwd(q[:, :, a:b], k[:, :, k0:b], v[:, :, k0:b], attn_mask=mask)
            outs.append(o)
            lses.append(lse)
        ctx.blocks = blocks
        ctx.save_for_backward(q, k, v, *outs, *lses)
        return torch.cat(outs, dim=2)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *rest = ctx.saved_tensors
        n = len(ctx.blocks)
        outs, lses = rest[:n], rest[n:]
        grad = grad.contiguous()
        gq, gk, gv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (a, b, k0, mask), o, lse in zip(ctx.blocks, outs, lses):
            dq, dk, dv = _flash_bwd(grad[:, :, a:b], q[:, :, a:b], k[:, :, k0:b], v[:, :, k0:b], o, lse, 0.0, False,
                                    attn_mask=mask)
            gq[:, :, a:b] = dq
            gk[:, :, k0:b] += dk
            gv[:, :, k0:b] += dv
        return gq, gk, gv, None


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
