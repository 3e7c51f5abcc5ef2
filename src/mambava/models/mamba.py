"""The Mamba block (Gu and Dao, 2023), equivalent to ``mamba_ssm.modules.mamba_simple.Mamba``.

Same parameters, initialisation and state dict (keys ``in_proj.weight``, ``conv1d.weight``,
``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``, ``A_log``, ``D``,
``out_proj.weight``, same shapes), so checkpoints move between the two. The selective scan runs
on the backend chosen by :mod:`mambava.models.ssm` (mamba-ssm's CUDA kernel on a GPU, the numba
kernel on a CPU).

Two ways to run it, with the same result:

- ``forward(x)``: the whole sequence (batch, length, d_model) in parallel, linear in length;
- ``step(x_t, state)``: one frame at a time, carrying ``(conv_state, ssm_state)``; for streaming.
  ``forward(x, return_state=True)`` hands over the state after a prefix.

Inference over a long sequence (no autograd, more than ``chunk_frames`` frames, any backend but
mamba-ssm's, whose scan takes no initial state) runs ``forward`` in pieces of ``chunk_frames``
frames carrying that state: the same computation (bitwise the same output in our tests of the
paper's encoder), but the block's intermediate tensors stay a few MB instead of 100-200 MB at
100k frames, so they stay in cache and the block's time per frame does not grow with the length.

**The causal conv and its SiLU as one pass (CPU).** ``in_proj`` gives (batch, length, 2 d_inner)
with the channels contiguous; ``F.conv1d`` wants time contiguous, so around the depthwise conv
PyTorch copied x into that layout and back, sliced its right padding off, ran SiLU, split and
concatenated the halves' gradients: about a fifth of a Mamba-only training step on a CPU
(``benchmarks/bench_temporal.py --ops``). On CPU tensors (float32/float64, no autocast) one numba
loop reads ``in_proj``'s output where it is and writes silu(conv(x)) and the gate z, both
channels-last, and one loop writes the gradient of the whole ``in_proj`` output (``_ConvSilu``).
The conv sums as oneDNN's depthwise kernel does (bias, then the taps oldest first, each a fused
multiply-add): the same float32 values as ``F.conv1d`` (tested bitwise); SiLU uses the scan's
exp, so it differs from PyTorch's in the last bits; the conv weight's and bias's gradients are
float64 sums over the batch and time. The scan reads the channels-last halves in place, so x_proj
and out_proj need no copies either. A continuation from a state (inference in pieces) runs the
same loop with the state's last inputs in front. Other devices and autocast take the PyTorch form.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from torch import nn

from mambava.models.ssm import _exp, resolve_backend, selective_scan_fn

MambaState = tuple[torch.Tensor, torch.Tensor]  # conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state)


@intrinsic
def _fma_f32(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma: one vfmadd, vectorised with the loop)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def _fma(a, b, c):
    """a * b + c; one rounding for float32 (oneDNN's depthwise conv), two for float64 (tests)."""
    return a * b + c


@overload(_fma)
def _fma_overload(a, b, c):
    if a == b == c == types.float32:
        return lambda a, b, c: _fma_f32(a, b, c)
    return lambda a, b, c: a * b + c


@njit(cache=True, error_model="numpy", boundscheck=False)
def _conv_silu_fwd(xz, hist, w, bias, xs, z, pre):  # pragma: no cover - numba
    """xz (b, l, 2d): x and the gate; hist (b, k - 1, d): the inputs before frame 0; w (k, d);
    bias (d,). pre = bias + sum_j w[j] x[t - (k - 1) + j] (oldest tap first, fused multiply-adds),
    xs = silu(pre), z = the gate half, all (b, l, d). Branch-free channel loops (they vectorise)."""
    b, length, d2 = xz.shape
    d = d2 // 2
    k = w.shape[0]
    one = np.ones(1, dtype=pre.dtype)[0]  # in the tensors' dtype
    for bi in range(b):
        for t in range(length):
            for c in range(d):
                pre[bi, t, c] = bias[c]
            for j in range(k):
                tt = t - (k - 1) + j
                if tt >= 0:
                    for c in range(d):
                        pre[bi, t, c] = _fma(w[j, c], xz[bi, tt, c], pre[bi, t, c])
                else:
                    for c in range(d):
                        pre[bi, t, c] = _fma(w[j, c], hist[bi, k - 1 + tt, c], pre[bi, t, c])
            for c in range(d):
                p = pre[bi, t, c]
                xs[bi, t, c] = p / (one + _exp(-p))
                z[bi, t, c] = xz[bi, t, d + c]


@njit(cache=True, error_model="numpy", boundscheck=False)
def _conv_silu_bwd(gxs, gz, xz, hist, w, pre, gxz, dw, dbias, gpre):  # pragma: no cover - numba
    """Gradients of _conv_silu_fwd: gxz (b, l, 2d) written whole (the conv's input half and the
    gate half); dw (k, d) and dbias (d,) float64 sums over batch and time; gpre an (l, d) scratch."""
    b, length, d2 = xz.shape
    d = d2 // 2
    k = w.shape[0]
    one = np.ones(1, dtype=pre.dtype)[0]
    zero = one - one
    for bi in range(b):
        for t in range(length):
            for c in range(d):
                p = pre[bi, t, c]
                s = one / (one + _exp(-p))
                gp = gxs[bi, t, c] * (s * (one + p * (one - s)))
                gpre[t, c] = gp
                dbias[c] += gp
                gxz[bi, t, d + c] = gz[bi, t, c]
            for j in range(k):
                tt = t - (k - 1) + j
                if tt >= 0:
                    for c in range(d):
                        dw[j, c] += np.float64(gpre[t, c]) * np.float64(xz[bi, tt, c])
                else:
                    for c in range(d):
                        dw[j, c] += np.float64(gpre[t, c]) * np.float64(hist[bi, k - 1 + tt, c])
        for s_ in range(length):  # input frame s fed frames s .. s + k - 1 through taps k - 1 .. 0
            for c in range(d):
                gxz[bi, s_, c] = zero
            for j in range(k):
                t = s_ + (k - 1) - j
                if t < length:
                    for c in range(d):
                        gxz[bi, s_, c] += w[j, c] * gpre[t, c]


class _ConvSilu(torch.autograd.Function):
    """in_proj's output (b, l, 2d) -> silu(causal depthwise conv of its x half), its gate half;
    both (b, l, d) channels-last. CPU, one numba pass each way."""

    @staticmethod
    def forward(ctx, xz, weight, bias, hist):
        v = xz.detach().contiguous()
        b, length, d2 = v.shape
        d, dt = d2 // 2, v.dtype
        k = weight.shape[-1]
        w = weight.detach().reshape(d, k).t().to(dt).contiguous()  # (k, d)
        bb = bias.detach().to(dt) if bias is not None else torch.zeros(d, dtype=dt)
        h = (torch.zeros(b, k - 1, d, dtype=dt) if hist is None
             else hist.detach().to(dt).contiguous())
        xs, z, pre = (torch.empty(b, length, d, dtype=dt) for _ in range(3))
        _conv_silu_fwd(v.numpy(), h.numpy(), w.numpy(), bb.numpy(), xs.numpy(), z.numpy(), pre.numpy())
        ctx.save_for_backward(v, h, w, pre)
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return xs, z

    @staticmethod
    def backward(ctx, gxs, gz):
        v, h, w, pre = ctx.saved_tensors
        b, length, d2 = v.shape
        d, k = d2 // 2, w.shape[0]
        gxs, gz = gxs.to(v.dtype).contiguous(), gz.to(v.dtype).contiguous()  # autograd gives zeros for an unused output
        gxz = torch.empty(b, length, d2, dtype=v.dtype)
        dw, dbias = np.zeros((k, d), dtype=np.float64), np.zeros(d, dtype=np.float64)
        gpre = np.empty((length, d), dtype=v.numpy().dtype)
        _conv_silu_bwd(gxs.numpy(), gz.numpy(), v.numpy(), h.numpy(), w.numpy(), pre.numpy(), gxz.numpy(),
                       dw, dbias, gpre)
        w_t, b_t = ctx.dtypes
        dweight = torch.from_numpy(dw).t().reshape(d, 1, k).to(w_t)
        return gxz, dweight, torch.from_numpy(dbias).to(b_t) if ctx.has_bias else None, None


class Mamba(nn.Module):
    """Selective state-space block: (batch, length, d_model) -> (batch, length, d_model).

    in_proj (no bias) splits into x and the gate z; x goes through a causal depthwise conv1d
    (kernel d_conv, with bias) and SiLU; x_proj gives the input-dependent dt (rank dt_rank), B and
    C; dt_proj lifts dt to d_inner; the selective scan with A = -exp(A_log), skip D, gate silu(z);
    out_proj (no bias) back to d_model.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend  # None: the process default (model.scan_backend)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # dt_proj as in mamba-ssm: weights keep the variance of dt at initialisation, and the
        # bias is the inverse softplus of a step size log-uniform in [dt_min, dt_max].
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            elif dt_init == "random":
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            else:
                raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as its log so A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True

    # ------------------------------------------------------------------ parallel
    # Frames per piece when inference over a long sequence runs in pieces (see the module doc).
    chunk_frames: int = 2048

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """x: (batch, length, d_model) -> (batch, length, d_model) [, (conv_state, ssm_state)]."""
        length = x.shape[1]
        if not self.uses_pieces(x):
            return self._forward(x, None, return_state)
        out, state = None, None
        for start in range(0, length, self.chunk_frames):
            y, state = self._forward(x[:, start:start + self.chunk_frames], state, True)
            if out is None:
                out = y.new_empty(y.shape[0], length, y.shape[2])
            out[:, start:start + y.shape[1]] = y
        return (out, state) if return_state else out

    def uses_pieces(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs ``x`` in pieces (module doc)."""
        return (x.shape[1] > self.chunk_frames and not torch.is_grad_enabled()
                and resolve_backend(self.scan_backend, x.device) != "cuda")  # mamba-ssm: no initial state

    def forward_from(self, x: torch.Tensor, state: MambaState | None) -> tuple[torch.Tensor, MambaState]:
        """One parallel pass over ``x`` continuing from ``state`` (None: the start of the sequence);
        returns the output and the state after ``x``. Not for mamba-ssm's backend."""
        return self._forward(x, state, True)

    def _one_pass(self, x: torch.Tensor, state: MambaState | None) -> bool:
        """Whether the conv and SiLU run as ``_ConvSilu``: float32/float64 CPU tensors, no CPU
        autocast, and no gradient wanted through a given state (its inputs are constants there)."""
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu")
                and (state is None or not (torch.is_grad_enabled() and state[0].requires_grad)))

    def _forward(self, x: torch.Tensor, state: MambaState | None, return_state: bool):
        """The parallel pass over x, continuing from ``state`` (None: from the start)."""
        batch, length, _ = x.shape
        if self._one_pass(x, state):  # module doc; xs and z are (b, d_inner, l) views, channels-last
            xz = self.in_proj(x)  # (b, l, 2 d_inner)
            hist = None if state is None else state[0][:, :, 1:].transpose(1, 2)  # (b, d_conv - 1, d_inner)
            if return_state:  # the last d_conv inputs of the conv
                before = xz.new_zeros(batch, self.d_conv - 1, self.d_inner) if hist is None else hist.to(xz.dtype)
                conv_state = torch.cat([before, xz[..., :self.d_inner]], dim=1)[:, -self.d_conv:].transpose(1, 2)
            else:
                conv_state = None
            xs_l, z_l = _ConvSilu.apply(xz, self.conv1d.weight, self.conv1d.bias, hist)
            xs, z = xs_l.transpose(1, 2), z_l.transpose(1, 2)
            x_dbl = self.x_proj(xs_l)  # (b, l, dt_rank + 2 n)
        else:
            xz = self.in_proj(x).transpose(1, 2)  # (b, 2 d_inner, l)
            xs, z = xz.chunk(2, dim=1)
            if state is None:
                conv_state = F.pad(xs, (self.d_conv - length, 0)) if return_state else None  # last d_conv inputs
                xs = F.silu(self.conv1d(xs)[..., :length])
            else:  # the causal conv continues over the last d_conv - 1 inputs of the state
                xs = torch.cat([state[0][:, :, 1:].to(xs.dtype), xs], dim=2)
                conv_state = xs[:, :, -self.d_conv:] if return_state else None
                xs = F.silu(F.conv1d(xs, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
            x_dbl = self.x_proj(xs.transpose(1, 2))  # (b, l, dt_rank + 2 n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, l); bias goes to the scan
        A = -torch.exp(self.A_log.float())
        res = selective_scan_fn(
            xs, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=return_state, backend=self.scan_backend,
            initial_state=None if state is None else state[1],
        )
        y, ssm_state = res if return_state else (res, None)
        out = self.out_proj(y.transpose(1, 2))
        return (out, (conv_state, ssm_state)) if return_state else out

    # ------------------------------------------------------------------ recurrent
    def allocate_state(self, batch: int, device=None, dtype=torch.float32) -> MambaState:
        """Zero (conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))."""
        device = device or self.A_log.device
        return (
            torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
            torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One frame: x (batch, d_model) -> (batch, d_model) and the new state (not in place)."""
        conv_state, ssm_state = state
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (b, d_inner) each
        conv_state = torch.cat([conv_state[:, :, 1:], xs[:, :, None]], dim=-1)
        xs = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xs = xs + self.conv1d.bias
        xs = F.silu(xs)
        dt, B, C = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias)  # (b, d_inner)
        A = -torch.exp(self.A_log.float())
        ssm_state = torch.exp(dt[..., None] * A) * ssm_state + (dt * xs)[..., None] * B[:, None, :]
        y = (ssm_state * C[:, None, :]).sum(-1) + self.D * xs
        y = y * F.silu(z)
        return self.out_proj(y), (conv_state, ssm_state)
