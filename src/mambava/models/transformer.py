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

import functools

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
        a = self._attend(self.qkv(x), self.attn_dropout if self.training else 0.0)
        x = self.norm1(x + self.drop(self.out(a)))
        return self.norm2(x + self.drop(self.ff(x)))

    def _attend(self, qkv: torch.Tensor, p: float) -> torch.Tensor:
        """(b, l, 3 d) projections -> (b, l, d): causal attention over the last ``window`` frames."""
        b, l, d3 = qkv.shape
        h, w = self.n_heads, self.window
        if self.causal and 0 < w < l and qkv.device.type == "cpu" and p == 0.0 and torch.is_grad_enabled():
            # Blocks of ``query_block`` queries attend to the keys their band reaches, under a band
            # mask: key j is visible to query i when i - w < j <= i. Memory and time linear in l.
            # PyTorch's CPU flash kernel skips no masked pair inside a call, so short blocks (128
            # queries against w + 127 keys, against 512 x 1,024 at w = 512) do a third less work.
            return _BandAttentionCPU.apply(qkv, h, _cpu_band_masks(l, w, min(self.query_block, w), qkv.dtype))
        q, k, v = _heads_view(qkv, h)
        if not self.causal or w <= 0 or l <= w:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        else:  # the same blocks through SDPA (inference, other devices)
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            a = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, k0:e], v[:, :, k0:e], attn_mask=m,
                                                          dropout_p=p)
                           for s, e, k0, m in _band_blocks(l, w, min(self.query_block, w), q.device)], dim=2)
        return a.transpose(1, 2).reshape(b, l, d3 // 3)

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


@functools.lru_cache(maxsize=16)
def _cpu_band_masks(length: int, w: int, c: int, dtype: torch.dtype) -> tuple:
    """_band_blocks' blocks with the additive mask the CPU flash kernel takes (0 or -inf, of the
    queries' dtype, as SDPA converts a boolean one); built once per (length, window, block)."""
    return tuple((s, e, k0, torch.zeros(m.shape, dtype=dtype).masked_fill_(~m, float("-inf")))
                 for s, e, k0, m in _band_blocks(length, w, c, "cpu"))


class _BandAttentionCPU(torch.autograd.Function):
    """The blocked band on PyTorch's CPU flash kernel, forward and backward, straight from the
    qkv projection's output (b, l, 3 d) to the attention's (b, l, d).

    The kernel reads q, k and v where the projection wrote them (strided views, no copies) and
    each block's output is written into its frames of one (b, l, d) tensor; the backward adds each
    block's gradients into one (b, l, 3 d) buffer, the layout the projection's backward reads.
    (Splitting qkv into three tensors first cost a copy each way and a stack of the three
    gradients; autograd through the blocks' slices would fill a zero tensor the size of q, k and v
    for every block.) The kernel's inputs and the order of the additions are those of the split
    form, so the values are the same bytes (tested)."""

    @staticmethod
    def forward(ctx, qkv, heads, blocks):
        b, l, d3 = qkv.shape
        q, k, v = _heads_view(qkv, heads)
        out = qkv.new_empty(b, l, heads, d3 // (3 * heads))
        outs, lses = [], []
        for s, e, k0, mask in blocks:
            o, lse = _flash_fwd(q[:, :, s:e], k[:, :, k0:e], v[:, :, k0:e], attn_mask=mask)
            out[:, s:e] = o.transpose(1, 2)
            outs.append(o)
            lses.append(lse)
        ctx.blocks, ctx.heads = blocks, heads
        ctx.save_for_backward(qkv, *outs, *lses)
        return out.view(b, l, d3 // 3)

    @staticmethod
    def backward(ctx, grad):
        qkv, *rest = ctx.saved_tensors
        n = len(ctx.blocks)
        outs, lses = rest[:n], rest[n:]
        b, l, d3 = qkv.shape
        q, k, v = _heads_view(qkv, ctx.heads)
        g = grad.contiguous().view(b, l, ctx.heads, -1).transpose(1, 2)
        gqkv = torch.zeros_like(qkv)
        gq, gk, gv = _heads_view(gqkv, ctx.heads)
        for (s, e, k0, mask), o, lse in zip(ctx.blocks, outs, lses):
            dq, dk, dv = _flash_bwd(g[:, :, s:e], q[:, :, s:e], k[:, :, k0:e], v[:, :, k0:e], o, lse, 0.0, False,
                                    attn_mask=mask)
            gq[:, :, s:e] = dq
            gk[:, :, k0:e] += dk
            gv[:, :, k0:e] += dv
        return gqkv, None, None


def _heads_view(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, l, 3 d) -> q, k, v as (b, heads, l, d / heads) views of it (no copy)."""
    b, l, d3 = qkv.shape
    t = qkv.view(b, l, 3, heads, d3 // (3 * heads))
    return t[:, :, 0].transpose(1, 2), t[:, :, 1].transpose(1, 2), t[:, :, 2].transpose(1, 2)


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
