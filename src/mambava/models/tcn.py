"""Temporal convolutional network (Bai, Kolter and Koltun, 2018) as used by Mamba-VA.

Each level is a residual block of two causal, dilated, weight-normalised convolutions with
PReLU and dropout; a 1x1 convolution matches widths on the residual path where they differ; a
PReLU follows the sum. Level i has dilation 2**i, so the receptive field of the whole network is
1 + 2 (kernel - 1)(2**levels - 1) frames of the past (kernel 15, 4 levels: 421 frames).

Causality is by left padding, which is what "pad both sides, then chomp the right" computes,
without the wasted right half. Weight norm is ``torch.nn.utils.parametrizations.weight_norm``:
its state dict holds g (``...parametrizations.weight.original0``) and v (``original1``), and it
also loads the older ``weight_g``/``weight_v`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class TemporalBlock(nn.Module):
    """(batch, n_in, length) -> (batch, n_out, length), causal."""

    def __init__(self, n_in: int, n_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel, dilation=dilation))
        self.act1 = nn.PReLU()
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel, dilation=dilation))
        self.act2 = nn.PReLU()
        self.drop2 = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop1(self.act1(self.conv1(F.pad(x, (self.pad, 0)))))
        out = self.drop2(self.act2(self.conv2(F.pad(out, (self.pad, 0)))))
        res = x if self.downsample is None else self.downsample(x)
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
        x = x.transpose(1, 2)
        for level in self.levels:
            x = level(x)
        return x.transpose(1, 2)
