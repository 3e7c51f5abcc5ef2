"""Several processes (torch.distributed, gloo, 2 CPU processes started from the test).

Training: DDP on 2 processes with the same global batch must give the one-process run: the same
loss at every step, the same validation CCCs and the same weights, within float tolerance
(see ``test_ddp_training_equals_one_process``). Sharding: disjoint, complete, balanced.
Feature extraction under torchrun is tested in test_features_distributed.py.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_train import TinyCausal, configs, make_videos

from mambava import distributed
from mambava.data.sharding import shard_by_size, share_sizes, window_share
from mambava.data.windows import Windows
from mambava.runlog import read_evals, read_steps
from mambava.train import Interrupted, fit

WORLD = 2


# --------------------------------------------------------------------------- sharding (pure)
def test_window_shares_are_disjoint_contiguous_and_make_the_batch():
    batch = np.array([7, 3, 9, 1, 4])
    got = [window_share(batch, r, 2) for r in range(2)]
    assert [g[0].tolist() for g in got] == [[7, 3, 9], [1, 4]]
    assert all(g[1] == 3 and g[2] == [3, 2] for g in got)
    # a last batch smaller than the world: some ranks get nothing, every rank runs one padded window
    got = [window_share(np.array([5]), r, 3) for r in range(3)]
    assert [g[0].tolist() for g in got] == [[5], [], []] and all(g[1] == 1 for g in got)
    for n in range(0, 40):
        for world in (1, 2, 3, 5):
            sizes = share_sizes(n, world)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
            parts = np.concatenate([window_share(np.arange(n), r, world)[0] for r in range(world)])
            assert parts.tolist() == list(range(n))


def test_shard_by_size_is_disjoint_complete_and_balanced():
    rng = np.random.default_rng(0)
    for trial in range(50):
        sizes = rng.integers(1, 3000, size=int(rng.integers(1, 60))).tolist()
        world = int(rng.integers(1, 6))
        shards = shard_by_size(sizes, world)
        assert sorted(i for s in shards for i in s) == list(range(len(sizes)))
        loads = [sum(sizes[i] for i in s) for s in shards]
        # LPT bound: the largest load exceeds the ideal by less than the largest single item
        assert max(loads) <= sum(sizes) / world + max(sizes)
        assert all(s == sorted(s) for s in shards)
    assert shard_by_size([10, 1, 1, 8], 2) == [[0], [1, 2, 3]]
    assert shard_by_size([], 3) == [[], [], []]


def test_one_process_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d, device = distributed.setup(torch.device("cpu"))
    assert d == distributed.SINGLE and not d.enabled and d.is_main and device == torch.device("cpu")
    distributed.barrier(d)
    assert distributed.broadcast(d, {"a": 1}) == {"a": 1} and distributed.gather(d, 3) == [3]
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(distributed.gather_rows(d, t, [2]), t[:2])
    assert distributed.choose_backend(torch.device("cuda")) == "nccl"
    assert distributed.choose_backend(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.from_env()


def test_single_process_commands_refuse_torchrun(monkeypatch, capsys):
    from mambava.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["folds"]) == 2
    assert "runs in one process" in capsys.readouterr().err


# --------------------------------------------------------------------------- training
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, ddp=distributed.SINGLE, dropout=0.0, interrupt_at=None):
    tc, ec = configs(seed=0, batch_size=5)  # 5 windows on 2 ranks: shares of 3 and 2 (padding)
    vids = make_videos()
    torch.manual_seed(0)
    model = TinyCausal(6, dropout=dropout)
    ds = Windows(vids[:4], tc.window, tc.stride, "pad")
    summary = fit(model, ds, vids[4:], tc, ec, torch.device("cpu"), out, fingerprint="fp",
                  progress=False, interrupt_at=interrupt_at, ddp=ddp)
    return summary, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _worker(rank, port, jobs, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d, _ = distributed.setup(torch.device("cpu"))
    assert d.backend == "gloo" and d.world_size == WORLD
    try:
        for name, kw in jobs:
            try:
                results[(name, rank)] = _train(ddp=d, **kw)
            except Interrupted:
                results[(name, rank)] = "interrupted"
    finally:
        distributed.shutdown()


def _spawn(jobs):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), jobs, results), nprocs=WORLD, join=True)
        return dict(results)


def _losses(out):
    return read_steps(out).to_numpy()  # step, epoch, lr, loss, grad_norm (DVCLive's train/*.tsv)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    jobs = [
        ("plain", {"out": root / "ddp"}),
        ("dropout", {"out": root / "ddp_dropout", "dropout": 0.3}),
        ("cut", {"out": root / "ddp_resumed", "dropout": 0.3, "interrupt_at": 7}),
        ("resumed", {"out": root / "ddp_resumed", "dropout": 0.3}),
    ]
    return root, _spawn(jobs)


def test_ddp_training_equals_one_process(tmp_path, ddp_runs):
    """Same global batch on 1 and 2 processes, dropout off: the loss of every step, the
    validation CCCs and the final weights agree to float32 rounding.

    Tolerance, and why it is not zero: the two runs compute the same sums in different orders
    (the gradient of a convolution is a sum over the batch; on 2 ranks it is two half sums added
    by the all-reduce, then halved), so they differ by a few float32 ulps (~1e-7 relative) per
    step, and Adam's division by sqrt(v) can amplify such differences for weights whose gradient
    is near zero as they compound over steps. Measured on this test's 15 steps: losses 1.2e-7
    apart (1e-7 relative), weights 3e-8. We allow rtol 1e-5 / atol 1e-6: 100x the measured
    rounding, and far below a real fault (computing the CCC loss per rank instead of over the
    gathered global batch moves the losses by 0.13 and the weights by 0.03 here).
    """
    root, res = ddp_runs
    one, w1 = _train(tmp_path / "one")
    (two, w2), (two_b, w2b) = res[("plain", 0)], res[("plain", 1)]
    for k in w1:
        np.testing.assert_array_equal(w2[k], w2b[k], err_msg=f"ranks disagree on {k}")  # replicas identical
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    a, b = _losses(tmp_path / "one"), _losses(root / "ddp")
    assert a.shape == b.shape and a.shape[0] == one["steps"] == two["steps"]
    np.testing.assert_array_equal(a[:, :3], b[:, :3])  # step, epoch, learning rate
    np.testing.assert_allclose(b[:, 3], a[:, 3], rtol=1e-5, atol=1e-6)  # loss
    np.testing.assert_allclose(b[:, 4], a[:, 4], rtol=1e-5, atol=1e-6)  # gradient norm
    ea, eb = read_evals(tmp_path / "one").to_numpy(), read_evals(root / "ddp").to_numpy()
    np.testing.assert_allclose(eb, ea, rtol=1e-5, atol=1e-6)
    assert two["best_step"] == one["best_step"] and two == two_b
    for key in ("ccc_valence", "ccc_arousal", "p_va", "final_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6)
    # only rank 0 wrote: one best.pt, no last.pt left
    assert (root / "ddp" / "best.pt").exists() and not (root / "ddp" / "last.pt").exists()


def test_ddp_with_dropout_learns_and_resumes_exactly(ddp_runs):
    """Dropout on: each rank draws its own masks, so the run equals one process in distribution,
    not in value; it must still learn, keep the replicas identical, and a run interrupted after
    step 7 and resumed (every rank restoring its own random state) must end bitwise like the
    uninterrupted one."""
    root, res = ddp_runs
    (full, wf), (_, wf1) = res[("dropout", 0)], res[("dropout", 1)]
    assert all(np.array_equal(wf[k], wf1[k]) for k in wf)
    steps = _losses(root / "ddp_dropout")
    assert steps[-5:, 3].mean() < steps[:5, 3].mean() - 0.1 and full["p_va"] > 0.2
    assert res[("cut", 0)] == res[("cut", 1)] == "interrupted"
    resumed, wr = res[("resumed", 0)]
    for k in wf:
        np.testing.assert_array_equal(wr[k], wf[k], err_msg=f"{k} differs after resume")
    np.testing.assert_array_equal(_losses(root / "ddp_resumed")[:, :4], steps[:, :4])
    assert {k: v for k, v in resumed.items() if not k.startswith("second")} == {
        k: v for k, v in full.items() if not k.startswith("second")}
