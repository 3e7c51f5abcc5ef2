"""The selective scan of Mamba (S6), with three interchangeable backends.

The operation, for every batch element ``b`` and channel ``d``, with a state ``h`` of size N::

    dt_t = softplus(delta[b, d, t] + delta_bias[d])        (softplus and bias optional)
    h_t  = exp(dt_t * A[d]) * h_{t-1} + dt_t * B[b, :, t] * u[b, d, t]
    y_t  = <C[b, :, t], h_t> + D[d] * u[b, d, t]
    out  = y * silu(z[b, d, t])                             (gate optional)

``selective_scan_fn`` has the call and shapes of ``mamba_ssm.ops.selective_scan_interface.
selective_scan_fn`` (only the variable, ungrouped B and C that Mamba uses), so a block can run
on either implementation. Backends:

- ``cuda``: mamba-ssm's fused CUDA kernel (tensors on a GPU and ``mamba_ssm`` importable);
- ``numba``: our CPU kernel, a ``torch.autograd.Function`` whose forward and backward are fused
  loops compiled by numba. Per (b, d) it keeps only the N-vector state; the backward recomputes
  the states of one (b, d) at a time in an (L, N) scratch. Memory is O(B·D·L + B·N·L), never the
  (B, D, L, N) tensor of mamba-ssm's ``selective_scan_ref``.
- ``reference``: the plain sequential recurrence in PyTorch with autograd; slow, the test oracle.

``auto`` picks ``cuda`` for GPU tensors when mamba-ssm is there, ``numba`` for CPU tensors, and
``reference`` for GPU tensors without mamba-ssm. The choice is logged once per backend.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Literal

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

log = logging.getLogger("mambava.models.ssm")

Backend = Literal["auto", "cuda", "numba", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "cuda", "numba", "reference")

try:  # optional: only where mamba-ssm's CUDA extension was built
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan
except ImportError:  # the normal case on a CPU machine
    _mamba_ssm_scan = None

_default_backend: str = "auto"
_logged: set[str] = set()

# mamba-ssm's kernel switches softplus to the identity above this value (exp would overflow).
_SOFTPLUS_THRESHOLD = 20.0


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's fused scan could be imported."""
    return _mamba_ssm_scan is not None


def set_scan_backend(backend: str) -> None:
    """Set the process-wide default backend (``model.scan_backend`` in params.yaml)."""
    global _default_backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
    _default_backend = backend


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The concrete backend (``cuda``, ``numba`` or ``reference``) for tensors on ``device``."""
    backend = backend or _default_backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            backend = "cuda" if mamba_ssm_available() else "reference"
        else:
            backend = "numba"
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError("scan backend 'cuda' needs tensors on a CUDA device")
        if not mamba_ssm_available():
            raise RuntimeError("scan backend 'cuda' needs mamba-ssm (pip install '.[gpu]' on a GPU machine)")
    if backend not in _logged:
        _logged.add(backend)
        why = {
            "cuda": "mamba-ssm fused CUDA kernel",
            "numba": f"numba CPU kernel, {numba.get_num_threads()} threads",
            "reference": "sequential PyTorch reference (slow)",
        }[backend]
        log.info("selective scan backend: %s (%s)", backend, why)
    return backend


def backend_description(backend: str | None = None, device: str | torch.device = "cpu") -> str:
    """The backend that would run on ``device``, for recording with metrics."""
    return resolve_backend(backend, torch.device(device))


# --------------------------------------------------------------------------- reference
def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The sequential recurrence in plain PyTorch (autograd does the backward). Test oracle.

    Shapes as in ``selective_scan_fn``. Computes in the input dtype (pass float64 for an
    accurate oracle); holds only a (batch, dim, state) state per step in the loop, though
    autograd keeps every step's intermediates for the backward.
    """
    dtype_in = u.dtype
    delta = delta + delta_bias[..., None] if delta_bias is not None else delta
    if delta_softplus:
        delta = torch.where(delta <= _SOFTPLUS_THRESHOLD, F.softplus(delta), delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------- numba kernels
# Layout: the kernels work channel-last, u, dt, z as (batch, length, dim) and B, C as
# (batch, length, state), A as (state, dim), so that the innermost loop runs over a block of
# contiguous channels and LLVM turns it into SIMD code (8 float32 channels per AVX2 op). The
# recurrence itself is sequential in time. Softplus, the bias and their gradients are computed
# by PyTorch outside the kernels: they are elementwise over (batch, dim, length), never over state.


@intrinsic
def _pow2_f32(typingctx, k):
    """2**k for a whole-valued float32 k in [-126, 127], built from the exponent bits."""
    if k != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(bits, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


def _exp(x):
    """exp for the kernels: float32 gets a branch-free polynomial that LLVM vectorises."""
    return math.exp(x)


@overload(_exp, inline="always")
def _exp_overload(x):
    # Without Intel SVML, numba's float32 exp is a scalar libm call per element (~3 ns) and it
    # blocks vectorisation. This is Cephes' expf: x = k ln2 + r with |r| <= ln2/2, a degree-6
    # polynomial for exp(r), then 2**k from the exponent bits. Relative error ~1.2e-7 (1 ulp).
    # Inputs below -87 give exp(-87) ~ 1.6e-38 instead of underflowing to 0 (harmless here: it
    # only ever multiplies a state).
    if x != types.float32:
        return lambda x: math.exp(x)

    def impl(x):
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * _pow2_f32(k)

    return impl


@njit(fastmath=True, cache=True, error_model="numpy")
def _fwd_block(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, b, k, out, last):
    """Forward of batch element b, channel block k (see ``_scan_fwd`` for the layout)."""
    length = u.shape[2]
    nstate = At.shape[1]
    w = u.shape[3]
    h = np.zeros((nstate, w), dtype=u.dtype)
    y = np.empty(w, dtype=u.dtype)
    dsk = Dv[k]
    for t in range(length):
        ur = u[b, k, t]
        dr = dt[b, k, t]
        if has_D:
            for j in range(w):
                y[j] = dsk[j] * ur[j]
        else:
            y[:] = 0
        for n in range(nstate):
            bn = Bt[b, t, n]
            cn = Ct[b, t, n]
            hr = h[n]
            ar = At[k, n]
            for j in range(w):
                hn = _exp(dr[j] * ar[j]) * hr[j] + dr[j] * ur[j] * bn
                hr[j] = hn
                y[j] += hn * cn
        o = out[b, k, t]
        if has_z:
            zr = z[b, k, t]
            for j in range(w):
                o[j] = y[j] * zr[j] / (1 + _exp(-zr[j]))
        else:
            for j in range(w):
                o[j] = y[j]
    last[b, k] = h


# The parallel loops only hand out work items: numba's parfor lowering of a loop body stops
# LLVM from vectorising it (measured 2-4x slower), so the bodies are separate functions.
@njit(parallel=True, cache=True)
def _scan_fwd(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, out, last):
    """The forward scan in block-major layout.

    Channels are cut into blocks of w contiguous channels: u, dt, z, out are (b, blocks, l, w),
    At (blocks, n, w), Dv (blocks, w), last (b, blocks, n, w); Bt, Ct are (b, l, n). The
    innermost loops run over the w channels of a row, contiguous and indexed from 0, so LLVM
    turns them into SIMD code (8 float32 lanes with AVX2); the recurrence runs over time.
    One parallel work item per (batch element, block); each keeps only its (n, w) state.
    """
    batch, nblk = u.shape[0], u.shape[1]
    for it in prange(batch * nblk):
        _fwd_block(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, it // nblk, it % nblk, out, last)


@njit(fastmath=True, cache=True, error_model="numpy")
def _bwd_block(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, softplus, dout, b, k,
               du, ddt, dz, dA_part, dD_part, dB_part, dC_part):
    """Backward of batch element b, channel block k; see ``_scan_bwd``."""
    length = u.shape[2]
    nstate = At.shape[1]
    w = u.shape[3]
    dsk = Dv[k]
    # Recompute the forward states, hs[t + 1] = h_t (hs[0] = 0), and keep the decays
    # exp(dt_t A) for the reverse pass (one exp per update instead of two).
    hs = np.empty((length + 1, nstate, w), dtype=u.dtype)
    decay = np.empty((length, nstate, w), dtype=u.dtype)
    hs[0] = 0
    for t in range(length):
        ur = u[b, k, t]
        dr = dt[b, k, t]
        for n in range(nstate):
            bn = Bt[b, t, n]
            ar = At[k, n]
            hp = hs[t, n]
            hc = hs[t + 1, n]
            ec = decay[t, n]
            for j in range(w):
                e = _exp(dr[j] * ar[j])
                ec[j] = e
                hc[j] = e * hp[j] + dr[j] * ur[j] * bn
    gh = np.zeros((nstate, w), dtype=u.dtype)  # dL/dh_t, carried backwards in time
    dA_acc = np.zeros((nstate, w), dtype=u.dtype)
    dD_acc = np.zeros(w, dtype=u.dtype)
    gy = np.empty(w, dtype=u.dtype)
    for t in range(length - 1, -1, -1):
        ur = u[b, k, t]
        dr = dt[b, k, t]
        gr = dout[b, k, t]
        dur = du[b, k, t]
        ddtr = ddt[b, k, t]
        if has_z:
            # y before the gate, from the stored state.
            if has_D:
                for j in range(w):
                    gy[j] = dsk[j] * ur[j]
            else:
                gy[:] = 0
            for n in range(nstate):
                cn = Ct[b, t, n]
                hc = hs[t + 1, n]
                for j in range(w):
                    gy[j] += hc[j] * cn
            zr = z[b, k, t]
            dzr = dz[b, k, t]
            for j in range(w):
                sig = 1 / (1 + _exp(-zr[j]))
                dzr[j] = gr[j] * gy[j] * sig * (1 + zr[j] * (1 - sig))
                gy[j] = gr[j] * zr[j] * sig
        else:
            for j in range(w):
                gy[j] = gr[j]
        for j in range(w):
            dD_acc[j] += gy[j] * ur[j]
            ddtr[j] = 0
        if has_D:
            for j in range(w):
                dur[j] = gy[j] * dsk[j]
        else:
            dur[:] = 0
        for n in range(nstate):
            bn = Bt[b, t, n]
            cn = Ct[b, t, n]
            ar = At[k, n]
            hp = hs[t, n]
            hc = hs[t + 1, n]
            ec = decay[t, n]
            ghr = gh[n]
            dAr = dA_acc[n]
            db = u.dtype.type(0)
            dc = u.dtype.type(0)
            for j in range(w):
                e = ec[j]
                ghn = ghr[j] + gy[j] * cn
                dc += gy[j] * hc[j]
                e_prev = e * hp[j]
                # h_t = e h_{t-1} + dt B u with e = exp(dt A):
                # dh/d dt = A e h_{t-1} + B u, dh/dA = dt e h_{t-1}, dh/dB = dt u, dh/du = dt B
                ddtr[j] += ghn * (ar[j] * e_prev + bn * ur[j])
                dAr[j] += ghn * dr[j] * e_prev
                db += ghn * dr[j] * ur[j]
                dur[j] += ghn * dr[j] * bn
                ghr[j] = ghn * e
            dB_part[b, k, t, n] = db
            dC_part[b, k, t, n] = dc
        if softplus:
            # d softplus(x)/dx = sigmoid(x) = 1 - exp(-dt): from the saved dt, so x need not be
            # kept. A series below 0.1 avoids the cancellation in 1 - exp(-dt) for small steps.
            for j in range(w):
                d = dr[j]
                series = d * (1 - d / 2 * (1 - d / 3 * (1 - d / 4)))
                ddtr[j] *= series if d < 0.1 else 1 - _exp(-d)
    dA_part[b, k] = dA_acc
    dD_part[b, k] = dD_acc


@njit(parallel=True, cache=True)
def _scan_bwd(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, softplus, dout, du, ddt, dz,
              dA_part, dD_part, dB_part, dC_part):
    """Gradients of ``_scan_fwd`` given dout, all in its block-major layout.

    Per (batch element, channel block) the forward states are recomputed into a thread-local
    (length + 1, n, w) scratch (and their decays), then a reverse pass carries g_h = dL/dh back in time:
    g_h(t) = C_t g_y(t) + exp(dt_{t+1} A) g_h(t + 1). dB and dC sum over channels, so each block
    writes its own partial (b, block, l, n) slice and the caller sums over blocks: no races.
    dA (b, blocks, n, w) and dD (b, blocks, w) partials are summed over the batch by the caller.
    ``ddt`` is the gradient with respect to the step size before softplus (``softplus``) or
    the step size itself.
    """
    batch, nblk = u.shape[0], u.shape[1]
    for it in prange(batch * nblk):
        _bwd_block(u, dt, At, Bt, Ct, Dv, z, has_D, has_z, softplus, dout, it // nblk, it % nblk,
                   du, ddt, dz, dA_part, dD_part, dB_part, dC_part)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (no copy when already contiguous)."""
    return t.detach().contiguous().numpy()


# Work items are handed out one at a time (numba's parallel_chunksize(1) in the wrappers): on a
# shared machine a thread that is descheduled then delays only its current item, not a static
# half of the batch.
def _block_width(batch: int, dim: int, length: int, nstate: int, backward: bool) -> int:
    """Channels per parallel work item (a multiple of 8, so AVX2 lanes are full).

    Wide blocks vectorise best; there must be enough blocks to keep every thread busy, and in
    the backward the two (length, state, width) float32 scratches of a thread stay <= 16 MiB.
    """
    threads = numba.get_num_threads()
    width = min(dim, 256)
    blocks_needed = -(-threads // batch)
    if blocks_needed > 1:
        width = min(width, -(-dim // blocks_needed))
    if backward:
        width = min(width, max(8, (16 << 20) // (2 * 4 * (length + 1) * nstate)))
    return max(8, -(-width // 8) * 8)


def _to_blocks(t: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(b, d, l) -> contiguous (b, d_pad / width, l, width), zero-padded channels (one copy)."""
    batch, dim, length = t.shape
    nblk = -(-dim // width)
    t = t.detach().to(dtype)
    if nblk * width != dim:
        t = F.pad(t, (0, 0, 0, nblk * width - dim))
    return t.view(batch, nblk, width, length).transpose(2, 3).contiguous()


def _from_blocks(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, blocks, l, width) -> (b, d, l) view (not contiguous: PyTorch copes)."""
    batch, nblk, length, width = t.shape
    return t.transpose(2, 3).reshape(batch, nblk * width, length)[:, :dim]


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, dim, length = u.shape
        nstate = A.shape[1]
        # Step size: bias and softplus are elementwise; PyTorch does them vectorised.
        x = delta.detach().to(dtype)
        if delta_bias is not None:
            x = x + delta_bias.detach().to(dtype)[:, None]
        dt = F.softplus(x, threshold=_SOFTPLUS_THRESHOLD) if delta_softplus else x  # identity above 20
        # One width for forward and backward, so the blocked inputs are reused by the backward;
        # a forward that needs no gradient (inference) is free of the backward's scratch limit.
        width = _block_width(batch, dim, length, nstate, backward=any(ctx.needs_input_grad))
        nblk = -(-dim // width)
        # A and D as (blocks, n, w) and (blocks, w); padded channels have A = 0, D = 0, u = 0.
        At = _to_blocks(A.detach()[None], width, dtype)[0]
        D_ = (_to_blocks(D.detach()[None, :, None], width, dtype)[0, :, 0]
              if D is not None else torch.zeros(1, 1, dtype=dtype))
        u_ = _to_blocks(u, width, dtype)
        dt_ = _to_blocks(dt, width, dtype)
        z_ = _to_blocks(z, width, dtype) if z is not None else torch.zeros(1, 1, 1, 1, dtype=dtype)
        Bt = B.detach().to(dtype).transpose(1, 2).contiguous()
        Ct = C.detach().to(dtype).transpose(1, 2).contiguous()
        out = torch.empty(batch, nblk, length, width, dtype=dtype)
        last = torch.empty(batch, nblk, nstate, width, dtype=dtype)
        with numba.parallel_chunksize(1):
            _scan_fwd(_np(u_), _np(dt_), _np(At), _np(Bt), _np(Ct), _np(D_), _np(z_),
                      D is not None, z is not None, out.numpy(), last.numpy())
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(u_, dt_, At, Bt, Ct, D_, z_)
        ctx.flags = (D is not None, z is not None, delta_bias is not None, bool(delta_softplus))
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.dim = dim
        ctx.mark_non_differentiable(last)
        last = last.permute(0, 1, 3, 2).reshape(batch, nblk * width, nstate)[:, :dim]
        return _from_blocks(out, dim).to(u.dtype), last.to(u.dtype)

    @staticmethod
    def backward(ctx, dout, _dlast):
        # The last state is an output for streaming only; like mamba-ssm, no gradient through it.
        u_, dt_, At, Bt, Ct, D_, z_ = ctx.saved_tensors
        has_D, has_z, has_bias, softplus = ctx.flags
        dim = ctx.dim
        batch, nblk, length, width = u_.shape
        nstate = At.shape[1]
        du = torch.empty_like(u_)
        ddt = torch.empty_like(u_)
        dz = torch.empty_like(u_) if has_z else z_
        dA_part = torch.empty(batch, nblk, nstate, width, dtype=u_.dtype)
        dD_part = torch.empty(batch, nblk, width, dtype=u_.dtype)
        dB_part = torch.empty(batch, nblk, length, nstate, dtype=u_.dtype)
        dC_part = torch.empty(batch, nblk, length, nstate, dtype=u_.dtype)
        with numba.parallel_chunksize(1):
            _scan_bwd(_np(u_), _np(dt_), _np(At), _np(Bt), _np(Ct), _np(D_), _np(z_), has_D, has_z,
                      softplus, _np(_to_blocks(dout, width, u_.dtype)), du.numpy(), ddt.numpy(), dz.numpy(),
                      dA_part.numpy(), dD_part.numpy(), dB_part.numpy(), dC_part.numpy())
        ddelta = _from_blocks(ddt, dim)
        t_u, t_delta, t_A, t_B, t_C, t_D, t_z, t_bias = ctx.dtypes
        dA = dA_part.sum(0, dtype=torch.float64).permute(0, 2, 1).reshape(nblk * width, nstate)
        dD = dD_part.sum(0, dtype=torch.float64).reshape(nblk * width)
        return (
            _from_blocks(du, dim).to(t_u),
            ddelta.to(t_delta),
            dA[:dim].to(t_A),
            dB_part.sum(1).transpose(1, 2).to(t_B),
            dC_part.sum(1).transpose(1, 2).to(t_C),
            dD[:dim].to(t_D) if has_D else None,
            _from_blocks(dz, dim).to(t_z) if has_z else None,
            ddelta.sum((0, 2), dtype=torch.float64).to(t_bias) if has_bias else None,
            None,
        )


def selective_scan_numba(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The fused CPU scan. Shapes as in ``selective_scan_fn``; float32 (or float64) compute,
    other dtypes are cast to float32 and the results back."""
    if u.is_cuda:
        raise RuntimeError("the numba scan runs on CPU tensors; use backend 'cuda' or 'reference'")
    out, last = _NumbaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------- dispatch
def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, length); got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be real (dim, state) = ({dim}, N); got {tuple(A.shape)}")
    nstate = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if m.shape != (batch, nstate, length):
            raise ValueError(
                f"{name} must be (batch, state, length) = {(batch, nstate, length)}; got {tuple(m.shape)} "
                "(constant or grouped B/C are not supported)"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"{name} must be ({dim},); got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be (batch, dim, length) like u; got {tuple(z.shape)}")


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
):
    """Selective scan with mamba-ssm's signature.

    Args:
        u, delta: (batch, dim, length) input and (pre-bias, pre-softplus) step size.
        A: (dim, state), real (Mamba uses ``-exp(A_log)``).
        B, C: (batch, state, length), input-dependent.
        D, delta_bias: (dim,) or None.  z: (batch, dim, length) gate or None.
        backend: ``auto`` | ``cuda`` | ``numba`` | ``reference``; None uses the process default
            (see ``set_scan_backend``).

    Returns:
        out (batch, dim, length), or ``(out, last_state)`` with last_state (batch, dim, state)
        when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    chosen = resolve_backend(backend, u.device)
    if chosen == "cuda":
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if chosen == "numba":
        return selective_scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


if os.environ.get("MAMBAVA_SCAN_BACKEND"):  # an override for one run, e.g. in benchmarks
    set_scan_backend(os.environ["MAMBAVA_SCAN_BACKEND"])
