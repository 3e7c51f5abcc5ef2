"""The selective scan: the numba CPU kernel against independent oracles.

Oracles: the sequential PyTorch recurrence evaluated in float64 (its gradients by autograd), a
closed form (A = 0 turns the scan into a cumulative sum), and finite differences (gradcheck).

Tolerance for the float32 kernel against the float64 oracle: rtol 1e-4, atol 1e-4 on outputs
and on the gradient of every input. That is tighter than mamba-ssm's own fp32 tests (rtol 6e-4,
atol 2e-3): the CPU kernel accumulates sequentially in float32 and measures ~1e-6 here.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mambava.models import ssm
from mambava.models.ssm import selective_scan_fn, selective_scan_numba, selective_scan_ref

RTOL, ATOL = 1e-4, 1e-4


def make_inputs(batch, dim, length, nstate, *, seed=0, dtype=torch.float32, noncontig=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=dtype)

    u = r(batch, dim, length)
    # Positive step sizes keep the scan stable also without softplus; one large value takes
    # softplus's identity branch (above 20), as in mamba-ssm.
    delta = 0.5 + 0.5 * torch.rand(batch, dim, length, generator=g, dtype=dtype)
    delta[:, 0, 0] = 25.0
    A = -torch.rand(dim, nstate, generator=g, dtype=dtype) * 2  # negative real, as in Mamba
    B = r(batch, nstate, length)
    C = r(batch, nstate, length)
    D = r(dim)
    z = r(batch, dim, length)
    bias = torch.rand(dim, generator=g, dtype=dtype) - 0.5
    if noncontig:  # as from xz.chunk(2, dim=1) in the Mamba block
        u = torch.cat([u, z], dim=1)[:, :dim]
        z = torch.cat([u, z], dim=1)[:, dim:]
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def run(fn, inputs, use, softplus, last, grad_out=None, dtype=None):
    """Output (and last state) and the gradients of every used input."""
    names = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if use[k]]
    leaves = {k: inputs[k].detach().to(dtype or inputs[k].dtype).requires_grad_() for k in names}
    kwargs = {k: leaves.get(k) for k in ("D", "z", "delta_bias")}
    res = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], **kwargs,
             delta_softplus=softplus, return_last_state=last)
    out, state = res if last else (res, None)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out.to(out.dtype))
    return out, state, dict(zip(names, grads)), grad_out


OPTIONS = [  # (D, z, delta_bias, softplus, return_last_state)
    (False, False, False, False, False),
    (True, False, False, False, True),
    (False, True, False, False, False),
    (False, False, True, True, False),
    (False, False, False, True, True),
    (True, True, True, True, True),
]
SHAPES = [  # (batch, dim, length, state): edge cases, padding to 8 lanes, several blocks
    (1, 1, 1, 1),
    (2, 5, 17, 4),
    (3, 20, 33, 8),
    (1, 300, 7, 2),
    (4, 16, 64, 16),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_numba_matches_float64_reference(shape, opts):
    use_D, use_z, use_bias, softplus, last = opts
    use = {"D": use_D, "z": use_z, "delta_bias": use_bias}
    inputs = make_inputs(*shape, seed=hash((shape, opts)) % 1000)
    out, state, grads, g = run(selective_scan_numba, inputs, use, softplus, last)
    out_r, state_r, grads_r, _ = run(selective_scan_ref, inputs, use, softplus, last, g, torch.float64)
    assert out.dtype == torch.float32 and out.shape == shape[:2] + shape[2:3]
    torch.testing.assert_close(out.double(), out_r, rtol=RTOL, atol=ATOL)
    if last:
        assert state.shape == (shape[0], shape[1], shape[3])
        torch.testing.assert_close(state.double(), state_r, rtol=RTOL, atol=ATOL)
    for k in grads_r:
        assert grads[k].shape == inputs[k].shape, k
        torch.testing.assert_close(grads[k].double(), grads_r[k], rtol=RTOL, atol=ATOL, msg=k)


def test_noncontiguous_inputs():
    use = {"D": True, "z": True, "delta_bias": True}
    inputs = make_inputs(2, 12, 40, 8, noncontig=True)
    assert not inputs["u"].is_contiguous()
    out, _, grads, g = run(selective_scan_numba, inputs, use, True, False)
    out_r, _, grads_r, _ = run(selective_scan_ref, inputs, use, True, False, g, torch.float64)
    torch.testing.assert_close(out.double(), out_r, rtol=RTOL, atol=ATOL)
    for k in grads_r:
        torch.testing.assert_close(grads[k].double(), grads_r[k], rtol=RTOL, atol=ATOL, msg=k)


@pytest.mark.parametrize("fn", [selective_scan_numba, selective_scan_ref])
def test_closed_form_when_A_is_zero(fn):
    """With A = 0 the state is a running sum: h_t = sum_{s<=t} dt_s B_s u_s. An oracle that
    shares no code with either implementation."""
    x = make_inputs(2, 6, 25, 3, seed=3)
    A = torch.zeros(6, 3)
    dt = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None])
    h = torch.cumsum(dt[:, :, :, None] * x["B"].transpose(1, 2)[:, None] * x["u"][..., None], dim=2)
    expected = (h * x["C"].transpose(1, 2)[:, None]).sum(-1) + x["D"][:, None] * x["u"]
    expected = expected * x["z"] * torch.sigmoid(x["z"])
    out, last = fn(x["u"], x["delta"], A, x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, h[:, :, -1], rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    """Finite differences check the kernel's backward without trusting any other code."""
    x = make_inputs(2, 3, 6, 2, seed=5, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [x[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_numba(*a, delta_softplus=True), leaves, eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    x = make_inputs(2, 8, 20, 4)
    args = [x[k].to(dtype).requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    out = selective_scan_numba(*args, delta_softplus=True)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(a.grad is not None and a.grad.dtype == dtype for a in args)
    ref = selective_scan_ref(*[a.detach().double() for a in args], delta_softplus=True)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_dispatch_and_logging(caplog):
    x = make_inputs(1, 4, 5, 2)
    ssm._logged.discard("numba")
    with caplog.at_level(logging.INFO, logger="mambava"):
        a = selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="auto")
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="numba")
    assert [r.getMessage() for r in caplog.records].count(
        next(r.getMessage() for r in caplog.records if "numba" in r.getMessage())
    ) == 1, "the backend is logged once"
    b = selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="reference")
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    assert ssm.resolve_backend("auto", torch.device("cpu")) == "numba"
    with pytest.raises(RuntimeError):
        ssm.resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError):
        ssm.resolve_backend("fast", torch.device("cpu"))


def test_default_backend_is_settable():
    try:
        ssm.set_scan_backend("reference")
        assert ssm.resolve_backend(None, torch.device("cpu")) == "reference"
    finally:
        ssm.set_scan_backend("auto")
    with pytest.raises(ValueError):
        ssm.set_scan_backend("gpu")


def test_shape_errors():
    x = make_inputs(2, 4, 5, 3)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"][:, :2], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fn(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
    with pytest.raises(ValueError, match="initial_state must be"):
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], initial_state=torch.zeros(2, 4, 2))


@pytest.mark.gpu
def test_cuda_backend_matches_numba():
    mamba_ssm = pytest.importorskip("mamba_ssm")  # noqa: F841
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    use = {"D": True, "z": True, "delta_bias": True}
    inputs = make_inputs(2, 64, 128, 8)
    out, _, grads, g = run(selective_scan_numba, inputs, use, True, False)
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    fn = lambda *a, **k: selective_scan_fn(*a, **k, backend="cuda")  # noqa: E731
    out_c, _, grads_c, _ = run(fn, cuda_inputs, use, True, False, g.cuda())
    torch.testing.assert_close(out_c.cpu(), out, rtol=6e-4, atol=2e-3)
    for k in grads:
        torch.testing.assert_close(grads_c[k].cpu(), grads[k], rtol=6e-4, atol=2e-3, msg=k)


def test_small_steps_keep_accurate_softplus_gradients():
    """mamba-ssm initialises dt down to 1e-3 (floor 1e-4): softplus's derivative there is tiny
    and must not lose its relative precision."""
    use = {"D": True, "z": False, "delta_bias": True}
    inputs = make_inputs(2, 16, 30, 4, seed=11)
    inputs["delta"] = inputs["delta"] - 9.0  # dt = softplus(x) ~ 1e-4 .. 1e-3
    out, _, grads, g = run(selective_scan_numba, inputs, use, True, False)
    out_r, _, grads_r, _ = run(selective_scan_ref, inputs, use, True, False, g, torch.float64)
    for k in ("delta", "delta_bias"):
        scale = grads_r[k].abs().max()
        torch.testing.assert_close(grads[k].double() / scale, grads_r[k] / scale, rtol=1e-4, atol=1e-5, msg=k)


def test_initial_state_matches_reference_with_gradients():
    """A scan that starts from a given state (to run a long sequence in pieces): outputs and the
    gradients of every input, the initial state included, against the float64 oracle."""
    x = make_inputs(3, 20, 37, 8, seed=21)
    h0 = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(22))
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    g = torch.randn(3, 20, 37, generator=torch.Generator().manual_seed(23))
    results = []
    for fn, dtype in ((selective_scan_numba, torch.float32), (selective_scan_ref, torch.float64)):
        leaves = [x[k].to(dtype).requires_grad_() for k in names] + [h0.to(dtype).requires_grad_()]
        out, last = fn(*leaves[:8], delta_softplus=True, return_last_state=True, initial_state=leaves[8])
        grads = torch.autograd.grad(out, leaves, g.to(dtype))
        results.append((out, last, grads))
    (out, last, grads), (out_r, last_r, grads_r) = results
    torch.testing.assert_close(out.double(), out_r, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last.double(), last_r, rtol=RTOL, atol=ATOL)
    for k, a, b in zip(names + ["initial_state"], grads, grads_r):
        torch.testing.assert_close(a.double(), b, rtol=RTOL, atol=ATOL, msg=k)


def test_scan_in_pieces_equals_one_scan():
    x = make_inputs(2, 24, 100, 4, seed=24)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    whole, last = selective_scan_numba(*args, delta_softplus=True, return_last_state=True)
    state, outs = None, []
    for s in (slice(0, 33), slice(33, 34), slice(34, 100)):
        piece = [a[..., s] if a.dim() == 3 else a for a in args]
        out, state = selective_scan_numba(*piece, delta_softplus=True, return_last_state=True, initial_state=state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, last, rtol=1e-6, atol=1e-6)


def test_channel_last_inputs_as_in_the_mamba_block():
    """The Mamba block's tensors are (b, l, d) memory seen as (b, d, l): u and z halves of one
    projection, delta, B and C transposed views. The kernel reads them in place and writes the
    output and the gradients channel-last too."""
    b, d, l, n = 2, 24, 45, 8
    g = torch.Generator().manual_seed(25)
    xz = torch.randn(b, l, 2 * d, generator=g)
    bc = torch.randn(b, l, 3 + 2 * n, generator=g)
    ref = make_inputs(b, d, l, n, seed=26)
    inputs = dict(ref, u=xz[..., :d].transpose(1, 2), z=xz[..., d:].transpose(1, 2),
                  delta=(0.5 * torch.rand(b, l, d, generator=g)).transpose(1, 2),
                  B=bc[..., 3:3 + n].transpose(1, 2), C=bc[..., 3 + n:].transpose(1, 2))
    assert inputs["u"].stride(1) == 1 and not inputs["u"].is_contiguous()
    use = {"D": True, "z": True, "delta_bias": True}
    out, _, grads, go = run(selective_scan_numba, inputs, use, True, False)
    out_r, _, grads_r, _ = run(selective_scan_ref, inputs, use, True, False, go, torch.float64)
    torch.testing.assert_close(out.double(), out_r, rtol=RTOL, atol=ATOL)
    for k in grads_r:
        torch.testing.assert_close(grads[k].double(), grads_r[k], rtol=RTOL, atol=ATOL, msg=k)
    assert out.stride(1) == 1 and grads["u"].stride(1) == grads["delta"].stride(1) == 1, "channel-last in and out"
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = selective_scan_numba(**leaves, delta_softplus=True)
    out.backward(torch.ones(()).expand(out.shape))  # an expanded (stride 0) gradient
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    selective_scan_ref(**ref_leaves, delta_softplus=True).sum().backward()
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad.double(), ref_leaves[k].grad, rtol=RTOL, atol=ATOL, msg=k)


def test_threads_give_identical_results():
    """Work items are (batch element, channel block) and never share an output: the result does
    not depend on the number of threads."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    use = {"D": True, "z": True, "delta_bias": True}
    inputs = make_inputs(3, 40, 50, 8, seed=27)
    before = numba.get_num_threads()
    try:
        res = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            res.append(run(selective_scan_numba, inputs, use, True, True))
    finally:
        numba.set_num_threads(before)
    (out1, last1, grads1, _), (out2, last2, grads2, _) = res
    assert torch.equal(out1, out2) and torch.equal(last1, last2)
    for k in grads1:
        assert torch.equal(grads1[k], grads2[k]), k


_HASH_SCRIPT = """
import hashlib, torch
from mambava.models.ssm import selective_scan_numba
g = torch.Generator().manual_seed(0)
b, d, n, l = 2, 16, 4, 64
u, dt, z = (torch.randn(b, d, l, generator=g, requires_grad=True) for _ in range(3))
B, C = (torch.randn(b, n, l, generator=g, requires_grad=True) for _ in range(2))
A = (-torch.rand(d, n, generator=g)).requires_grad_()
D, bias = torch.randn(d, generator=g, requires_grad=True), torch.randn(d, generator=g, requires_grad=True)
y = selective_scan_numba(u, dt, A, B, C, D, z, bias, True)
y.square().sum().backward()
h = hashlib.sha256()
for t in (y, u.grad, dt.grad, z.grad, A.grad, B.grad, C.grad, D.grad, bias.grad):
    h.update(t.detach().numpy().tobytes())
print(h.hexdigest())
"""


def test_first_run_after_install_gives_the_bytes_of_later_runs(tmp_path):
    """numba's freshly compiled fastmath kernels and its cached ones round differently (numba
    #10617); without the child-process compile, the first process with an empty cache printed
    another hash than the second (measured). Two processes on one empty cache must agree."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    env.pop("MAMBAVA_SCAN_WARMING", None)
    runs = [subprocess.run([sys.executable, "-c", _HASH_SCRIPT], env=env, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert any((tmp_path / "numba").rglob("*.nbi")), "nothing was cached"
    assert runs[0] == runs[1]
