"""The ``leakage`` stage keeps its trainings between runs: a change that its variant does not read
(another variant's setting) reuses them; one that it reads trains them again."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from _tiny_project import make_project

REPO = Path(__file__).resolve().parents[1]


def test_dvc_keeps_the_leakage_trainings_between_runs():
    """DVC removes a stage's outputs before it runs, unless they persist: the trainings must, and
    the stage must see every model file they run."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["leakage"]
    persisted = [o for o in stage["outs"] if isinstance(o, dict) and o.get("${train.out}/leakage", {}).get("persist")]
    assert persisted, stage["outs"]
    models = sorted(str(f.relative_to(REPO)) for f in (REPO / "src/mambava/models").glob("*.py") if f.name != "summary.py")
    assert set(models) <= set(stage["deps"]), sorted(set(models) - set(stage["deps"]))


def test_leakage_reuses_its_runs_by_fingerprint(tmp_path, monkeypatch):
    from mambava import evaluate, leakage, train_runs
    from mambava.config import load_config
    from mambava.data.windows import run_folds

    monkeypatch.chdir(make_project(tmp_path))
    p = yaml.safe_load(open("params.yaml"))
    p["book"] = {"n_boot": 20}
    p["evaluate"] = {"n_boot": 0, "out": "eval"}
    open("params.yaml", "w").write(yaml.safe_dump(p))
    cfg = load_config("params.yaml")
    assert cfg.protocol == "clean" and cfg.book.variant == "mamba_va"
    run_folds(cfg)
    train_runs.run_all(cfg, "mamba_va", progress=False)
    evaluate.run_all(cfg, "mamba_va")

    first = leakage.run(cfg)
    ckpts = sorted((tmp_path / "runs" / "leakage" / "mae" / "mamba_va").glob("fold*/seed*/best.pt"))
    assert [c.parent.parent.name for c in ckpts] == ["fold1", "fold2"]  # the paper's folds 1..n_splits
    assert leakage.models_root(cfg) == Path(cfg.train.out) / "leakage"
    stamps = [c.stat().st_mtime_ns for c in ckpts]
    summary = json.loads((tmp_path / "eval" / "leakage.json").read_text())
    assert summary["variant"] == "mamba_va" and set(summary["leak_effect"])

    def with_model(**changes):
        return cfg.model_copy(update={"model": cfg.model.model_copy(update=changes)})

    # the Transformer's window: Mamba-VA reads no part of it, so its runs are kept, and the result is the same
    assert leakage.run(with_model(attention_window=7)) == first
    assert [c.stat().st_mtime_ns for c in ckpts] == stamps
    # Mamba's state size: Mamba-VA reads it, so the runs train again
    leakage.run(with_model(d_state=3))
    assert all(c.stat().st_mtime_ns != s for c, s in zip(ckpts, stamps))
