"""Through DVC: a SIGKILL of `dvc repro` in a train stage, then `dvc repro` again, ends with the
same bytes as an uninterrupted run; and forced reruns leave dvc.lock unchanged.

A tiny project is built from the repository's dvc.yaml (tests/_dvc_project.py) in a temporary
folder. The kill is real: `dvc repro` runs in its own process group and the whole group gets
SIGKILL (as a crash or an OOM kill would), at a step chosen with the MAMBAVA_TEST_PAUSE hook.
The reference is the uninterrupted run: the same dvc.lock entry (the MD5 DVC computed of
best.pt, the metrics and the logs) and the same bytes of best.pt.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from _dvc_project import dvc, make_project, popen_dvc

pytestmark = pytest.mark.slow
TRAIN = "train@mae-mamba_va"
RUN = Path("outputs/models/mae/mamba_va/fold0/seed42")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """data -> mae -> features -> folds done; oracle features, train and evaluate not run yet."""
    root = make_project(tmp_path_factory.mktemp("dvc") / "base",
                        ["data", "frames", "mae_pretrain", "mae_finetune", "features", "folds", "oracle_features", "train",
                         "evaluate"])
    dvc(root, "repro", "folds")
    return root


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "p"
    shutil.copytree(base, root, symlinks=True)
    dvc(root, "repro", TRAIN)
    return root


def lock_entry(root: Path, stage: str = TRAIN) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]


def kill_at(root: Path, step: int, timeout: float = 300) -> None:
    marker = root / "paused.txt"
    proc = popen_dvc(root, "repro", TRAIN, extra_env={"MAMBAVA_TEST_PAUSE": f"{step}:{marker}"})
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"dvc repro ended ({proc.returncode}) before step {step}:\n{proc.stdout.read().decode()}")
        assert time.time() < deadline, "timed out waiting for the pause"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


@pytest.mark.parametrize("step", [1, 2, 3, 6])  # before any save; at the best; after it; after the last validation
def test_sigkill_of_dvc_repro_then_repro_equals_uninterrupted(base, reference, tmp_path, step):
    ref = lock_entry(reference)
    root = tmp_path / "p"
    shutil.copytree(base, root, symlinks=True)
    kill_at(root, step)
    assert (root / RUN / "last.pt").exists() == (step >= 2)  # the state exists from the first validation
    r = dvc(root, "repro", TRAIN)
    assert "resuming" in r.stderr or step < 2, r.stderr[-2000:]
    got = lock_entry(root)
    assert got["outs"] == ref["outs"]  # best.pt, train_metrics.json, the logs: same MD5s
    assert (root / RUN / "best.pt").read_bytes() == (reference / RUN / "best.pt").read_bytes()
    assert not (root / RUN / "last.pt").exists()
    assert dvc(root, "status", TRAIN).stdout.strip().endswith("Data and pipelines are up to date.")


def test_stale_state_from_other_features_is_not_resumed(base, reference, tmp_path):
    """Features re-extracted with the same shape but other values: last.pt is not theirs."""
    import numpy as np

    root = tmp_path / "p"
    shutil.copytree(base, root, symlinks=True)
    kill_at(root, 3)
    import pandas as pd

    folds = pd.read_csv(root / "outputs/folds.csv")
    f = root / "outputs/features" / f"{folds.video[folds.split == 'train'].iloc[0]}.npy"  # a training video
    a = np.load(f)
    np.save(f, (a + np.float16(0.5)).astype(a.dtype))  # same shape and size, other content
    r = dvc(root, "repro", "--single-item", TRAIN)  # this stage only, on the changed features
    assert "from other settings or data; starting afresh" in r.stderr
    assert "resuming" not in r.stderr


def test_forced_rerun_of_every_stage_leaves_dvc_lock_unchanged(base, tmp_path):
    """`dvc repro -f` after `dvc repro`: every stage runs again and writes the same bytes."""
    root = tmp_path / "p"
    shutil.copytree(base, root, symlinks=True)
    dvc(root, "repro")
    first = (root / "dvc.lock").read_text()
    timings = {p.relative_to(root).as_posix() for p in root.rglob("*.timing.json")}
    assert timings >= {"data/data.timing.json", "outputs/features/features.timing.json",
                       "outputs/mae_finetune/mae_finetune.timing.json", "outputs/mae_pretrain/mae_pretrain.timing.json",
                       f"{RUN}/train.timing.json"}, timings
    r = dvc(root, "repro", "--force")
    n_stages = len(yaml.safe_load(first)["stages"])
    assert n_stages >= 8 and r.stdout.count("Running stage") == n_stages, r.stdout
    second = (root / "dvc.lock").read_text()
    assert second == first, "\n".join(
        f"{a!r} != {b!r}" for a, b in zip(first.splitlines(), second.splitlines()) if a != b)
    assert "timing" not in second  # DVC never sees the measurements
