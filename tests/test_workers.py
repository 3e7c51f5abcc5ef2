"""`workers: auto`: the cores this process may use, and the same bytes for any number of workers.

Each test runs the same work with one worker and with several and compares the files byte for
byte (or the tensors exactly): the twin's frames and labels, the feature arrays, the trained
weights. ``auto`` is checked against the process's CPU affinity, set in a child process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny_layout import make_layout
from _tiny_project import make_project

from mambava.config import FACE_MEAN, FACE_STD, SyntheticConfig, load_config
from mambava.workers import cpu_count, resolve_workers


def _tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- auto
def test_auto_is_the_cores_this_process_may_use():
    assert resolve_workers("auto") == cpu_count() == len(os.sched_getaffinity(0))
    assert resolve_workers(None) == cpu_count()
    assert resolve_workers(3) == 3 and resolve_workers(0, minimum=0) == 0
    for bad in (0, -1, "all", 2.0, True):
        with pytest.raises(ValueError, match="workers must be"):
            resolve_workers(bad)
    # one core allowed (as `taskset -c 0` would): auto is 1, whatever the machine has
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from mambava.workers import resolve_workers; print(resolve_workers('auto'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_params_take_auto_and_reject_other_words(tmp_path):
    base = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    assert base["train"]["workers"] == "auto" and base["data"]["synthetic"]["workers"] == "auto"
    assert base["features"]["num_workers"] == "auto"
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.train.workers == "auto"
    bad = dict(base)
    bad["train"] = {**base["train"], "workers": "many"}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(Exception, match="workers"):
        load_config(p)


# --------------------------------------------------------------------------- the twin
def test_twin_is_the_same_bytes_for_any_number_of_workers(tmp_path):
    from mambava.data.synthetic import generate_twin

    small = dict(n_videos=7, n_pairs=1, min_frames=30, max_frames=80, seed=3, missing_rate=0.05)
    trees = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        generate_twin(SyntheticConfig(**small, workers=workers), out / "affwild2", out / "labels", out / "truth",
                      "test_list.txt")
        trees.append(_tree(out))
    assert len(trees[0]) > 7 * 30  # frames, annotations, labels and truth files
    assert trees[0] == trees[1]


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("variant", ["mamba_va", "transformer"])
def test_training_is_the_same_bytes_for_any_number_of_workers(tmp_path, monkeypatch, variant):
    """Three folds x two seeds trained one after the other, then two at a time in forked workers:
    every checkpoint's weights and every reported number are exactly equal. Each leg is the
    ``mambava train`` command in a process of its own, as DVC runs the stage. (The former form of
    this test ran both legs inside the pytest process and passed or failed with the tests before it;
    in this form it caught each process's first run on every core, see the test below.)"""
    root = make_project(tmp_path, seeds=2)
    monkeypatch.chdir(root)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    results, weights = [], []
    for workers in (1, 2):
        out = Path(f"runs_w{workers}")
        params = Path(f"params_w{workers}.yaml")
        params.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "workers": workers, "out": str(out)}}))
        code = "import sys; from mambava.cli import main; sys.exit(main())"
        subprocess.run([sys.executable, "-c", code, "--params", str(params), "train", "--variant", variant,
                        "--no-progress"], check=True, capture_output=True)
        results.append(yaml.safe_load((out / "mae" / f"{variant}.json").read_text())["runs"])
        weights.append({str(p.relative_to(out)): torch.load(p, weights_only=True)["model"]
                        for p in sorted(out.rglob("best.pt"))})
    assert len(weights[0]) == 6 and weights[0].keys() == weights[1].keys()
    for run, sd in weights[0].items():
        for k, t in sd.items():
            assert torch.equal(t, weights[1][run][k]), f"{run}: {k} differs between 1 and 2 workers"
    assert results[0].keys() == results[1].keys()
    for run, r in results[0].items():
        assert r["best_step"] == results[1][run]["best_step"]
        assert np.array_equal(np.asarray(r["p_va"]), np.asarray(results[1][run]["p_va"]))


@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores: with one, every thread count is 1")
def test_set_threads_holds_in_a_fresh_process_and_in_forked_workers():
    """``set_threads(1)`` is what torch then runs, also where numba's OpenMP layer starts after it
    (the first call of each process) and in forked workers: the count torch reports and a LayerNorm
    backward, whose weight gradient sums one partial per thread, against the same sum on 1 thread."""
    code = """
import hashlib, torch
from mambava.runtime import parallel_map, set_threads
torch.randn(500, 500).sum()  # OpenMP's pool started on every core, as a stage's loading does
def job(_):
    set_threads(1)
    torch.manual_seed(0)
    x = torch.randn(5, 48, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    torch.nn.functional.layer_norm(x, (8,), w).pow(3).sum().backward()
    return torch.get_num_threads(), hashlib.sha256(w.grad.numpy().tobytes()).hexdigest()
print(repr([job(0), *parallel_map(job, [1, 2], 2)]))
"""
    ref = ("import hashlib, torch; torch.set_num_threads(1); torch.manual_seed(0); "
           "x = torch.randn(5, 48, 8, requires_grad=True); w = torch.ones(8, requires_grad=True); "
           "torch.nn.functional.layer_norm(x, (8,), w).pow(3).sum().backward(); "
           "print(hashlib.sha256(w.grad.numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    one = subprocess.run([sys.executable, "-c", ref], capture_output=True, text=True, check=True).stdout.strip()
    got = eval(out.strip())
    assert [n for n, _ in got] == [1, 1, 1]
    assert [h for _, h in got] == [one] * 3


# --------------------------------------------------------------------------- features
def test_features_are_the_same_bytes_for_any_number_of_workers_and_threads(tmp_path):
    """The default encoder's architecture (a small ResNet): DataLoader workers 0 / 2 and one or
    two torch threads for the network give the same arrays."""
    from mambava.data.affwild2 import load_index
    from mambava.features.extract import extract_features
    from mambava.features.mae import EncoderSpec, build_encoder

    index_path = make_layout(tmp_path / "data", {"a": {"split": "train", "n_frames": 23}, "b": {"split": "validation", "n_frames": 17, "missing": [3, 4]}, "c_left": {"split": "test", "n_frames": 9, "labels": False}})
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(img_size=32, patch_size=8, embed_dim=16, arch="resnet", channels=(8, 8, 16, 16),
                                    layers=(1, 1, 1, 1)))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n_threads, workers in ((1, 0), (2, 2)):
            torch.set_num_threads(n_threads)
            out = tmp_path / f"t{n_threads}w{workers}"
            extract_features(load_index(index_path), enc, out, 32, FACE_MEAN, FACE_STD, batch_size=8,
                             num_workers=workers, progress=False)
            outs.append({k: v for k, v in _tree(out).items() if k.endswith(".npy")})
    finally:
        torch.set_num_threads(threads)
    assert len(outs[0]) == 6 and outs[0] == outs[1]
