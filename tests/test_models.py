"""The temporal model: Mamba block, TCN, Transformer, MambaVA and its ablation variants."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambava.config import ModelConfig, load_config
from mambava.models import VARIANTS, build_model, variant_config
from mambava.models.mamba import Mamba
from mambava.models.mamba_va import FrameNorm, MambaVA
from mambava.models.summary import count_parameters, print_summary
from mambava.models import tcn as tcn_module
from mambava.models.tcn import TCN

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PAPER_PARAMETERS = 67_155_086  # the authors' model for 1024-d features

# A tiny configuration: fast, and every part present.
TINY = ModelConfig(
    input_dim=12, tcn_channels=[16, 8], tcn_kernel=3, d_model=8, n_layers=2, d_state=4,
    n_heads=2, head_hidden=8, dropout=0.0,
)


# --------------------------------------------------------------------------- Mamba block
def test_mamba_state_dict_matches_mamba_ssm_layout():
    """Keys and shapes of mamba_ssm.modules.mamba_simple.Mamba(d_model=256, d_state=8,
    d_conv=4, expand=1): d_inner 256, dt_rank ceil(256 / 16) = 16."""
    m = Mamba(256, d_state=8, d_conv=4, expand=1)
    expected = {
        "in_proj.weight": (512, 256),
        "conv1d.weight": (256, 1, 4),
        "conv1d.bias": (256,),
        "x_proj.weight": (16 + 2 * 8, 256),
        "dt_proj.weight": (256, 16),
        "dt_proj.bias": (256,),
        "A_log": (256, 8),
        "D": (256,),
        "out_proj.weight": (256, 256),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert count_parameters(m) == sum(math.prod(s) for s in expected.values())


def test_mamba_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64, d_state=8, d_conv=4, expand=2)
    assert torch.equal(m.A_log, torch.log(torch.arange(1.0, 9.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6 and dt.min() < 0.01 < dt.max()
    assert m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_step_equals_parallel_forward(backend):
    """Frame-by-frame recurrence (plain PyTorch, its own code path) == the parallel scan."""
    torch.manual_seed(1)
    m = Mamba(16, d_state=4, d_conv=4, expand=2, scan_backend=backend)
    x = torch.randn(3, 29, 16)
    with torch.no_grad():
        full = m(x)
        state = m.allocate_state(3)
        steps = []
        for t in range(x.shape[1]):
            y, state = m.step(x[:, t], state)
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_step_continues_a_parallel_prefix():
    torch.manual_seed(2)
    m = Mamba(16, d_state=4, d_conv=3, expand=1)
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        full = m(x)
        for split in (2, 25):  # a prefix shorter than d_conv pads the conv state with zeros
            prefix, state = m(x[:, :split], return_state=True)
            torch.testing.assert_close(prefix, full[:, :split], rtol=1e-5, atol=1e-5)
            rest = []
            for t in range(split, x.shape[1]):
                y, state = m.step(x[:, t], state)
                rest.append(y)
            torch.testing.assert_close(torch.stack(rest, 1), full[:, split:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_long_inference_in_chunks_equals_one_pass(backend):
    """Without autograd, a sequence longer than ``chunk_frames`` runs in pieces carrying the
    conv and scan state: the output and the final state are those of one pass."""
    torch.manual_seed(4)
    m = Mamba(16, d_state=4, d_conv=4, expand=2, scan_backend=backend)
    x = torch.randn(2, 50, 16)
    with torch.no_grad():
        m.chunk_frames = 1000
        full, (conv_full, ssm_full) = m(x, return_state=True)
        for chunk in (7, 2, 1):  # pieces shorter than d_conv too
            m.chunk_frames = chunk
            out, (conv, ssm) = m(x, return_state=True)
            torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(conv, conv_full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ssm, ssm_full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m(x), full, rtol=1e-5, atol=1e-6)
    # With autograd the pass is whole (the pieces are for inference only) and still the same.
    out = m(x)
    assert out.grad_fn is not None
    torch.testing.assert_close(out.detach(), full, rtol=1e-5, atol=1e-6)


def test_whole_model_long_inference_in_pieces_equals_one_pass():
    """The Mamba stack runs a long video piece by piece, every layer carrying its state; the
    predictions must be those of one pass with autograd on (which never runs in pieces)."""
    from mambava.config import ModelConfig
    from mambava.models.mamba_va import MambaVA

    torch.manual_seed(5)
    cfg = ModelConfig(input_dim=12, tcn_channels=[8, 8], tcn_kernel=3, d_model=8, n_layers=3, head_hidden=8,
                      dropout=0.0)
    model = MambaVA(cfg).eval()
    for layer in model.temporal.layers:
        layer.mixer.chunk_frames = 16
    x = torch.randn(2, 101, 12)
    with torch.enable_grad():
        whole = model(x).detach()
    calls = []
    hook = model.temporal.layers[1].mixer.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        pieces = model(x)
    hook.remove()
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    assert not calls  # the stack called forward_from per piece, not the block's forward


def test_mamba_gradients_agree_between_backends():
    torch.manual_seed(3)
    m = Mamba(16, d_state=4, d_conv=4, expand=2)
    x = torch.randn(2, 33, 16)
    grads = {}
    for backend in ("numba", "reference"):
        m.scan_backend = backend
        m.zero_grad()
        m(x).pow(2).sum().backward()
        grads[backend] = {k: p.grad.clone() for k, p in m.named_parameters()}
    for k in grads["numba"]:
        torch.testing.assert_close(grads["numba"][k], grads["reference"][k], rtol=1e-4, atol=1e-4, msg=k)


def _mamba_grads(m, x, g, one_pass, monkeypatch):
    """The block's output and the gradients of x and every parameter for output gradient g."""
    with monkeypatch.context() as mp:
        if not one_pass:
            mp.setattr(Mamba, "_one_pass", lambda *a: False)
        x = x.clone().requires_grad_()
        m.zero_grad()
        out = m(x)
        out.backward(g)
    return out.detach(), {"input": x.grad, **{k: p.grad.clone() for k, p in m.named_parameters()}}


@pytest.mark.parametrize("length", [1, 3, 50, 700])  # shorter than the conv's 4 taps too
def test_mamba_conv_one_pass_is_oneDNNs_conv(length):
    """The one pass's conv is the depthwise F.conv1d bit for bit (oneDNN's order: bias, then the
    taps oldest first as fused multiply-adds); its SiLU is F.silu's to a float32 rounding; z is
    the gate half, copied."""
    from mambava.models.mamba import _conv_silu_fwd

    torch.manual_seed(length)
    d, k, b = 24, 4, 3
    conv = nn.Conv1d(d, d, k, groups=d, padding=k - 1)
    xz = torch.randn(b, length, 2 * d)
    with torch.no_grad():
        ref = conv(xz[..., :d].transpose(1, 2))[..., :length].transpose(1, 2)
    xs, z, pre = (torch.empty(b, length, d) for _ in range(3))
    w = conv.weight.detach()[:, 0].t().contiguous()
    _conv_silu_fwd(xz.numpy(), torch.zeros(b, k - 1, d).numpy(), w.numpy(), conv.bias.detach().numpy(),
                   xs.numpy(), z.numpy(), pre.numpy())
    assert torch.equal(pre, ref)
    torch.testing.assert_close(xs, F.silu(ref), rtol=2.5e-7, atol=1e-7)
    assert torch.equal(z, xz[..., d:])


def test_mamba_conv_one_pass_gradcheck():
    from mambava.models.mamba import _ConvSilu

    torch.manual_seed(2)
    d, k = 5, 4
    xz = torch.randn(2, 9, 2 * d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, 1, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d, dtype=torch.float64, requires_grad=True)
    hist = torch.randn(2, k - 1, d, dtype=torch.float64)  # a state's inputs in front: constants
    for h in (None, hist):
        assert torch.autograd.gradcheck(lambda a, w, bb: _ConvSilu.apply(a, w, bb, h), (xz, w, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mamba_one_pass_is_the_pytorch_form(dtype, monkeypatch):
    """The whole block, outputs and every gradient, with the conv's one pass and without it (the
    two differ only in SiLU's last bits and in how the weight and bias gradients are summed)."""
    torch.manual_seed(11)
    m = Mamba(16, d_state=4, d_conv=4, expand=2).to(dtype)
    x = torch.randn(3, 80, 16, dtype=dtype)
    g = torch.randn(3, 80, 16, dtype=dtype)
    out, grads = _mamba_grads(m, x, g, True, monkeypatch)
    ref, grads_ref = _mamba_grads(m, x, g, False, monkeypatch)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out, ref, **tol)
    for k in grads_ref:
        torch.testing.assert_close(grads[k], grads_ref[k], **tol, msg=k)


def test_mamba_one_pass_stands_aside(monkeypatch):
    """CPU autocast (bfloat16), and a state that wants its gradient, take the PyTorch form: the
    conv pass would neither take bfloat16 nor pass a gradient to the state's inputs."""
    from mambava.models import mamba as mamba_module

    calls = []
    real = mamba_module._ConvSilu.apply
    monkeypatch.setattr(mamba_module._ConvSilu, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(12)
    m = Mamba(8, d_state=4, d_conv=4, expand=1)
    x = torch.randn(2, 20, 8)
    m(x).sum().backward()
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x).float().sum().backward()
    assert calls == [1]
    state = tuple(t.requires_grad_() for t in m.allocate_state(2))
    with torch.no_grad():
        state[0].normal_()
    out, _ = m.forward_from(x, state)
    out.sum().backward()
    assert calls == [1] and state[0].grad is not None and state[0].grad.abs().sum() > 0
    with torch.no_grad():  # inference in pieces: the pass, from the state's inputs
        out2, _ = m.forward_from(x, tuple(t.detach() for t in state))
    assert calls == [1, 1]
    torch.testing.assert_close(out2, out.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_state_dict_loads_from_mamba_ssm_and_outputs_agree():
    pytest.importorskip("mamba_ssm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from mambava.models.mamba_va import MambaVA  # noqa: F401  (imports the package on GPU too)
    from mamba_ssm.modules.mamba_simple import Mamba as RefMamba

    torch.manual_seed(0)
    ref = RefMamba(d_model=256, d_state=8, d_conv=4, expand=1).cuda()
    ours = Mamba(256, d_state=8, d_conv=4, expand=1, scan_backend="cuda").cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-3, atol=1e-3)
        ours_cpu = Mamba(256, d_state=8, d_conv=4, expand=1, scan_backend="numba")
        ours_cpu.load_state_dict(ref.state_dict())
        torch.testing.assert_close(ours_cpu(x.cpu()), ref(x).cpu(), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- TCN
def test_tcn_is_causal_with_the_stated_receptive_field():
    torch.manual_seed(4)
    tcn = TCN(6, [8, 8, 4], kernel=3, dropout=0.0).eval()
    assert tcn.receptive_field == 1 + 2 * 2 * (2**3 - 1)  # 29
    x = torch.randn(1, 80, 6)
    t = 60
    with torch.no_grad():
        base = tcn(x)
        x_future = x.clone()
        x_future[:, t + 1 :] += 5.0
        torch.testing.assert_close(tcn(x_future)[:, : t + 1], base[:, : t + 1])
        rf = tcn.receptive_field
        x_edge = x.clone()
        x_edge[:, t - rf + 1] += 5.0  # just inside the receptive field of frame t
        assert not torch.allclose(tcn(x_edge)[:, t], base[:, t])
        x_out = x.clone()
        x_out[:, : t - rf + 1] += 5.0  # everything before it: no effect on frame t
        torch.testing.assert_close(tcn(x_out)[:, t], base[:, t])


def _tcn_by_conv1d(tcn: TCN, x: torch.Tensor) -> torch.Tensor:
    """The TCN written the textbook way (Bai et al.): channels first, left padding, F.conv1d,
    F.prelu; an independent reference for the model's channels-last matrix-product form."""
    h = x.transpose(1, 2)
    for lvl in tcn.levels:
        def conv(inp, c):
            return F.conv1d(F.pad(inp, (lvl.pad, 0)), c.weight, c.bias, dilation=c.dilation)
        out = F.prelu(conv(h, lvl.conv1), lvl.act1.weight)
        out = F.prelu(conv(out, lvl.conv2), lvl.act2.weight)
        res = h if lvl.downsample is None else F.conv1d(h, lvl.downsample.weight, lvl.downsample.bias)
        h = F.prelu(out + res, lvl.act.weight)
    return h.transpose(1, 2)


@pytest.mark.parametrize("kernel,channels", [(3, [8, 8, 4]), (5, [6, 6]), (15, [12, 10, 8, 6])])
def test_tcn_matches_conv1d_values_and_gradients(kernel, channels):
    torch.manual_seed(kernel)
    tcn = TCN(7, channels, kernel=kernel, dropout=0.0)
    with torch.no_grad():  # slopes away from the 0.25 default, some negative inputs of each sign
        for lvl in tcn.levels:
            for act in (lvl.act1, lvl.act2, lvl.act):
                act.weight.uniform_(-0.5, 0.8)
    x = torch.randn(3, 150, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = tcn(x), _tcn_by_conv1d(tcn, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *tcn.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x_ref, *tcn.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _tcn_grads(tcn: TCN, x: torch.Tensor, g: torch.Tensor, fused: bool, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        if not fused:  # the PyTorch form of the same model (_ShiftSum, PReLU as relu(x) - a relu(-x))
            m.setattr(tcn_module, "_fusable", lambda *a: False)
        x = x.detach().clone().requires_grad_(True)
        out = tcn(x)
        return out, torch.autograd.grad(out, [x, *tcn.parameters()], g)


@pytest.mark.parametrize("kernel,channels,length", [(3, [32, 32, 32, 32], 512), (5, [6, 6], 40),
                                                    (3, [8, 8, 8, 8], 5)])  # 5 frames: shorter than dilation 8's taps
def test_tcn_one_pass_on_cpu_is_the_pytorch_form(kernel, channels, length, monkeypatch):
    """The numba pass (shifted sum, bias, PReLU, residual, PReLU) computes the PyTorch form's float
    operations in its order: outputs and the gradients of the input and the convolutions' weights
    bit for bit; the biases' and slopes' gradients are sums accumulated differently (float64)."""
    torch.manual_seed(kernel + length)
    tcn = TCN(19, channels, kernel=kernel, dropout=0.0)
    with torch.no_grad():
        for lvl in tcn.levels:
            for act in (lvl.act1, lvl.act2, lvl.act):
                act.weight.uniform_(-0.5, 0.8)
    x = torch.randn(3, length, 19)
    g = torch.randn(3, length, channels[-1])
    out, grads = _tcn_grads(tcn, x, g, True, monkeypatch)
    ref, grads_ref = _tcn_grads(tcn, x, g, False, monkeypatch)
    assert torch.equal(out, ref)
    names = ["input", *(n for n, _ in tcn.named_parameters())]
    for name, a, b in zip(names, grads, grads_ref):
        if name.endswith("bias") or ".act" in name:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("residual", [False, True])
def test_tcn_one_pass_gradcheck(residual):
    torch.manual_seed(3)
    b, length, k, c = 2, 11, 3, 4
    taps = torch.randn(b, length, k, c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    a1 = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    a2 = torch.tensor([-0.2], dtype=torch.float64, requires_grad=True)
    res = torch.randn(b, length, c, dtype=torch.float64, requires_grad=True)
    shifts = (8, 4, 0)  # dilation 4: a tap reaching before the start, one reaching past 11 frames' half

    def f(taps, bias, a1, res, a2):
        return tcn_module._ConvAct.apply(taps, shifts, bias, a1, res if residual else None, a2 if residual else None)

    assert torch.autograd.gradcheck(f, (taps, bias, a1, res, a2))


def test_tcn_one_pass_zero_input_passes_no_gradient():
    """A PReLU input of exactly 0 (here: zero taps, zero bias): relu(x) - a relu(-x) under autograd
    gives it no gradient, and neither does the numba pass."""
    taps = torch.zeros(1, 6, 3, 2, requires_grad=True)
    a = torch.tensor([0.25], requires_grad=True)
    out = tcn_module._ConvAct.apply(taps, (2, 1, 0), torch.zeros(2), a, None, None)
    (g_taps,) = torch.autograd.grad(out.sum(), [taps])
    z = tcn_module._ShiftSum.apply(taps, (2, 1, 0))
    (g_ref,) = torch.autograd.grad((F.relu(z) - a * F.relu(-z)).sum(), [taps])
    assert torch.equal(out, torch.zeros(1, 6, 2)) and torch.equal(g_taps, g_ref) and not g_taps.any()


def test_tcn_under_cpu_autocast_takes_the_pytorch_form(monkeypatch):
    """bfloat16 autocast on a CPU (bench_temporal.py --cheaper): the taps are bfloat16, which the
    numba pass does not take; the block falls back to the PyTorch form and trains."""
    torch.manual_seed(6)
    tcn = TCN(7, [6, 6], kernel=3, dropout=0.0)
    x = torch.randn(2, 30, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tcn(x)
        with monkeypatch.context() as m:
            m.setattr(tcn_module, "_fusable", lambda *a: False)
            ref = tcn(x)
    assert torch.equal(out, ref)  # (the fused path would have failed on the bfloat16 taps)
    out.float().sum().backward()
    assert all(p.grad is not None for p in tcn.parameters())


def test_tcn_with_dropout_keeps_the_textbook_values_in_eval():
    """Dropout between the second PReLU and the residual sum: training takes the unfused residual
    path; in eval (dropout the identity) the one pass gives the F.conv1d reference's values."""
    torch.manual_seed(5)
    tcn = TCN(7, [6, 6], kernel=3, dropout=0.3)
    x = torch.randn(2, 50, 7)
    torch.testing.assert_close(tcn.eval()(x), _tcn_by_conv1d(tcn, x), rtol=1e-5, atol=1e-5)
    tcn.train()
    a, b = tcn(x), tcn(x)
    assert a.shape == (2, 50, 6) and not torch.equal(a, b)


def test_tcn_weight_norm_and_old_style_keys():
    tcn = TCN(4, [6, 6], kernel=5)
    block = tcn.levels[0]
    g = block.conv1.parametrizations.weight.original0
    v = block.conv1.parametrizations.weight.original1
    assert g.shape == (6, 1, 1) and v.shape == (6, 4, 5)
    assert block.downsample is not None and tcn.levels[1].downsample is None
    # Checkpoints of the older torch.nn.utils.weight_norm (weight_g, weight_v) load too.
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"): v for k, v in tcn.state_dict().items()}
    other = TCN(4, [6, 6], kernel=5)
    other.load_state_dict(old)
    x = torch.randn(2, 20, 4)
    torch.testing.assert_close(other.eval()(x), tcn.eval()(x))


# --------------------------------------------------------------------------- MambaVA
def test_paper_profile_has_the_authors_parameter_count():
    cfg = load_config(PARAMS, profile="paper").model
    assert (cfg.input_dim, list(cfg.tcn_channels), cfg.d_model, cfg.n_layers) == (1024, [1024, 768, 512, 256], 256, 4)
    model = MambaVA(cfg)
    assert count_parameters(model) == PAPER_PARAMETERS
    # and it is built the way the paper describes: no projection between TCN and Mamba
    assert isinstance(model.proj_in, nn.Identity)
    assert len(model.temporal.layers) == 4 and model.temporal.layers[0].mixer.dt_rank == 16


def test_frame_norm_is_what_the_authors_instance_norm_computes():
    """nn.InstanceNorm1d(256) applied to (B, L, 256) normalises every frame over its features."""
    x = torch.randn(2, 30, 256) * 3 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns that L != num_features; that is the point
        theirs = nn.InstanceNorm1d(256)(x)
    torch.testing.assert_close(FrameNorm()(x), theirs, rtol=1e-5, atol=1e-5)


def test_variants_are_configurations_of_one_model():
    assert list(VARIANTS) == ["mamba_va", "no_tcn", "no_mamba", "transformer", "frame"]
    base = load_config(PARAMS).model
    cfgs = {v: variant_config(base, v) for v in list(VARIANTS)}
    assert cfgs["mamba_va"] == base
    assert cfgs["no_tcn"].tcn is False and cfgs["no_tcn"].temporal == "mamba"
    assert cfgs["no_mamba"].temporal == "none" and cfgs["no_mamba"].tcn
    assert cfgs["transformer"].temporal == "transformer"
    assert cfgs["frame"].tcn is False and cfgs["frame"].temporal == "none"
    assert all(isinstance(c, ModelConfig) for c in cfgs.values())
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "no_head")


def test_no_tcn_projects_input_to_d_model():
    model = build_model(TINY, "no_tcn")
    assert model.tcn is None
    assert isinstance(model.proj_in, nn.Linear)
    assert (model.proj_in.in_features, model.proj_in.out_features) == (TINY.input_dim, TINY.d_model)


@pytest.mark.parametrize("variant", ["mamba_va", "no_tcn", "no_mamba", "transformer", "frame"])
def test_every_variant_builds_and_trains(variant):
    torch.manual_seed(5)
    model = build_model(TINY, variant)
    x = torch.randn(4, 24, TINY.input_dim)
    y = torch.tanh(x[..., :2].cumsum(1) / 5)  # something learnable
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        pred = model(x)
        assert pred.shape == (4, 24, 2)
        loss = F.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("variant", ["mamba_va", "transformer"])
def test_model_is_causal_and_runs_any_length(variant):
    """Whole-video inference: one pass over any length; frame t never sees frames after t."""
    torch.manual_seed(6)
    model = build_model(TINY, variant).eval()
    x = torch.randn(1, 1001, TINY.input_dim)
    with torch.no_grad():
        full = model(x)
        head = model(x[:, :377])
    assert full.shape == (1, 1001, 2)
    torch.testing.assert_close(head, full[:, :377], rtol=1e-4, atol=1e-5)


def test_frame_variant_has_no_temporal_mixing():
    """`frame`: the output for a frame depends on that frame alone, whatever the other frames are."""
    torch.manual_seed(8)
    model = build_model(TINY, "frame").eval()
    x = torch.randn(2, 60, TINY.input_dim)
    y = x.clone()
    y[:, :30] = torch.randn(2, 30, TINY.input_dim) * 5  # change every other frame (past and future)
    y[:, 31:] = torch.randn(2, 29, TINY.input_dim) * 5
    with torch.no_grad():
        a, b = model(x), model(y)
        alone = model(x[:, 30:31])
    torch.testing.assert_close(a[:, 30], b[:, 30], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[:, 30:31], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 29], b[:, 29])  # the changed frames did change their own outputs
    # the same probe detects mixing in a temporal variant
    temporal = build_model(TINY, "no_mamba").eval()
    with torch.no_grad():
        assert not torch.allclose(temporal(x)[:, 30], temporal(y)[:, 30])


def test_local_attention_sees_exactly_its_window():
    """Transformer with attention_window w: frame t depends on frames t-w+1..t and on no other,
    at any length (no position codes), and equals full attention on the last w frames."""
    torch.manual_seed(9)
    w = 16
    cfg = variant_config(TINY.model_copy(update={"attention_window": w, "n_layers": 1}), "transformer")
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.temporal.layers[0].qkv.weight, std=0.5)  # sharp attention
    x = torch.randn(1, 100, TINY.input_dim)
    with torch.no_grad():
        enc = model.tcn(x)  # the stack's input: attention acts after the TCN
        h = model.norm_in(model.proj_in(enc))
        full = model.temporal(h)
        t = 70
        # the same frame computed from exactly its window, as one short sequence (no mask needed)
        alone = model.temporal(h[:, t - w + 1:t + 1])[:, -1]
        torch.testing.assert_close(full[:, t], alone, rtol=1e-4, atol=1e-5)
        h2 = h.clone()
        h2[:, : t - w + 1] = torch.randn_like(h2[:, : t - w + 1])  # frames just outside the window
        torch.testing.assert_close(model.temporal(h2)[:, t], full[:, t], rtol=1e-4, atol=1e-5)
        h3 = h.clone()
        h3[:, t - w + 1] += 1.0  # the oldest frame inside the window
        assert not torch.allclose(model.temporal(h3)[:, t], full[:, t])


@pytest.mark.parametrize("w,block,length,heads", [(16, 128, 100, 2), (16, 5, 100, 2), (32, 7, 33, 1), (8, 8, 64, 4)])
def test_banded_attention_equals_one_dense_band_mask(w, block, length, heads):
    """The blocked band (any block size, any length, from the qkv projection's output) against one
    SDPA call over the whole sequence under a dense band mask (i - w < j <= i): values and
    gradients. The training path (the flash kernel reading qkv in place) and the inference path
    (SDPA on contiguous blocks) give the same bytes."""
    from mambava.models.transformer import TransformerLayer

    torch.manual_seed(w + block)
    d = 8 * heads
    layer = TransformerLayer(d, heads, 0.0, causal=True, window=w)
    layer.query_block = block
    qkv = torch.randn(3, length, 3 * d, requires_grad=True)
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(3, length, heads, 8).transpose(1, 2) for i in range(3))
    i = torch.arange(length)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band).transpose(1, 2).reshape(3, length, d)
    out = layer._attend(qkv, 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(layer._attend(qkv, 0.0), out)
    g = torch.randn_like(out)
    (a,), (b,) = torch.autograd.grad(out, (qkv,), g), torch.autograd.grad(ref, (qkv,), g)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_banded_attention_gradcheck():
    """The training path's backward (each block's gradients added into one qkv buffer) in float64."""
    from mambava.models.transformer import TransformerLayer

    torch.manual_seed(5)
    layer = TransformerLayer(8, 2, 0.0, causal=True, window=6)
    layer.query_block = 4
    qkv = torch.randn(2, 15, 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer._attend(t, 0.0), (qkv,))


def test_a_log_and_d_get_no_weight_decay():
    """mamba-ssm's rule: A_log and D are exempt from AdamW's decay; every other tensor decays."""
    from mambava.train import optimizer_groups

    torch.manual_seed(10)
    model = build_model(TINY, "mamba_va")
    groups = optimizer_groups(model, 0.5)
    exempt = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in exempt}
    assert names == {n for n, _ in model.named_parameters() if n.endswith((".A_log", ".D"))}
    assert names  # the model has Mamba layers
    # behaviour: with zero gradients, one AdamW step shrinks decayed tensors and leaves A_log, D alone
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n in names:
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
        elif before[n].abs().sum() > 0:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5), rtol=1e-6, atol=1e-7)


def test_non_causal_transformer_sees_the_future():
    cfg = variant_config(TINY.model_copy(update={"causal": False}), "transformer")
    model = build_model(cfg).eval()
    x = torch.randn(1, 40, TINY.input_dim)
    with torch.no_grad():
        assert not torch.allclose(model(x[:, :20]), model(x)[:, :20])


def test_reference_backend_gives_the_same_model_output():
    torch.manual_seed(7)
    a = build_model(TINY).eval()
    b = build_model(TINY.model_copy(update={"scan_backend": "reference"})).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 50, TINY.input_dim)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_summary_prints_table_and_total(capsys):
    print_summary(TINY)
    out = capsys.readouterr().out
    assert "temporal" in out and "Mamba" in out
    assert f"total parameters: {count_parameters(MambaVA(TINY)):,}" in out


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_code_read_lists_every_model_file_a_variant_runs(variant, backend):
    """A run's fingerprint holds the content of the model files ``code_read`` names and no other
    (``train_runs.code_digest``). Traced here: every Python function called while the variant is
    built, trained (forward, backward, in training mode), and run on a whole video and on windows
    (the inference paths, evaluation mode) comes from a file of ``mambava/models`` that it lists."""
    import sys
    import threading

    import numpy as np

    from mambava.inference import predict_video
    from mambava.models import code_read

    models_dir = Path(build_model.__code__.co_filename).parent
    cfg = variant_config(TINY.model_copy(update={"attention_window": 16, "scan_backend": backend,
                                                 "dropout": 0.1}), variant)
    seen: set[str] = set()

    def prof(frame, event, arg):
        if event == "call":
            f = Path(frame.f_code.co_filename)
            if f.parent == models_dir:
                seen.add(f.stem)

    feats = np.random.default_rng(0).standard_normal((70, cfg.input_dim)).astype(np.float32)
    threading.setprofile(prof)
    sys.setprofile(prof)
    try:
        torch.manual_seed(0)
        model = build_model(cfg).train()
        model(torch.randn(2, 40, cfg.input_dim)).square().mean().backward()
        model.eval()
        predict_video(model, feats, torch.device("cpu"), "whole")
        predict_video(model, feats, torch.device("cpu"), "windows", 32, 16)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    listed = set(code_read(cfg))
    assert seen - {"__init__"} <= listed, f"{variant} runs code in {sorted(seen - listed)} that code_read leaves out"
    # and the list is the variant's own: each file it names beyond the package's two is run
    assert listed - {"__init__", "mamba_va"} <= seen, sorted(listed - seen)
    assert ("transformer" in listed) == (cfg.temporal == "transformer")
    assert ("mamba" in listed) == (cfg.temporal == "mamba") and ("tcn" in listed) == cfg.tcn


@pytest.mark.parametrize("variant", VARIANTS)
def test_settings_a_variant_does_not_read_change_nothing(variant):
    """Each setting that ``settings_read`` leaves out of a variant's fingerprint, changed: the same
    parameters and the same outputs (training mode, so dropout counts), from the same seed. A
    constructor that starts reading a new setting without the list fails here."""
    from mambava.models import settings_read

    base = variant_config(ModelConfig(input_dim=12, tcn_channels=[8, 8], tcn_kernel=3, d_model=8, n_layers=1,
                                      d_state=4, n_heads=2, head_hidden=6, dropout=0.2), variant)
    other = {"input_dim": 10, "tcn": not base.tcn, "tcn_channels": [6, 8], "tcn_kernel": 5, "d_model": 12,
             "n_layers": 2, "d_state": 3, "d_conv": 3, "expand": 2, "n_heads": 4, "causal": not base.causal,
             "attention_window": 7, "head_hidden": 5, "dropout": 0.5, "scan_backend": "reference",
             "temporal": "none" if base.temporal != "none" else "mamba"}
    assert set(other) == set(ModelConfig.model_fields)  # every setting is tried
    x = torch.randn(2, 40, base.input_dim)

    def out(cfg):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        torch.manual_seed(1)
        return model.state_dict(), model(x)

    ref_sd, ref_y = out(base)
    read = settings_read(base)
    for key, value in other.items():
        if key in read:
            continue
        sd, y = out(base.model_copy(update={key: value}))
        assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd), key
        assert torch.equal(y, ref_y), key
    # and the ones it reads do change something (but the scan's backend, which changes no number here)
    for key in set(read) - {"scan_backend", "temporal", "tcn", "input_dim"}:
        sd, y = out(base.model_copy(update={key: other[key]}))
        same = sd.keys() == ref_sd.keys() and all(sd[k].shape == ref_sd[k].shape and torch.equal(sd[k], ref_sd[k])
                                                  for k in sd)
        assert not (same and y.shape == ref_y.shape and torch.equal(y, ref_y)), key
