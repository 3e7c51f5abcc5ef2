"""Temporal convolutional network (Bai, Kolter and Koltun, 2018) as used by Mamba-VA.

Each level is a residual block of two causal, dilated, weight-normalised convolutions with
PReLU and dropout; a 1x1 convolution matches widths on the residual path where they differ; a
PReLU follows the sum. Level i has dilation 2**i, so the receptive field of the whole network is
1 + 2 (kernel - 1)(2**levels - 1) frames of the past (kernel 15, 4 levels: 421 frames).

Causality is by left padding, which is what "pad both sides, then chomp the right" computes,
without the wasted right half. Weight norm is ``torch.nn.utils.parametrizations.weight_norm``:
its state dict holds g (``...parametrizations.weight.original0``) and v (``original1``), and it
also loads the older ``weight_g``/``weight_v`` keys.

**Channels last, convolution as a matrix product.** The blocks work on (batch, length, channels),
the layout of the rest of the model, and keep ``nn.Conv1d`` modules only as holders of the
weights (same state dict). A causal convolution of kernel k and dilation d is one matrix product
of the input with the k taps stacked, (b, l, c_in) @ (c_in, k c_out), then k - 1 shifted adds:
y[t] = sum_j W_j x[t - (k - 1 - j) d]. On a CPU this costs about a third of ``F.conv1d`` with its
transposes and padding for these narrow layers (``benchmarks/bench_temporal.py --parts``), and it
is the same sum (tests compare it with ``F.conv1d``). PReLU (one slope) is written as
relu(x) - a relu(-x), the same numbers, whose backward is three times faster than ``F.prelu``'s
on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class _ShiftSum(torch.autograd.Function):
    """(b, l, k, c) taps -> (b, l, c): y[:, t] = sum_j taps[:, t - shifts[j], j] (zero before 0).

    Autograd through k slices would zero-fill a tensor the size of ``taps`` per slice in the
    backward; this writes each tap's gradient once."""

    @staticmethod
    def forward(ctx, taps: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
        length = taps.shape[1]
        ctx.shifts = shifts
        y = taps[:, :, shifts.index(0)].clone()
        for j, s in enumerate(shifts):
            if 0 < s < length:
                y[:, s:] += taps[:, : length - s, j]
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        b, length, c = g.shape
        grad = g.new_empty(b, length, len(ctx.shifts), c)
        for j, s in enumerate(ctx.shifts):
            s = min(s, length)
            grad[:, : length - s, j] = g[:, s:]
            grad[:, length - s:, j] = 0.0
        return grad, None


def causal_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv``'s weights applied causally (left padding) to channels-last x: (b, l, c_in) -> (b, l, c_out)."""
    weight = conv.weight  # (c_out, c_in, k); weight norm recomputes it here
    c_out, c_in, k = weight.shape
    if k == 1:
        return F.linear(x, weight[:, :, 0], conv.bias)
    b, length, _ = x.shape
    d = conv.dilation[0]
    taps = F.linear(x, weight.permute(2, 0, 1).reshape(k * c_out, c_in)).view(b, length, k, c_out)
    y = _ShiftSum.apply(taps, tuple((k - 1 - j) * d for j in range(k)))
    return y if conv.bias is None else y + conv.bias


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameter), computed as relu(x) - a relu(-x): the same values and a
    backward three times faster on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_parameters != 1:
            return super().forward(x)
        return F.relu(x) - self.weight * F.relu(-x)


class TemporalBlock(nn.Module):
    """(batch, length, n_in) -> (batch, length, n_out), causal."""

    def __init__(self, n_in: int, n_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel, dilation=dilation))
        self.act1 = PReLU()
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel, dilation=dilation))
        self.act2 = PReLU()
        self.drop2 = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        self.act = PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop1(self.act1(causal_conv(x, self.conv1)))
        out = self.drop2(self.act2(causal_conv(out, self.conv2)))
        res = x if self.downsample is None else causal_conv(x, self.downsample)
        return self.act(out + res)


class TCN(nn.Module):
    """Stack of temporal blocks: (batch, length, n_in) -> (batch, length, channels[-1]).

    ``channels`` are the output widths of the levels; level 0 reads ``n_in``.
    """

    def __init__(self, n_in: int, channels: Sequence[int], kernel: int = 15, dropout: float = 0.3):
        super().__init__()
        widths = [n_in, *channels]
        self.levels = nn.ModuleList(
            TemporalBlock(widths[i], widths[i + 1], kernel, 2**i, dropout) for i in range(len(channels))
        )
        self.receptive_field = 1 + 2 * (kernel - 1) * (2 ** len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x
