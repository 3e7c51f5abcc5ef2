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
- ``numba``: our CPU kernel, a ``torch.autograd.Function`` whose forward and backward are each
  one fused pass compiled by numba, bias, softplus, skip and gate included; it reads the inputs
  in whatever layout they come in. The forward keeps only the N-vector state per (b, d) and
  saves it every 16 steps; the backward recomputes 16 steps at a time from those into a small
  scratch. Memory is O(B·D·L·(1 + N/16) + B·N·L), never the (B, D, L, N) tensor of mamba-ssm's
  ``selective_scan_ref``. It can also start from a given state (``initial_state``).
- ``reference``: the plain sequential recurrence in PyTorch with autograd; slow, the test oracle.

``auto`` picks ``cuda`` for GPU tensors when mamba-ssm is there, ``numba`` for CPU tensors, and
``reference`` for GPU tensors without mamba-ssm. The choice is logged once per backend.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import njit, types
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
        from mambava.errors import DeviceError

        if device.type != "cuda":
            raise DeviceError("model.scan_backend: cuda needs a CUDA device; torch runs on "
                              f"{device.type} here (use auto: numba on a CPU)")
        if not mamba_ssm_available():
            raise DeviceError("model.scan_backend: cuda needs mamba-ssm (pip install '.[gpu]' on a GPU machine; "
                              "or use auto)")
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
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
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
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(u.dtype)
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
# The kernels read and write the caller's tensors where they are: every (batch, channel, time)
# tensor comes in as a flat 1-D view of its storage plus its three element strides (a row of
# ``lay``), so a time-contiguous (b, d, l) tensor, a channel-last view such as the Mamba block's
# ``xz.chunk(2, dim=1)`` halves, and an expanded gradient all run the same compiled code (one
# signature per dtype: float32, and float64 for the tests). Each parallel work item is one batch
# element and one block of w contiguous channels. It walks through time in chunks of T steps:
# the chunk's inputs are copied into small (T, w) tiles (a transposing copy when time is the
# contiguous axis), everything elementwise is done on the tiles (bias, softplus and its
# derivative, the skip D, the gate silu(z) and its gradient), and the results are copied back.
# The innermost loops run over the w channels of a tile row, contiguous and indexed from 0, so
# LLVM turns them into SIMD code (8 float32 lanes with AVX2); the tiles stay in cache.

# Rows of ``lay`` (batch, channel, time strides, in elements) for the strided tensors.
_U, _DELTA, _Z, _BM, _CM, _Y, _DU, _DDELTA, _DZ = range(9)


@intrinsic
def _rint_f32(typingctx, x):
    """x rounded to the nearest whole number (one vroundps)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [ir.FloatType()])
        return builder.call(fn, [args[0]])

    return types.float32(types.float32), codegen


@intrinsic
def _ldexp_f32(typingctx, p, k):
    """p * 2**k for a float32 p in [0.5, 2) and a whole-valued k in [-124, 127]: k is added to
    p's exponent bits (the result stays a normal number)."""
    if p != types.float32 or k != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        kbits = builder.shl(builder.fptosi(args[1], i32), ir.Constant(i32, 23))
        return builder.bitcast(builder.add(builder.bitcast(args[0], i32), kbits), ir.FloatType())

    return types.float32(types.float32, types.float32), codegen


def _exp(x):
    """exp for the kernels: float32 gets a branch-free polynomial that LLVM vectorises."""
    return math.exp(x)


@overload(_exp)  # compiled once, inlined by LLVM (numba-level inlining only adds compile time)
def _exp_overload(x):
    # Without Intel SVML, numba's float32 exp is a scalar libm call per element (~3 ns) and it
    # blocks vectorisation. Here x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, two constants),
    # exp(r) = 1 + r + r^2 P(r) with P of degree 4 (fitted here for minimax relative error,
    # 3e-9 in exact arithmetic), and 2**k added to the exponent bits: 17 vector operations and
    # 11 constants (Cephes' expf, used before: 19 and 14; AVX2 has 16 registers, and constants
    # that do not fit are reloaded on every iteration). Relative error 1.2e-7 (1 ulp) over
    # [-86, 88], measured against float64 on 2M points. Inputs below -86 give exp(-86) ~ 4e-38
    # instead of underflowing to 0, harmless here: it only ever multiplies a state or is added
    # to 1.
    if x != types.float32:
        return lambda x: math.exp(x)

    def impl(x):
        x = min(max(x, np.float32(-86.0)), np.float32(88.0))
        k = _rint_f32(x * np.float32(1.4426950408889634))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.381461275741458e-3)
        p = p * r + np.float32(8.368710055947304e-3)
        p = p * r + np.float32(4.166838899254799e-2)
        p = p * r + np.float32(1.666652113199234e-1)
        p = p * r + np.float32(4.999999403953552e-1)
        p = p * (r * r) + r + np.float32(1.0)
        return _ldexp_f32(p, k)

    return impl


def _log1p_unit(e):
    """log(1 + e) for e in [0, 1]."""
    return math.log1p(e)


@overload(_log1p_unit)
def _log1p_unit_overload(e):
    # float32: log(1 + e) = 2 atanh(s) with s = e / (2 + e) in [0, 1/3], the odd series of
    # atanh to s**15 (truncation < 2e-8 relative), one division, no branch: vectorises, and keeps
    # its relative precision for small e (softplus of very negative inputs, i.e. small steps).
    if e != types.float32:
        return lambda e: math.log1p(e)

    def impl(e):
        s = e / (np.float32(2.0) + e)
        s2 = s * s
        p = np.float32(1 / 15)
        p = p * s2 + np.float32(1 / 13)
        p = p * s2 + np.float32(1 / 11)
        p = p * s2 + np.float32(1 / 9)
        p = p * s2 + np.float32(1 / 7)
        p = p * s2 + np.float32(1 / 5)
        p = p * s2 + np.float32(1 / 3)
        p = p * s2 + np.float32(1.0)
        return np.float32(2.0) * s * p

    return impl


@intrinsic
def _transpose8_f32(typingctx, src, ps, ss, dst, pd, sd):
    """dst.flat[pd + c sd + r] = src.flat[ps + r ss + c] for r, c < 8: an 8 x 8 float32 block
    moved transposed through registers (8 vector loads, 24 shuffles, 8 vector stores), where
    element-wise copying needs 64 scalar loads and stores. No bounds checks: callers stay inside."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == types.float32 and dst.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        s_, ps_, ss_, d_, pd_, sd_ = args
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), 8)
        sptr = context.make_array(sig.args[0])(context, builder, s_).data
        dptr = context.make_array(sig.args[3])(context, builder, d_).data

        def row(base, off, stride, k):
            idx = builder.add(off, builder.mul(stride, ir.Constant(i64, k)))
            return builder.bitcast(builder.gep(base, [idx]), vec.as_pointer())

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

        r = [builder.load(row(sptr, ps_, ss_, k), align=4) for k in range(8)]
        # Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
        t = []
        for k in range(0, 8, 2):
            t += [shuffle(r[k], r[k + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
                  shuffle(r[k], r[k + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        q = [shuffle(t[0], t[2], lo), shuffle(t[0], t[2], hi), shuffle(t[1], t[3], lo), shuffle(t[1], t[3], hi),
             shuffle(t[4], t[6], lo), shuffle(t[4], t[6], hi), shuffle(t[5], t[7], lo), shuffle(t[5], t[7], hi)]
        cols = ([shuffle(q[k], q[k + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for k in range(4)]
                + [shuffle(q[k], q[k + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for k in range(4)])
        for k in range(8):
            builder.store(cols[k], row(dptr, pd_, sd_, k), align=4)
        return context.get_dummy_value()

    return types.none(src, types.int64, types.int64, dst, types.int64, types.int64), codegen


def _transpose8(src, ps, ss, dst, pd, sd):
    """dst.flat[pd + c sd + r] = src.flat[ps + r ss + c] for r, c < 8."""


@overload(_transpose8)
def _transpose8_overload(src, ps, ss, dst, pd, sd):
    if src.dtype == types.float32 and dst.dtype == types.float32:
        return lambda src, ps, ss, dst, pd, sd: _transpose8_f32(src, ps, ss, dst, pd, sd)

    def impl(src, ps, ss, dst, pd, sd):  # float64 (the tests): element by element
        s1 = src.reshape(-1)
        d1 = dst.reshape(-1)
        for r in range(8):
            for c in range(8):
                d1[pd + c * sd + r] = s1[ps + r * ss + c]

    return impl


@njit(fastmath=True, cache=True, error_model="numpy")
def _load(src, strides, b, c0, cv, t0, tv, tile):
    """tile[t, j] = src[b, c0 + j, t0 + t] for t < tv, j < cv; ``src`` flat with ``strides``."""
    sb, sc, st = strides[0], strides[1], strides[2]
    base = b * sb + c0 * sc + t0 * st
    w = tile.shape[1]
    if sc == 1:  # channels contiguous: copy rows
        for t in range(tv):
            row = tile[t]
            p = base + t * st
            for j in range(cv):
                row[j] = src[p + j]
        return
    c8 = cv - cv % 8 if st == 1 else 0
    t8 = tv - tv % 8
    for j in range(0, c8, 8):  # time contiguous: 8 x 8 blocks transposed in registers
        for t in range(0, t8, 8):
            _transpose8(src, base + j * sc + t, sc, tile, t * w + j, w)
        for jj in range(j, j + 8):
            for t in range(t8, tv):
                tile[t, jj] = src[base + jj * sc + t]
    for j in range(c8, cv):  # the rest element by element, reading along time
        p = base + j * sc
        for t in range(tv):
            tile[t, j] = src[p + t * st]


@njit(fastmath=True, cache=True, error_model="numpy")
def _store(tile, dst, strides, b, c0, cv, t0, tv):
    """dst[b, c0 + j, t0 + t] = tile[t, j], the inverse of ``_load``."""
    sb, sc, st = strides[0], strides[1], strides[2]
    base = b * sb + c0 * sc + t0 * st
    w = tile.shape[1]
    if sc == 1:
        for t in range(tv):
            row = tile[t]
            p = base + t * st
            for j in range(cv):
                dst[p + j] = row[j]
        return
    c8 = cv - cv % 8 if st == 1 else 0
    t8 = tv - tv % 8
    for j in range(0, c8, 8):
        for t in range(0, t8, 8):
            _transpose8(tile, t * w + j, w, dst, base + j * sc + t, sc)
        for jj in range(j, j + 8):
            for t in range(t8, tv):
                dst[base + jj * sc + t] = tile[t, jj]
    for j in range(c8, cv):
        p = base + j * sc
        for t in range(tv):
            dst[p + t * st] = tile[t, j]


@njit(fastmath=True, cache=True, error_model="numpy")
def _step_sizes(xt, bk, tv, softplus, grad, dtt, spt):
    """dt = softplus(delta + bias) per tile row: xt holds delta, dtt receives dt.

    With ``grad``, ``spt`` gets d dt / d delta: sigmoid(x), or 1 where softplus is the identity
    (off, or x > 20 as in mamba-ssm). Both come from one e = exp(-|x|): softplus(x) = max(x, 0) +
    log1p(e) and sigmoid(x) = e / (1 + e) for x < 0, so small steps keep their relative precision.
    """
    w = xt.shape[1]
    one = xt.dtype.type(1)
    zero = xt.dtype.type(0)
    thr = xt.dtype.type(_SOFTPLUS_THRESHOLD)
    for t in range(tv):
        xr = xt[t]
        dr = dtt[t]
        if softplus and grad:
            sr = spt[t]
            for j in range(w):
                x = xr[j] + bk[j]
                e = _exp(-abs(x))
                r = one / (one + e)
                sp = max(x, zero) + _log1p_unit(e)
                dr[j] = x if x > thr else sp
                sr[j] = one if x > thr else (r if x >= zero else e * r)
        elif softplus:
            for j in range(w):
                x = xr[j] + bk[j]
                sp = max(x, zero) + _log1p_unit(_exp(-abs(x)))
                dr[j] = x if x > thr else sp
        else:
            for j in range(w):
                dr[j] = xr[j] + bk[j]
            if grad:
                sr = spt[t]
                for j in range(w):
                    sr[j] = one


@njit(fastmath=True, cache=True, error_model="numpy")
def _block_params(A, Dv, bias, b, c0, cv, w, has_D, has_bias):
    """A, D and the bias of one channel block as (n, w), (w,), (w,); padded channels get 0."""
    dim, nstate = A.shape
    At = np.zeros((nstate, w), dtype=A.dtype)
    dk = np.zeros(w, dtype=A.dtype)
    bk = np.zeros(w, dtype=A.dtype)
    for j in range(cv):
        for n in range(nstate):
            At[n, j] = A[c0 + j, n]
        if has_D:
            dk[j] = Dv[c0 + j]
        if has_bias:
            bk[j] = bias[c0 + j]
    return At, dk, bk


@njit(fastmath=True, cache=True, error_model="numpy")
def _fwd_item(b, k, w, tlen, length, u, dl, z, bm, cm, y, lay, A, Dv, bias, h0, last, hck,
              has_D, has_z, has_bias, softplus, has_h0, save):
    """Forward of batch element b, channel block k (channels k w .. k w + w - 1); see _scan_fwd."""
    dim, nstate = A.shape
    dtype = A.dtype
    c0 = k * w
    cv = min(w, dim - c0)
    # Padded channels (cv <= j < w) have u = 0, A = 0, D = 0: their state and output stay 0.
    At, dk, bk = _block_params(A, Dv, bias, b, c0, cv, w, has_D, has_bias)
    h = np.zeros((nstate, w), dtype=dtype)
    if has_h0:
        for j in range(cv):
            for n in range(nstate):
                h[n, j] = h0[b, c0 + j, n]
    ut = np.zeros((tlen, w), dtype=dtype)
    xt = np.zeros((tlen, w), dtype=dtype)
    dtt = np.zeros((tlen, w), dtype=dtype)
    zt = np.zeros((tlen, w), dtype=dtype)
    yt = np.zeros((tlen, w), dtype=dtype)
    bt = np.empty((tlen, nstate), dtype=dtype)
    ct = np.empty((tlen, nstate), dtype=dtype)
    one = dtype.type(1)
    for c in range((length + tlen - 1) // tlen):
        t0 = c * tlen
        tv = min(tlen, length - t0)
        if save:  # the state entering the chunk, where the backward restarts from
            hck[b, k, c] = h
        _load(u, lay[_U], b, c0, cv, t0, tv, ut)
        _load(dl, lay[_DELTA], b, c0, cv, t0, tv, xt)
        _step_sizes(xt, bk, tv, softplus, False, dtt, dtt)
        _load(bm, lay[_BM], b, 0, nstate, t0, tv, bt)
        _load(cm, lay[_CM], b, 0, nstate, t0, tv, ct)
        for t in range(tv):
            ur = ut[t]
            dr = dtt[t]
            yr = yt[t]
            for j in range(w):
                yr[j] = dk[j] * ur[j]
            for n in range(nstate):
                bn = bt[t, n]
                cn = ct[t, n]
                hr = h[n]
                ar = At[n]
                for j in range(w):
                    hn = _exp(dr[j] * ar[j]) * hr[j] + dr[j] * ur[j] * bn
                    hr[j] = hn
                    yr[j] += hn * cn
        if has_z:
            _load(z, lay[_Z], b, c0, cv, t0, tv, zt)
            for t in range(tv):
                yr = yt[t]
                zr = zt[t]
                for j in range(w):
                    yr[j] = yr[j] * zr[j] / (one + _exp(-zr[j]))
        _store(yt, y, lay[_Y], b, c0, cv, t0, tv)
    for j in range(cv):
        for n in range(nstate):
            last[b, c0 + j, n] = h[n, j]


@intrinsic
def _claim(typingctx, counter):
    """Atomically counter[0] += 1, returning the old value: the next work item to take."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


# Threads: the scan functions below are called from ``_in_threads`` on several Python threads
# at once (they release the GIL); each thread takes work items one at a time from a shared
# counter until none are left, so a thread that the OS deschedules on a shared machine delays
# only its current item. (numba's parallel=True would do the same with its OpenMP pool, but
# compiling its parallel wrapper re-optimises the inlined item functions: twice the cold compile
# time.) The bodies are separate functions, kept vectorisable.
@njit(nogil=True, cache=True)
def _scan_fwd(counter, w, tlen, length, u, dl, z, bm, cm, y, lay, A, Dv, bias, h0, last, hck,
              has_D, has_z, has_bias, softplus, has_h0, save):
    """The forward scan: y = scan(...) (gated), last = the final state (b, d, n).

    ``u, dl`` (delta), ``z``, ``bm``, ``cm`` (B and C, channel axis = state) and ``y`` are flat
    storage views strided as the rows ``_U ..`` of ``lay``; ``A`` (d, n), ``Dv``, ``bias`` (d,),
    ``h0`` (b, d, n) the initial state. One work item per (batch element, block of w channels);
    with ``save`` the state entering every chunk of ``tlen`` steps goes to ``hck`` (b, blocks,
    chunks, n, w) for the backward.
    """
    batch = last.shape[0]
    nblk = (A.shape[0] + w - 1) // w
    while True:
        it = _claim(counter)
        if it >= batch * nblk:
            break
        _fwd_item(it // nblk, it % nblk, w, tlen, length, u, dl, z, bm, cm, y, lay, A, Dv, bias, h0,
                  last, hck, has_D, has_z, has_bias, softplus, has_h0, save)


@njit(fastmath=True, cache=True, error_model="numpy")
def _chunk_states(ut, dtt, bt, At, tv, hs, decay):
    """A chunk's states hs[t + 1] = h_t from hs[0] (the state entering it), and the decays exp(dt_t A)."""
    nstate, w = hs.shape[1], hs.shape[2]
    for t in range(tv):
        ur = ut[t]
        dr = dtt[t]
        for n in range(nstate):
            bn = bt[t, n]
            ar = At[n]
            hp = hs[t, n]
            hc = hs[t + 1, n]
            ec = decay[t, n]
            for j in range(w):
                e = _exp(dr[j] * ar[j])
                ec[j] = e
                hc[j] = e * hp[j] + dr[j] * ur[j] * bn


@njit(fastmath=True, cache=True, error_model="numpy")
def _bwd_step(t, t0, b, k, ut, dtt, gt, zt, bt, ct, spt, At, dk, hs, decay, has_z, gy, gh, dA_acc, dD_acc,
              dbias_acc, dut, ddt, dzt, dB_p, dC_p):
    """Backward through time step t of a chunk starting at t0: dL/du, dL/d delta, dL/dz at t, the
    B and C gradients at t, the A, D and bias gradients accumulated, dL/dh carried to t - 1 in gh."""
    nstate, w = gh.shape
    one = gh.dtype.type(1)
    zero = gh.dtype.type(0)
    ur = ut[t]
    dr = dtt[t]
    gr = gt[t]
    dur = dut[t]
    ddr = ddt[t]
    if has_z:
        # y before the gate, from the recomputed state.
        for j in range(w):
            gy[j] = dk[j] * ur[j]
        for n in range(nstate):
            cn = ct[t, n]
            hc = hs[t + 1, n]
            for j in range(w):
                gy[j] += hc[j] * cn
        zr = zt[t]
        dzr = dzt[t]
        for j in range(w):
            sig = one / (one + _exp(-zr[j]))
            dzr[j] = gr[j] * gy[j] * sig * (one + zr[j] * (one - sig))
            gy[j] = gr[j] * zr[j] * sig
    else:
        for j in range(w):
            gy[j] = gr[j]
    for j in range(w):
        dD_acc[j] += gy[j] * ur[j]
        dur[j] = gy[j] * dk[j]
        ddr[j] = zero
    for n in range(nstate):
        bn = bt[t, n]
        cn = ct[t, n]
        ar = At[n]
        hp = hs[t, n]
        hc = hs[t + 1, n]
        ec = decay[t, n]
        ghr = gh[n]
        dAr = dA_acc[n]
        db = zero
        dc = zero
        for j in range(w):
            e = ec[j]
            ghn = ghr[j] + gy[j] * cn
            dc += gy[j] * hc[j]
            e_prev = e * hp[j]
            # h_t = e h_{t-1} + dt B u with e = exp(dt A):
            # dh/d dt = A e h_{t-1} + B u, dh/dA = dt e h_{t-1}, dh/dB = dt u, dh/du = dt B
            ddr[j] += ghn * (ar[j] * e_prev + bn * ur[j])
            dAr[j] += ghn * dr[j] * e_prev
            db += ghn * dr[j] * ur[j]
            dur[j] += ghn * dr[j] * bn
            ghr[j] = ghn * e
        dB_p[b, k, n, t0 + t] = db
        dC_p[b, k, n, t0 + t] = dc
    # Through softplus and the bias: d dt / d delta, and d bias sums over time.
    sr = spt[t]
    for j in range(w):
        g = ddr[j] * sr[j]
        ddr[j] = g
        dbias_acc[j] += g


@njit(fastmath=True, cache=True, error_model="numpy")
def _bwd_item(b, k, w, tlen, length, u, dl, z, bm, cm, gout, du, ddl, dz, lay, A, Dv, bias, hck,
              has_D, has_z, has_bias, softplus, dA_p, dD_p, dbias_p, dB_p, dC_p, dh0):
    """Backward of batch element b, channel block k; see ``_scan_bwd``."""
    dim, nstate = A.shape
    dtype = A.dtype
    c0 = k * w
    cv = min(w, dim - c0)
    At, dk, bk = _block_params(A, Dv, bias, b, c0, cv, w, has_D, has_bias)
    ut = np.zeros((tlen, w), dtype=dtype)
    xt = np.zeros((tlen, w), dtype=dtype)
    dtt = np.zeros((tlen, w), dtype=dtype)
    spt = np.zeros((tlen, w), dtype=dtype)
    zt = np.zeros((tlen, w), dtype=dtype)
    gt = np.zeros((tlen, w), dtype=dtype)
    dut = np.zeros((tlen, w), dtype=dtype)
    ddt = np.zeros((tlen, w), dtype=dtype)
    dzt = np.zeros((tlen, w), dtype=dtype)
    bt = np.empty((tlen, nstate), dtype=dtype)
    ct = np.empty((tlen, nstate), dtype=dtype)
    # The chunk's states, hs[t + 1] = h_t (hs[0]: entering the chunk), and decays exp(dt_t A).
    hs = np.empty((tlen + 1, nstate, w), dtype=dtype)
    decay = np.empty((tlen, nstate, w), dtype=dtype)
    gh = np.zeros((nstate, w), dtype=dtype)  # dL/dh_t, carried backwards in time
    dA_acc = np.zeros((nstate, w), dtype=dtype)
    dD_acc = np.zeros(w, dtype=dtype)
    dbias_acc = np.zeros(w, dtype=dtype)
    gy = np.empty(w, dtype=dtype)
    for c in range((length + tlen - 1) // tlen - 1, -1, -1):
        t0 = c * tlen
        tv = min(tlen, length - t0)
        _load(u, lay[_U], b, c0, cv, t0, tv, ut)
        _load(dl, lay[_DELTA], b, c0, cv, t0, tv, xt)
        _step_sizes(xt, bk, tv, softplus, True, dtt, spt)
        _load(bm, lay[_BM], b, 0, nstate, t0, tv, bt)
        _load(cm, lay[_CM], b, 0, nstate, t0, tv, ct)
        _load(gout, lay[_Y], b, c0, cv, t0, tv, gt)
        if has_z:
            _load(z, lay[_Z], b, c0, cv, t0, tv, zt)
        hs[0] = hck[b, k, c]  # recompute the chunk's states from the one the forward saved
        _chunk_states(ut, dtt, bt, At, tv, hs, decay)
        for t in range(tv - 1, -1, -1):
            _bwd_step(t, t0, b, k, ut, dtt, gt, zt, bt, ct, spt, At, dk, hs, decay, has_z, gy, gh, dA_acc, dD_acc,
                      dbias_acc, dut, ddt, dzt, dB_p, dC_p)
        _store(dut, du, lay[_DU], b, c0, cv, t0, tv)
        _store(ddt, ddl, lay[_DDELTA], b, c0, cv, t0, tv)
        if has_z:
            _store(dzt, dz, lay[_DZ], b, c0, cv, t0, tv)
    for j in range(cv):
        for n in range(nstate):
            dA_p[b, c0 + j, n] = dA_acc[n, j]
            dh0[b, c0 + j, n] = gh[n, j]  # dL/dh_{-1}: the gradient of the initial state
        dD_p[b, c0 + j] = dD_acc[j]
        dbias_p[b, c0 + j] = dbias_acc[j]


@njit(nogil=True, cache=True)
def _scan_bwd(counter, w, tlen, length, u, dl, z, bm, cm, gout, du, ddl, dz, lay, A, Dv, bias, hck,
              has_D, has_z, has_bias, softplus, dA_p, dD_p, dbias_p, dB_p, dC_p, dh0):
    """Gradients of ``_scan_fwd`` given ``gout`` = dL/dy, in the same layouts.

    Per (batch element, channel block), chunks of ``tlen`` steps are visited from the last: the
    chunk's states are recomputed from the one the forward saved in ``hck`` into a (tlen + 1, n,
    w) scratch (with their decays), then a reverse pass carries g_h = dL/dh back in time:
    g_h(t) = C_t g_y(t) + exp(dt_{t+1} A) g_h(t + 1). ``du, ddl, dz`` are written strided as
    their ``lay`` rows; ``ddl`` is the gradient of delta (before bias and softplus). Sums over
    channels (dB, dC: (b, blocks, n, l)) and over the batch (dA, dD, d bias: (b, d, n), (b, d))
    are partials, so no two work items write the same place; the caller adds them up.
    """
    batch = dh0.shape[0]
    nblk = (A.shape[0] + w - 1) // w
    while True:
        it = _claim(counter)
        if it >= batch * nblk:
            break
        _bwd_item(it // nblk, it % nblk, w, tlen, length, u, dl, z, bm, cm, gout, du, ddl, dz, lay,
                  A, Dv, bias, hck, has_D, has_z, has_bias, softplus, dA_p, dD_p, dbias_p, dB_p, dC_p, dh0)


_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _drop_pool() -> None:  # in a forked child the pool's threads do not exist
    global _pool, _pool_workers
    _pool, _pool_workers = None, 0


os.register_at_fork(after_in_child=_drop_pool)


def _in_threads(items: int, fn, *args) -> None:
    """Run ``fn(counter, *args)`` on min(numba.get_num_threads(), items) threads (this one and
    pool threads), all taking work items from one shared counter."""
    global _pool, _pool_workers
    threads = max(1, min(numba.get_num_threads(), items))
    counter = np.zeros(1, np.int64)
    _load_cached(fn, (counter, *args))
    if threads == 1:
        fn(counter, *args)
        return
    if _pool_workers < threads - 1:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="mambava-scan")
        _pool_workers = threads - 1
    others = [_pool.submit(fn, counter, *args) for _ in range(threads - 1)]
    try:
        fn(counter, *args)
    finally:
        for f in others:
            f.result()


def _flat(t: torch.Tensor | None, dtype: np.dtype) -> tuple[np.ndarray, tuple[int, ...]]:
    """A flat numpy view of the storage that ``t`` spans, and its strides (no copy)."""
    if t is None or t.numel() == 0:
        return np.zeros(1, dtype), (0,) * (t.dim() if t is not None else 3)
    t = t.detach()
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.as_strided((span,), (1,)).numpy(), t.stride()


def _strided(tensors: list[torch.Tensor | None], dtype: torch.dtype) -> tuple[list[np.ndarray], np.ndarray]:
    """Flat views of (batch, channel, time) tensors and their strides, the rows of ``lay``."""
    npdtype = np.float64 if dtype == torch.float64 else np.float32
    lay = np.zeros((9, 3), dtype=np.int64)
    arrays = []
    for i, t in enumerate(tensors):
        arr, strides = _flat(t, npdtype)
        lay[i] = strides
        arrays.append(arr)
    return arrays, lay


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` detached in the compute dtype: the same tensor (no copy) when it already is."""
    if t is None:
        return None
    t = t.detach()
    return t if t.dtype == dtype else t.to(dtype)


def _small(t: torch.Tensor | None, dtype: torch.dtype, ndim: int) -> torch.Tensor:
    """A small parameter (A, D, bias, initial state), contiguous; a dummy for None."""
    if t is None:
        return torch.zeros((1,) * ndim, dtype=dtype)
    return _cast(t, dtype).contiguous()


def _empty_as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty (b, d, l) tensor laid out like ``t``: channel-last if t's channels are the
    faster axis (the Mamba block's tensors), else time-contiguous."""
    batch, dim, length = t.shape
    if t.stride(1) < t.stride(2):
        return torch.empty(batch, length, dim, dtype=dtype).transpose(1, 2)
    return torch.empty(batch, dim, length, dtype=dtype)


# Time steps per chunk: the backward restarts from a state saved every _CHUNK steps (memory
# b d n l / _CHUNK for those states).
_CHUNK = 16


def _tiles(batch: int, dim: int) -> tuple[int, int]:
    """(channels per work item, time steps per chunk).

    Width: a multiple of 8 (full AVX2 lanes), wide for vectorisation, but with at least one
    work item per thread. Chunk: 16 steps keep the backward's (17, n, w) state and decay
    scratch and the tiles in the L2 cache at the paper's n = 8, w = 256.
    """
    threads = numba.get_num_threads()
    width = min(dim, 256)
    blocks_needed = -(-threads // max(batch, 1))
    if blocks_needed > 1:
        width = min(width, -(-dim // blocks_needed))
    return max(8, -(-width // 8) * 8), _CHUNK



# The same machine code in every run. numba compiles the kernels on first use and caches the
# machine code on disk (cache=True), but under fastmath the code of a function compiled in this
# process and the code loaded from that cache are not optimised identically (numba issue #10617;
# the callees inlined into a cached kernel differ from their standalone compilation, and a
# process that compiled them runs those). Measured here: the first run after an install (fresh
# compile) and every later run (cached code) gave scan outputs and gradients that differ in the
# last bits, hence trained weights and CCCs that differ at 1e-8, and other hashes everywhere
# downstream in DVC. So a process never runs freshly compiled kernels: when the cache lacks them,
# a child process compiles them (writing the cache), and this process loads them from there. Where
# the cache cannot be written (a read-only install without NUMBA_CACHE_DIR), the kernels compile
# here, as before, with a warning.
_WARMING = "MAMBAVA_SCAN_WARMING"
_checked: set[tuple[str, str]] = set()


def _load_cached(fn, args: tuple) -> None:
    """Before the first call of ``fn`` with arrays of this dtype: make sure numba's cache holds it."""
    key = (fn.py_func.__name__, str(args[4].dtype))
    if key in _checked or os.environ.get(_WARMING) or numba.config.DISABLE_JIT:
        return
    _checked.add(key)
    sig = tuple(numba.typeof(a) for a in args)
    try:
        if fn._cache.load_overload(sig, fn.targetctx) is not None:  # numba's own first step
            return
    except AttributeError:  # pragma: no cover - a numba without these internals (it is pinned)
        pass
    dtype = "float64" if args[4].dtype == np.float64 else "float32"
    root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {root!r}); from mambava.models import ssm; ssm._warm({dtype!r})"
    log.info("compiling the CPU scan kernels (%s) once, in a child process", dtype)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, _WARMING: "1"},
                          capture_output=True, text=True)
    if done.returncode != 0 or fn._cache.load_overload(sig, fn.targetctx) is None:
        log.warning("numba's cache could not provide the CPU scan kernels (%s); they compile in this "
                    "process, and its results can differ in the last bits from a run that loads them. %s",
                    numba.config.CACHE_DIR or "__pycache__ beside ssm.py", done.stderr[-500:])


def _warm(dtype: str) -> None:
    """Run the numba scan forward and backward once on a tiny input (compiles and caches them)."""
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    u, delta, z = (torch.randn(1, 8, 4, generator=g, dtype=dt, requires_grad=True) for _ in range(3))
    B, C = (torch.randn(1, 2, 4, generator=g, dtype=dt, requires_grad=True) for _ in range(2))
    A = (-torch.rand(8, 2, generator=g, dtype=dt)).requires_grad_()
    D, bias = torch.ones(8, dtype=dt, requires_grad=True), torch.zeros(8, dtype=dt, requires_grad=True)
    selective_scan_numba(u, delta, A, B, C, D, z, bias, True).sum().backward()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, dim, length = u.shape
        nstate = A.shape[1]
        grad = any(ctx.needs_input_grad)
        width, tlen = _tiles(batch, dim)
        nblk, nchunk = -(-dim // width), -(-length // tlen)
        u_, dl_, z_, B_, C_ = (_cast(t, dtype) for t in (u, delta, z, B, C))
        y = _empty_as(u_, dtype)
        last = torch.empty(batch, dim, nstate, dtype=dtype)
        hck = torch.empty((batch, nblk, nchunk, nstate, width) if grad else (1,) * 5, dtype=dtype)
        arrays, lay = _strided([u_, dl_, z_, B_, C_, y], dtype)
        small = [_small(A, dtype, 2), _small(D, dtype, 1), _small(delta_bias, dtype, 1), _small(h0, dtype, 3)]
        _in_threads(batch * nblk, _scan_fwd, width, tlen, length, *arrays, lay, *(t.numpy() for t in small),
                    last.numpy(), hck.numpy(), D is not None, z is not None, delta_bias is not None,
                    bool(delta_softplus), h0 is not None, grad)
        if grad:
            ctx.save_for_backward(u_, dl_, z_, B_, C_, hck, *small[:3])
        ctx.flags = (D is not None, z is not None, delta_bias is not None, bool(delta_softplus), h0 is not None)
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias, h0)]
        ctx.tiles = (width, tlen)
        ctx.mark_non_differentiable(last)
        return y.to(u.dtype), last.to(u.dtype)

    @staticmethod
    def backward(ctx, dout, _dlast):
        # The last state is an output for streaming only; like mamba-ssm, no gradient through it.
        u_, dl_, z_, B_, C_, hck, A, D, bias = ctx.saved_tensors
        has_D, has_z, has_bias, softplus, has_h0 = ctx.flags
        width, tlen = ctx.tiles
        dtype = u_.dtype
        batch, dim, length = u_.shape
        nstate, nblk = B_.shape[1], hck.shape[1]
        du, ddelta = _empty_as(u_, dtype), _empty_as(dl_, dtype)
        dz = _empty_as(z_, dtype) if has_z else None
        dA, dD, dbias = (torch.empty(batch, dim, nstate, dtype=dtype), torch.empty(batch, dim, dtype=dtype),
                         torch.empty(batch, dim, dtype=dtype))
        dB, dC = (torch.empty(batch, nblk, nstate, length, dtype=dtype) for _ in range(2))
        dh0 = torch.empty(batch, dim, nstate, dtype=dtype)
        arrays, lay = _strided([u_, dl_, z_, B_, C_, _cast(dout, dtype), du, ddelta, dz], dtype)
        _in_threads(batch * nblk, _scan_bwd, width, tlen, length, *arrays, lay, A.numpy(), D.numpy(), bias.numpy(),
                    hck.numpy(), has_D, has_z, has_bias, softplus, dA.numpy(), dD.numpy(), dbias.numpy(),
                    dB.numpy(), dC.numpy(), dh0.numpy())
        t_u, t_delta, t_A, t_B, t_C, t_D, t_z, t_bias, t_h0 = ctx.dtypes
        # The sums over the batch in float64 (they add b partial sums of l terms each).
        return (
            du.to(t_u),
            ddelta.to(t_delta),
            dA.sum(0, dtype=torch.float64).to(t_A),
            (dB[:, 0] if nblk == 1 else dB.sum(1)).to(t_B),
            (dC[:, 0] if nblk == 1 else dC.sum(1)).to(t_C),
            dD.sum(0, dtype=torch.float64).to(t_D) if has_D else None,
            dz.to(t_z) if has_z else None,
            dbias.sum(0, dtype=torch.float64).to(t_bias) if has_bias else None,
            dh0.to(t_h0) if has_h0 else None,
            None,
        )


def selective_scan_numba(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):
    """The fused CPU scan. Shapes as in ``selective_scan_fn``; float32 (or float64) compute,
    other dtypes are cast to float32 and the results back. ``initial_state`` (batch, dim, state)
    starts the recurrence from a given state (zero by default), e.g. to run a long sequence in
    pieces."""
    if u.is_cuda:
        raise RuntimeError("the numba scan runs on CPU tensors; use backend 'cuda' or 'reference'")
    out, last = _NumbaScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------- dispatch
def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state=None) -> None:
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
    if initial_state is not None and initial_state.shape != (batch, dim, nstate):
        raise ValueError(f"initial_state must be (batch, dim, state) = {(batch, dim, nstate)}; "
                         f"got {tuple(initial_state.shape)}")


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
    initial_state: torch.Tensor | None = None,
):
    """Selective scan with mamba-ssm's signature.

    Args:
        u, delta: (batch, dim, length) input and (pre-bias, pre-softplus) step size.
        A: (dim, state), real (Mamba uses ``-exp(A_log)``).
        B, C: (batch, state, length), input-dependent.
        D, delta_bias: (dim,) or None.  z: (batch, dim, length) gate or None.
        backend: ``auto`` | ``cuda`` | ``numba`` | ``reference``; None uses the process default
            (see ``set_scan_backend``).
        initial_state: (batch, dim, state) state before the first step, or None for zero (an
            extension of ours: the ``numba`` and ``reference`` backends only).

    Returns:
        out (batch, dim, length), or ``(out, last_state)`` with last_state (batch, dim, state)
        when ``return_last_state``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = resolve_backend(backend, u.device)
    if chosen == "cuda":
        if initial_state is not None:
            raise ValueError("mamba-ssm's selective_scan_fn takes no initial_state")
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    fn = selective_scan_numba if chosen == "numba" else selective_scan_ref
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


if os.environ.get("MAMBAVA_SCAN_BACKEND"):  # an override for one run, e.g. in benchmarks
    set_scan_backend(os.environ["MAMBAVA_SCAN_BACKEND"])
