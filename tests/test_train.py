"""The training loop: schedule, determinism, resume after an interruption or a kill.

A small causal convolutional stand-in with dropout replaces the temporal model here, so these
tests exercise the loop (data order, optimizer, scheduler and RNG state) quickly; the real
variants are trained by the pipeline and by the slow test at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mambava.config import EvaluateConfig, TrainConfig
from mambava.data.windows import Video, Windows
from mambava.runlog import live_dir, read_evals, read_steps, summary
from mambava.train import Interrupted, epoch_order, eval_points, fit

REPO = Path(__file__).resolve().parents[1]


class TinyCausal(nn.Module):
    """(batch, length, dim) -> (batch, length, 2); causal conv, dropout, linear head."""

    def __init__(self, dim: int, hidden: int = 8, k: int = 5, dropout: float = 0.3):
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(dim, hidden, k)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = nn.functional.pad(x.transpose(1, 2), (self.k - 1, 0))
        h = torch.relu(self.conv(h)).transpose(1, 2)
        return self.head(self.drop(h))


def make_videos(n_videos=6, dim=6, seed=0, lengths=(90, 140)):
    """Videos whose labels are a causal moving average of a projection of their features, some -5."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(dim, 2))
    out = []
    for i in range(n_videos):
        n = int(rng.integers(*lengths))
        f = rng.normal(size=(n, dim)).astype(np.float32)
        z = f @ proj
        z = np.stack([np.convolve(z[:, j], np.ones(4) / 2, "full")[:n] for j in range(2)], 1)  # causal
        y = np.tanh(0.5 * z).astype(np.float32)
        y[rng.random(n) < 0.05] = -5.0
        out.append(Video(f"v{i}", f.astype(np.float16), y))
    return out


def configs(**kw):
    base = dict(epochs=3, warmup_epochs=1, restart_epochs=2, lr=1e-2, batch_size=4, window=32,
                stride=24, evals_per_epoch=2, out="unused")
    base.update(kw)
    return TrainConfig(**base), EvaluateConfig(inference="whole", n_boot=0)


def train_once(out, interrupt_at=None, seed=0, **kw):
    tc, ec = configs(seed=seed, **kw)
    vids = make_videos()
    torch.manual_seed(seed)
    model = TinyCausal(6)
    ds = Windows(vids[:4], tc.window, tc.stride, "pad")
    return fit(model, ds, vids[4:], tc, ec, torch.device("cpu"), out, fingerprint="fp",
               extra_best={"variant": "tiny"}, progress=False, interrupt_at=interrupt_at)


def strip_time(summary):
    return {k: v for k, v in summary.items() if not k.startswith("second")}


def test_epoch_order_and_eval_points():
    a = epoch_order(42, 3, 50)
    assert sorted(a) == list(range(50))
    np.testing.assert_array_equal(a, epoch_order(42, 3, 50))
    assert not np.array_equal(a, epoch_order(42, 4, 50))
    assert eval_points(10, 4) == {2, 5, 8, 10}
    assert eval_points(3, 4) == {1, 2, 3}
    assert eval_points(7, 1) == {7}


# --------------------------------------------------------------------------- the loop
def test_fit_writes_logs_checkpoint_and_learns(tmp_path):
    s = train_once(tmp_path)
    assert not (tmp_path / "last.pt").exists()  # only kept while a run is unfinished
    ck = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ck["step"] == s["best_step"] and ck["variant"] == "tiny"
    evals = read_evals(tmp_path).to_numpy()  # DVCLive's files
    steps = read_steps(tmp_path).to_numpy()
    assert len(steps) == s["steps"] and len(evals) == 3 * 2
    np.testing.assert_array_equal(steps[:, 0], np.arange(1, s["steps"] + 1))
    best_row = evals[np.argmax(evals[:, 2] + evals[:, 3])]
    assert best_row[0] == s["best_step"]
    assert s["ccc_valence"] == pytest.approx(best_row[2]) and s["p_va"] == pytest.approx(best_row[4])
    assert s["p_va"] > 0.2  # it learns the synthetic relation
    # the loop's warm-up is visible in the logged lr
    assert steps[0, 2] < steps[s["steps_per_epoch"] - 1, 2]
    # DVCLive's summary: last values, the best checkpoint, no wall-clock value
    live = summary(tmp_path)
    assert live["step"] == s["steps"] and live["steps_per_epoch"] == s["steps_per_epoch"]
    assert live["best"] == {"step": s["best_step"], "ccc_valence": s["ccc_valence"],
                            "ccc_arousal": s["ccc_arousal"], "p_va": s["p_va"]}
    assert live["val"]["p_va"] == evals[-1, 4] and live["train"]["loss"] == s["final_loss"]
    files = sorted(p.relative_to(live_dir(tmp_path)).as_posix() for p in live_dir(tmp_path).rglob("*") if p.is_file())
    assert files == ["metrics.json", *[f"plots/metrics/train/{m}.tsv" for m in ("grad_norm", "loss", "lr")],
                     *[f"plots/metrics/val/{m}.tsv" for m in ("ccc_arousal", "ccc_valence", "p_va")]]
    assert (live_dir(tmp_path) / "plots/metrics/val/p_va.tsv").read_text().splitlines()[0] == "step\tp_va"


def test_logged_lr_is_the_schedule(tmp_path):
    """train/lr.tsv against the schedule written out here: linear warm-up to lr over
    warmup_epochs, then a cosine from lr to min_lr over restart_epochs, restarted."""
    train_once(tmp_path)
    tc, _ = configs(seed=0)
    spe = summary(tmp_path)["steps_per_epoch"]
    warm, period = tc.warmup_epochs * spe, tc.restart_epochs * spe
    steps = read_steps(tmp_path)

    def expected(i):  # the rate of the (i+1)-th optimizer step
        if i < warm:
            return tc.lr * (i + 1) / warm
        t = (i - warm) % period
        return tc.min_lr + (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * t / period)) / 2

    want = [expected(i) for i in range(len(steps))]
    np.testing.assert_allclose(steps["lr"].to_numpy(), want, rtol=1e-9, atol=1e-15)


def test_logged_validation_ccc_is_the_ccc_of_the_best_checkpoint(tmp_path):
    """val/*.tsv at the best step against audmetric's CCC of the best weights' predictions of
    the validation videos (each in one pass, clipped to [-1, 1], concatenated, frames labelled -5
    left out)."""
    import audmetric

    s = train_once(tmp_path)
    row = read_evals(tmp_path).set_index("step").loc[s["best_step"]]
    model = TinyCausal(6)
    model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model"])
    model.eval()
    vids = make_videos()[4:]
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(v.features.astype(np.float32))[None])[0].numpy() for v in vids])
    pred = np.clip(pred, -1.0, 1.0)  # the documented inference: whole video, clipped to the label range
    true = np.concatenate([v.labels for v in vids])
    ccc = []
    for j in range(2):
        keep = true[:, j] != -5.0
        ccc.append(audmetric.concordance_cc(true[keep, j].astype(np.float64), pred[keep, j].astype(np.float64)))
    assert row["ccc_valence"] == pytest.approx(ccc[0], abs=1e-5)
    assert row["ccc_arousal"] == pytest.approx(ccc[1], abs=1e-5)
    assert row["p_va"] == pytest.approx((ccc[0] + ccc[1]) / 2, abs=1e-5)


def test_rerun_writes_the_same_dvclive_bytes(tmp_path):
    train_once(tmp_path / "a")
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in live_dir(tmp_path / "a").rglob("*") if p.is_file()}
    train_once(tmp_path / "a")  # the same folder again: DVCLive starts afresh
    again = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in live_dir(tmp_path / "a").rglob("*") if p.is_file()}
    assert again == first and len(first) == 7


def test_same_seed_same_result(tmp_path):
    a = train_once(tmp_path / "a", seed=3)
    b = train_once(tmp_path / "b", seed=3)
    c = train_once(tmp_path / "c", seed=4)
    assert strip_time(a) == strip_time(b)
    wa = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert strip_time(a) != strip_time(c)


@pytest.mark.parametrize("interrupt_at", [1, 5, 9])  # before the first save, between saves, after one
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, interrupt_at):
    ref = train_once(tmp_path / "ref")
    with pytest.raises(Interrupted):
        train_once(tmp_path / "run", interrupt_at=interrupt_at)
    resumed = train_once(tmp_path / "run")
    assert strip_time(resumed) == strip_time(ref)
    wa = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _live_bytes(tmp_path / "run") == _live_bytes(tmp_path / "ref")


def _live_bytes(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in live_dir(run).rglob("*") if p.is_file()}


def test_checkpoint_from_other_settings_is_not_resumed(tmp_path):
    with pytest.raises(Interrupted):
        train_once(tmp_path, interrupt_at=8)
    assert (tmp_path / "last.pt").exists()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)  # plain tensors and containers
    assert 0 < ck["step"] < 8
    tc, ec = configs(seed=0)
    torch.manual_seed(0)
    vids = make_videos()
    fresh = fit(TinyCausal(6), Windows(vids[:4], 32, 24), vids[4:], tc, ec, torch.device("cpu"), tmp_path,
                fingerprint="other", progress=False)
    assert strip_time(fresh) == strip_time(train_once(tmp_path / "ref"))


KILL_SCRIPT = r"""
import sys, time, torch
sys.path.insert(0, {tests!r})
import test_train as t
import mambava.runlog as rl
torch.set_num_threads(1)  # the same thread count as the parent (reduction order = bits)
orig = rl.RunLog.log_validation
def slow_write(*a, **k):  # slow the loop down so the parent can kill it mid-run
    orig(*a, **k); time.sleep(0.3)
rl.RunLog.log_validation = slow_write
t.train_once({out!r})
"""


@pytest.fixture
def one_thread():
    """Pin torch to one thread: an earlier test may have changed the count in this process, and
    a different count changes the order of float reductions, so the bits of the result."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, one_thread):
    ref = train_once(tmp_path / "ref")
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), out=str(out))
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / "last.pt").exists()
    step_at_kill = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 0 < step_at_kill < ref["steps"]
    resumed = train_once(out)
    assert strip_time(resumed) == strip_time(ref)
    wa = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)["model"]
    wb = torch.load(out / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _live_bytes(out) == _live_bytes(tmp_path / "ref")  # rows appended after last.pt are gone


@pytest.mark.parametrize("variant", ["mamba_va", "transformer"])
def test_real_model_resume_is_bitwise(tmp_path, variant):
    """The same with the study's model (numba scan on CPU, attention dropout): bitwise equal."""
    from mambava.config import ModelConfig
    from mambava.models import build_model, variant_config

    mcfg = variant_config(
        ModelConfig(input_dim=6, tcn_channels=[8, 8], tcn_kernel=3, d_model=8, n_layers=1, n_heads=2,
                    head_hidden=8, scan_backend="numba"),
        variant,
    )
    tc, ec = configs(seed=1, epochs=2)
    vids = make_videos()

    def go(out, interrupt_at=None):
        torch.manual_seed(1)
        return fit(build_model(mcfg), Windows(vids[:4], 32, 24), vids[4:], tc, ec, torch.device("cpu"), out,
                   fingerprint="fp", progress=False, interrupt_at=interrupt_at)

    ref = go(tmp_path / "ref")
    with pytest.raises(Interrupted):
        go(tmp_path / "run", interrupt_at=5)
    resumed = go(tmp_path / "run")
    assert strip_time(resumed) == strip_time(ref)
    wa = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
