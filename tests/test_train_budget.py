"""benchmarks/train_budget.py: the params it writes for a changed training budget."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mambava.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("train_budget", REPO / "benchmarks" / "train_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_written_params_carry_the_changes_and_the_work_folders(tmp_path):
    tb = _module()
    path = tb.write_params(REPO / "params.yaml", tmp_path / "w", {"train.batch_size": 4, "train.epochs": 5})
    cfg, default = load_config(path), load_config(REPO / "params.yaml")
    assert (cfg.train.batch_size, cfg.train.epochs) == (4, 5)
    assert Path(cfg.train.out) == tmp_path / "w" / "models"
    assert Path(cfg.evaluate.out) == tmp_path / "w" / "runs"
    # everything else is the default's: the same features, folds and model
    assert cfg.features.dir == default.features.dir and cfg.folds.file == default.folds.file
    assert cfg.model == default.model and cfg.train.window == default.train.window


@pytest.mark.parametrize("key", ["train.batch_sise", "trian.epochs", "train.batch_size.x"])
def test_an_unknown_key_is_refused(tmp_path, key):
    tb = _module()
    with pytest.raises(SystemExit, match=key.split(".")[-1] if key != "train.batch_size.x" else "section"):
        tb.write_params(REPO / "params.yaml", tmp_path / "w", {key: 4})


def test_a_wrong_type_is_refused_by_the_config_layer(tmp_path):
    tb = _module()
    with pytest.raises(Exception, match="batch_size"):
        tb.write_params(REPO / "params.yaml", tmp_path / "w", {"train.batch_size": "four"})
