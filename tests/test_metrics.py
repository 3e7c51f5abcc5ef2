"""CCC against independent computations: the definition with plain sums, and audmetric."""

import math

import audmetric
import numpy as np
import pytest
import torch

from mambava.metrics import bootstrap_ccc, ccc, ccc_loss, ccc_torch, ccc_va, p_va


def ccc_by_sums(x, y):
    n = len(x)
    mx = sum(x) / n
    my = sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccc_matches_plain_sums_and_audmetric(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, 500)
    x = 0.6 * y + rng.normal(0.1, 0.3, 500)
    expected = ccc_by_sums(list(x), list(y))
    assert ccc(x, y) == pytest.approx(expected, rel=1e-12)
    assert ccc(x, y) == pytest.approx(audmetric.concordance_cc(y, x), rel=1e-9)


def test_minus_five_frames_are_excluded():
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, 300)
    x = y + rng.normal(0, 0.2, 300)
    y_masked = y.copy()
    y_masked[50:120] = -5
    x_garbage = x.copy()
    x_garbage[50:120] = 100.0  # predictions on unlabelled frames must not matter
    keep = np.r_[0:50, 120:300]
    assert ccc(x_garbage, y_masked) == pytest.approx(ccc_by_sums(list(x[keep]), list(y[keep])), rel=1e-12)


def test_constant_inputs():
    y = np.linspace(-1, 1, 100)
    assert ccc(np.full(100, 0.3), y) == 0.0  # constant prediction: covariance is 0
    assert ccc(np.full(100, 0.3), np.full(100, 0.3)) == 0.0  # undefined: defined as 0, not NaN
    assert ccc(y, y) == pytest.approx(1.0)
    assert ccc(-y, y) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no annotated frames"):
        ccc(y, np.full(100, -5.0))


def test_p_va_and_ccc_va():
    rng = np.random.default_rng(4)
    t = rng.uniform(-1, 1, (200, 2))
    p = t + rng.normal(0, [0.2, 0.5], (200, 2))
    r = ccc_va(p, t)
    assert r["p_va"] == pytest.approx((ccc_by_sums(list(p[:, 0]), list(t[:, 0])) + ccc_by_sums(list(p[:, 1]), list(t[:, 1]))) / 2)
    assert p_va(0.5454, 0.3848) == pytest.approx(0.4651)  # the paper's fold 0 row


def test_torch_ccc_agrees_and_has_gradients():
    rng = np.random.default_rng(5)
    t = rng.uniform(-1, 1, (4, 50, 2)).astype(np.float32)
    t[0, :10] = -5
    p = torch.tensor(t + rng.normal(0, 0.3, t.shape).astype(np.float32), requires_grad=True)
    tt = torch.tensor(t)
    for c in range(2):
        assert float(ccc_torch(p[..., c].detach(), tt[..., c])) == pytest.approx(ccc(p[..., c].detach().numpy(), t[..., c]), abs=1e-5)
    loss = ccc_loss(p, tt)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert float(p.grad[0, :10].abs().sum()) == 0.0  # unlabelled frames get no gradient
    expected = 2 - ccc(p[..., 0].detach().numpy(), t[..., 0]) - ccc(p[..., 1].detach().numpy(), t[..., 1])
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(20), 50)
    t = rng.uniform(-1, 1, (1000, 2))
    p = t + rng.normal(0, 0.4, (1000, 2))
    ci = bootstrap_ccc(p, t, groups, n_boot=200, seed=0)
    point = ccc_va(p, t)
    for k in ("ccc_valence", "ccc_arousal", "p_va"):
        lo, hi = ci[k]
        assert lo < point[k] < hi
        assert hi - lo < 0.3 and not math.isnan(lo)


def _ref_ccc(x, y):
    """The CCC formula with population moments, written out (independent of mambava.metrics)."""
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (((x - mx) ** 2).mean() + ((y - my) ** 2).mean() + (mx - my) ** 2)


def test_bootstrap_ccc_is_the_video_bootstrap_percentile_interval():
    """Against a slow reference: draw videos with replacement (numpy's default_rng(seed), one draw
    of n_videos indices per resample, videos in sorted order), pool their frames, CCC per column
    over the labelled frames, 2.5% and 97.5% linear quantiles."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(20, 120, 9)
    groups = np.repeat([f"v{i}" for i in range(9)], lengths)
    t = rng.uniform(-1, 1, (len(groups), 2))
    p = 0.6 * t + rng.normal(0, 0.4, t.shape) + np.repeat(rng.normal(0, 0.3, (9, 2)), lengths, axis=0)
    t[rng.random(len(t)) < 0.1, 1] = -5  # unannotated arousal frames
    got = bootstrap_ccc(p, t, groups, n_boot=300, seed=4, level=0.9)
    videos = sorted(set(groups))
    frames = {v: np.flatnonzero(groups == v) for v in videos}
    draw = np.random.default_rng(4)
    reps = []
    for _ in range(300):
        idx = np.concatenate([frames[videos[i]] for i in draw.integers(0, len(videos), size=len(videos))])
        c = [_ref_ccc(p[idx, j][t[idx, j] != -5], t[idx, j][t[idx, j] != -5]) for j in (0, 1)]
        reps.append([c[0], c[1], (c[0] + c[1]) / 2])
    lo, hi = np.quantile(np.array(reps), [0.05, 0.95], axis=0)
    for i, k in enumerate(("ccc_valence", "ccc_arousal", "p_va")):
        assert got[k] == pytest.approx((lo[i], hi[i]), abs=1e-10)


def test_bootstrap_of_a_single_video_is_the_estimate():
    rng = np.random.default_rng(2)
    t = rng.uniform(-1, 1, (50, 2))
    p = t + rng.normal(0, 0.3, t.shape)
    got = bootstrap_ccc(p, t, np.zeros(50), n_boot=20)
    assert got["ccc_valence"] == pytest.approx((_ref_ccc(p[:, 0], t[:, 0]),) * 2)
