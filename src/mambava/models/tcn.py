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

**One pass for the shifted sum and what follows it (CPU).** After the matrix product, a block's
first convolution needs its shifted sum, bias and PReLU, and its second those plus the residual
sum and the block's last PReLU: about ten element-wise PyTorch kernels each way over (b, l, c)
tensors, most of a TCN training step's time besides the products (``benchmarks/bench_temporal.py
--ops``). On CPU tensors they run as one numba loop forward and one backward (``_ConvAct``). The
forward computes the same float operations in the same order as the PyTorch form (bit-identical
outputs and input gradients, tested); the bias's and slopes' gradients are sums over the batch
and time, accumulated here in float64, so they differ from PyTorch's float32 reductions in the
last bits. Other devices, CPU autocast, several-slope PReLUs and kernel 1 take the PyTorch form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

try:  # numba is a dependency (the CPU scan); without it the TCN takes the PyTorch form
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None


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


def _taps(x: torch.Tensor, conv: nn.Conv1d) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(b, l, c_in) -> the k taps of ``conv`` at every frame, (b, l, k, c_out), and their shifts."""
    weight = conv.weight  # (c_out, c_in, k); weight norm recomputes it here
    c_out, c_in, k = weight.shape
    b, length, _ = x.shape
    d = conv.dilation[0]
    taps = F.linear(x, weight.permute(2, 0, 1).reshape(k * c_out, c_in)).view(b, length, k, c_out)
    return taps, tuple((k - 1 - j) * d for j in range(k))


def causal_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv``'s weights applied causally (left padding) to channels-last x: (b, l, c_in) -> (b, l, c_out)."""
    if conv.weight.shape[2] == 1:
        return F.linear(x, conv.weight[:, :, 0], conv.bias)
    taps, shifts = _taps(x, conv)
    y = _ShiftSum.apply(taps, shifts)
    return y if conv.bias is None else y + conv.bias


if njit is not None:
    @njit(cache=True, error_model="numpy", boundscheck=False)
    def _conv_act_fwd(taps, shifts, bias, slopes, res, out, pre1, pre2):  # pragma: no cover - numba
        """out = prelu_a1(sum_j taps[:, t - s_j, j] + bias), then, with res: prelu_a2(out + res).
        pre1 (and pre2) keep the PReLUs' inputs for the backward. slopes = (a1, a2, 0) in the
        tensors' dtype, so that every operation is a float32 one in float32, as in PyTorch. The
        channel loops have no branches (selects only), so that they vectorise."""
        b, length, k, c = taps.shape
        s1, s2 = slopes[0], slopes[1]
        j0 = 0
        for j in range(k):
            if shifts[j] == 0:
                j0 = j
        for bi in range(b):
            for t in range(length):
                for ch in range(c):  # the order of _ShiftSum: the unshifted tap, then the others in turn
                    pre1[bi, t, ch] = taps[bi, t, j0, ch]
                for j in range(k):
                    s = shifts[j]
                    if 0 < s <= t:
                        for ch in range(c):
                            pre1[bi, t, ch] += taps[bi, t - s, j, ch]
                if res.shape[0] > 0:
                    for ch in range(c):
                        z = pre1[bi, t, ch] + bias[ch]
                        pre1[bi, t, ch] = z
                        w = (z if z > 0 else s1 * z) + res[bi, t, ch]
                        pre2[bi, t, ch] = w
                        out[bi, t, ch] = w if w > 0 else s2 * w
                else:
                    for ch in range(c):
                        z = pre1[bi, t, ch] + bias[ch]
                        pre1[bi, t, ch] = z
                        out[bi, t, ch] = z if z > 0 else s1 * z

    @njit(cache=True, error_model="numpy", boundscheck=False)
    def _conv_act_bwd(g, pre1, pre2, shifts, slopes, dtaps, dres, dbias, da1, da2):  # pragma: no cover - numba
        """Gradients of _conv_act_fwd: dtaps (b, l, k, c) and dres (b, l, c) written whole;
        dbias, da1, da2 (c,) float64 sums over batch and time. A PReLU's input of exactly 0 passes
        no gradient, as relu(x) - a relu(-x) under autograd."""
        b, length, k, c = dtaps.shape
        s1, s2, zero = slopes[0], slopes[1], slopes[2]
        gz = np.empty(c, dtype=g.dtype)
        for bi in range(b):
            for t in range(length):
                if pre2.shape[0] > 0:
                    for ch in range(c):
                        gv = g[bi, t, ch]
                        w = pre2[bi, t, ch]
                        da2[ch] += gv * w if w < 0 else zero
                        gw = gv if w > 0 else (gv * s2 if w < 0 else zero)
                        dres[bi, t, ch] = gw
                        z = pre1[bi, t, ch]
                        da1[ch] += gw * z if z < 0 else zero
                        gzv = gw if z > 0 else (gw * s1 if z < 0 else zero)
                        gz[ch] = gzv
                        dbias[ch] += gzv
                else:
                    for ch in range(c):
                        gv = g[bi, t, ch]
                        z = pre1[bi, t, ch]
                        da1[ch] += gv * z if z < 0 else zero
                        gzv = gv if z > 0 else (gv * s1 if z < 0 else zero)
                        gz[ch] = gzv
                        dbias[ch] += gzv
                for j in range(k):  # tap j at frame t - s_j fed frame t
                    tt = t - shifts[j]
                    if tt >= 0:
                        for ch in range(c):
                            dtaps[bi, tt, j, ch] = gz[ch]
                for j in range(k):  # the last s_j frames of tap j fed nothing
                    if t >= length - shifts[j]:
                        for ch in range(c):
                            dtaps[bi, t, j, ch] = zero


class _ConvAct(torch.autograd.Function):
    """prelu(shifted sum of taps + bias) [then prelu(that + res)], CPU, one numba pass each way."""

    @staticmethod
    def forward(ctx, taps, shifts, bias, a1, res, a2):
        t = taps.detach().contiguous()
        b, length, k, c = t.shape
        dt = t.dtype
        out, pre1 = torch.empty(b, length, c, dtype=dt), torch.empty(b, length, c, dtype=dt)
        pre2 = torch.empty(b, length, c, dtype=dt) if res is not None else torch.empty(0, 0, 0, dtype=dt)
        r = res.detach().to(dt).contiguous() if res is not None else torch.empty(0, 0, 0, dtype=dt)
        bb = bias.detach().to(dt) if bias is not None else torch.zeros(c, dtype=dt)
        slopes = torch.cat([a1.detach().to(dt).reshape(1),
                            a2.detach().to(dt).reshape(1) if a2 is not None else torch.zeros(1, dtype=dt),
                            torch.zeros(1, dtype=dt)])
        sh = np.asarray(shifts, dtype=np.int64)
        _conv_act_fwd(t.numpy(), sh, bb.numpy(), slopes.numpy(), r.numpy(), out.numpy(), pre1.numpy(), pre2.numpy())
        ctx.save_for_backward(pre1, pre2, slopes)
        ctx.shifts, ctx.k = sh, k
        ctx.has_bias, ctx.has_res = bias is not None, res is not None
        ctx.dtypes = (bias.dtype if bias is not None else None, a1.dtype, a2.dtype if a2 is not None else None)
        return out

    @staticmethod
    def backward(ctx, g):
        pre1, pre2, slopes = ctx.saved_tensors
        g = g.to(pre1.dtype).contiguous()
        b, length, c = g.shape
        dtaps = torch.empty(b, length, ctx.k, c, dtype=g.dtype)
        dres = torch.empty(b, length, c, dtype=g.dtype) if ctx.has_res else torch.empty(0, 0, 0, dtype=g.dtype)
        dbias, da1, da2 = (np.zeros(c, dtype=np.float64) for _ in range(3))
        _conv_act_bwd(g.numpy(), pre1.numpy(), pre2.numpy(), ctx.shifts, slopes.numpy(), dtaps.numpy(),
                      dres.numpy(), dbias, da1, da2)
        bias_t, a1_t, a2_t = ctx.dtypes
        return (dtaps, None,
                torch.from_numpy(dbias).to(bias_t) if ctx.has_bias else None,
                torch.tensor([da1.sum()], dtype=a1_t),
                dres if ctx.has_res else None,
                torch.tensor([da2.sum()], dtype=a2_t) if ctx.has_res else None)


def _fusable(x: torch.Tensor, conv: nn.Conv1d, *acts: nn.PReLU) -> bool:
    """The one pass takes float32/float64 CPU tensors; under CPU autocast the taps come out bfloat16."""
    return (njit is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
            and conv.weight.shape[2] > 1 and all(a.num_parameters == 1 for a in acts))


def conv_act(x: torch.Tensor, conv: nn.Conv1d, act: nn.PReLU, res: torch.Tensor | None = None,
             act_res: nn.PReLU | None = None) -> torch.Tensor:
    """act(causal_conv(x, conv)), and with ``res``: act_res(that + res); one numba pass on a CPU."""
    acts = (act,) if res is None else (act, act_res)
    if _fusable(x, conv, *acts):
        taps, shifts = _taps(x, conv)
        return _ConvAct.apply(taps, shifts, conv.bias, act.weight, res, None if res is None else act_res.weight)
    y = act(causal_conv(x, conv))
    return y if res is None else act_res(y + res)


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
        out = self.drop1(conv_act(x, self.conv1, self.act1))
        res = x if self.downsample is None else causal_conv(x, self.downsample)
        if self.drop2.p == 0 or not self.training:  # dropout is the identity: one pass to the block's output
            return conv_act(out, self.conv2, self.act2, res, self.act)
        out = self.drop2(conv_act(out, self.conv2, self.act2))
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
