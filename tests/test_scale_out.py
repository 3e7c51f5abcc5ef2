"""Stage-level scale-out on CPU, in a tiny project in a temporary folder (tests/_tiny_project.py):
`mambava train` under torchrun (2 gloo processes) against one process, and the ablation matrix
on DVC's experiment queue (`dvc exp run --queue` + `dvc queue start -j 2`) against `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _tiny_project import DVC_YAML, make_project

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# fields that are the same in any correct rerun (times, memory and the process layout are not)
RESULT_KEYS = ["best_step", "ccc_valence", "ccc_arousal", "p_va", "final_loss", "steps", "n_train_windows"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mambava, dvc, torchrun of this environment
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org", OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def _sh(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: m[k] for k in RESULT_KEYS}


def test_torchrun_train_equals_one_process(tmp_path):
    """The whole `train` stage (config, data, the real Mamba-VA model with the numba scan) on 2
    processes with the same global batch: same best step and CCCs as one process to float
    rounding (tolerance as in test_distributed.py), one train_metrics.json from rank 0."""
    make_project(tmp_path)
    train = ["-m", "mambava.cli", "train", "--no-progress", "--variant", "mamba_va", "--fold", "1"]
    _sh([sys.executable, *train], tmp_path)
    one = json.loads((tmp_path / "runs/mae/mamba_va/fold1/seed0/train_metrics.json").read_text())
    (tmp_path / "runs").rename(tmp_path / "runs_one")
    _sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *train], tmp_path)
    two = json.loads((tmp_path / "runs/mae/mamba_va/fold1/seed0/train_metrics.json").read_text())
    assert two["world_size"] == 2 and two["dist_backend"] == "gloo" and "world_size" not in one
    assert one["p_va"] > 0.2, "the tiny task should be learnt, or the comparison says little"
    for key in ("best_step", "steps", "n_train_windows"):
        assert two[key] == one[key]
    for key in ("ccc_valence", "ccc_arousal", "p_va", "final_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert not (tmp_path / "runs/mae/mamba_va/fold1/seed0/last.pt").exists()


def _queued_results(root: Path) -> dict[int, dict[str, dict]]:
    """seed -> {metrics file: results} of every experiment in `dvc exp show --json`."""
    out = {}
    for base in json.loads(_sh(["dvc", "exp", "show", "--json"], root)):
        for exp in base.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                seed = data["params"]["params.yaml"]["data"]["train"]["seed"]
                out[seed] = {f: {k: m["data"][k] for k in RESULT_KEYS} for f, m in data["metrics"].items()}
    return out


@pytest.mark.slow
def test_dvc_queue_gives_the_metrics_of_dvc_repro(tmp_path):
    """Variants x folds (the stage matrix) x seeds (queued experiments), 2 queue workers; then
    `dvc repro` of each seed in the workspace: the metrics must be identical (training on CPU with
    one thread is deterministic, so equality is exact, not approximate)."""
    root = tmp_path / "project"
    make_project(root)
    (root / "dvc.yaml").write_text(DVC_YAML)
    _sh(["git", "init", "-q"], root)
    _sh(["dvc", "init", "-q"], root)
    _sh(["git", "add", "-A"], root)
    _sh(["git", "commit", "-qm", "tiny project"], root)
    seeds = [1, 2, 3]
    for seed in seeds:
        _sh(["dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}"], root)
    # not through pipes: the queue's workers inherit them and would hold them open until they exit
    r = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=_env(), timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert r.returncode == 0
    deadline = time.monotonic() + 1200
    while True:
        status = _sh(["dvc", "queue", "status"], root)
        if not any(s in status for s in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == len(seeds), status
    queued = _queued_results(root)
    assert sorted(queued) == seeds

    def files_of(seed):  # a run's folder is named after its seed
        return [f"runs/mae/{v}/fold{f}/seed{seed}/train_metrics.json" for v in ("mamba_va", "no_mamba") for f in (0, 1)]

    for seed in seeds:
        files = files_of(seed)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"]["seed"] = seed
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _sh(["dvc", "repro"], root)
        repro = {f: _metrics(root / f) for f in files}
        assert sorted(queued[seed]) == sorted(files)
        assert queued[seed] == repro, f"seed {seed}: queue and repro disagree"
    # seeds do change the result (so that equality above is not vacuous)
    assert queued[1][files_of(1)[0]]["p_va"] != queued[2][files_of(2)[0]]["p_va"]
    # the comparison commands of docs/scaling-out.md run on the queue's results
    names = [e["name"] for b in json.loads(_sh(["dvc", "exp", "show", "--json"], root)) for e in b.get("experiments") or []]
    diff = json.loads(_sh(["dvc", "metrics", "diff", names[0], names[1], "--json"], root))
    assert diff and set(diff) <= set(files_of(1) + files_of(2) + files_of(3))
