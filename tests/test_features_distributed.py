"""`mambava features` under torchrun (2 CPU processes, gloo): sharded by video, byte-identical to
one process, and a rank killed mid-extraction loses nothing on restart and redoes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _tiny_layout import make_layout
from test_features import _run_stage, _stage_params

from mambava.features.extract import KILL_AFTER_ENV, KILL_RANK_ENV

# uneven lengths, so that balancing by frames differs from balancing by videos; one without faces
VIDEOS = {f"v{k}": {"split": "train", "n_frames": n, "missing": [2, 7]} for k, n in enumerate([60, 12, 25, 9, 33, 18, 14])}
VIDEOS["empty"] = {"split": "test", "n_frames": 10, "missing": list(range(1, 11)), "labels": False}


def _torchrun(params, env_extra=None, nproc=2):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mambava.cli", "--params", str(params), "features"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _arrays(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("features_ddp")
    index_path = make_layout(root / "data", VIDEOS)
    one = root / "one"
    r = _run_stage(_stage_params(root / "p1", index_path, one))
    assert r.returncode == 0, r.stderr[-3000:]
    return root, index_path, _arrays(one)


def test_two_processes_give_the_one_process_arrays_byte_for_byte(layout):
    root, index_path, want = layout
    out = root / "two"
    r = _torchrun(_stage_params(root / "p2", index_path, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(want) == 2 * len(VIDEOS) and _arrays(out) == want
    s = _summary(out)
    assert s["world_size"] == 2 and s["dist_backend"] == "gloo" and s["videos_written"] == len(VIDEOS)
    # balanced by frames, largest first to the lighter rank (n_frames 60,33,25,18,14,12,10,9):
    # rank A 60, B 33+25=58, B +18=76, A +14=74, A +12=86, B +10 (empty)=86, tie -> fewer videos: A +9=95.
    # Frames encoded = frames with a face image: n - 2 per video, none for "empty".
    frames = sorted(r["frames_encoded"] for r in s["ranks"])
    assert frames == [31 + 23 + 16 + 0, 58 + 12 + 10 + 7]
    assert [r["videos_written"] for r in s["ranks"]] == [4, 4]


def _summary(out):
    """What the arrays are (_summary.json) and what the run did (features.timing.json)."""
    return {**json.loads((out / "_summary.json").read_text()), **json.loads((out / "features.timing.json").read_text())}


def test_killed_rank_is_redone_and_finished_videos_are_not(layout):
    root, index_path, want = layout
    out = root / "killed"
    params = _stage_params(root / "p3", index_path, out)
    # rank 1 is SIGKILLed while writing its second video (after the .tmp, before the rename);
    # torchrun then stops rank 0 wherever it is
    r = _torchrun(params, {KILL_AFTER_ENV: "1", KILL_RANK_ENV: "1"})
    assert r.returncode != 0, r.stderr[-3000:]
    assert "SIGKILL" in r.stderr or "Signal 9" in r.stderr or "exitcode  : -9" in r.stderr, r.stderr[-3000:]
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in out.glob("*.npy") if not p.name.endswith(".mask.npy")}
    assert 1 <= len(finished) < len(VIDEOS)  # rank 1 had finished one video; not everything was done
    assert list(out.glob("*.tmp")), "the kill should leave a partial write behind"

    r = _torchrun(params)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _arrays(out) == want and not list(out.glob("*.tmp"))
    s = _summary(out)
    assert s["videos_skipped"] == len(finished) and s["videos_written"] == len(VIDEOS) - len(finished)
    for name, stamp in finished.items():  # never rewritten: same file, same modification time
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, name


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous(layout):
    """The several-machines command line (docs/scaling-out.md), as two 'nodes' of one process each on this
    machine meeting at a c10d rendezvous endpoint: same arrays as one process."""
    import socket

    root, index_path, want = layout
    out = root / "nodes"
    params = _stage_params(root / "p4", index_path, out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test-nodes",
           "-m", "mambava.cli", "--params", str(params), "features"]
    nodes = [subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [n.communicate(timeout=600) for n in nodes]
    for n, (_, err) in zip(nodes, results):
        assert n.returncode == 0, err[-3000:]
    assert _arrays(out) == want
    s = _summary(out)
    assert s["world_size"] == 2 and [r["videos_written"] for r in s["ranks"]] == [4, 4]
