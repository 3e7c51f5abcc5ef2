"""benchmarks/train_budget.py: the params it writes for a changed training budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _bench import load_benchmark
from mambava.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("train_budget")


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


def _metrics(path: Path, seed: int, valence: float, arousal: float) -> None:
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"seed": seed, "ccc_valence": valence, "ccc_arousal": arousal}))


def test_validation_is_the_mean_of_every_run_and_the_spread_of_the_seed_means(tmp_path):
    tb = _module()
    root = tmp_path / "runs"
    # two folds x two seeds; the primary seed (42) sits in fold<k>/, the other in fold<k>/seed43/
    _metrics(root / "oracle" / "mamba_va" / "fold0", 42, 0.90, 0.70)
    _metrics(root / "oracle" / "mamba_va" / "fold1", 42, 0.80, 0.50)
    _metrics(root / "oracle" / "mamba_va" / "fold0" / "seed43", 43, 0.70, 0.60)
    _metrics(root / "oracle" / "mamba_va" / "fold1" / "seed43", 43, 0.60, 0.60)
    rows = {r["target"]: r for r in tb.validation(root, ["oracle"], ["mamba_va"])}
    assert rows["valence"]["runs"] == 4
    assert rows["valence"]["ccc"] == pytest.approx(0.75)
    # seed means 0.85 and 0.65: SD (n - 1) = 0.2 / sqrt(2)
    assert rows["valence"]["seed_sd"] == pytest.approx(0.2 / 2 ** 0.5)
    assert rows["arousal"]["ccc"] == pytest.approx(0.60)
    assert rows["arousal"]["seed_sd"] == pytest.approx(0.0)


def test_validation_refuses_a_missing_run_folder(tmp_path):
    tb = _module()
    with pytest.raises(SystemExit, match="no validation metrics"):
        tb.validation(tmp_path / "runs", ["mae"], ["transformer"])


def test_the_variants_not_retrained_are_scored_on_the_default_runs(tmp_path):
    tb = _module()
    default, work = tmp_path / "outputs" / "runs", tmp_path / "work" / "runs"
    for lv in ("oracle", "mae"):
        for v in ("mamba_va", "transformer", "frame"):
            _metrics(default / lv / v / "fold0", 42, 0.9, 0.8)
    _metrics(default / "oracle" / "no_tcn" / "fold0", 42, 0.9, 0.8)  # at one level only: not scored
    _metrics(work / "oracle" / "transformer" / "fold0", 42, 0.5, 0.4)  # the retrained variant's own runs
    _metrics(work / "mae" / "transformer" / "fold0", 42, 0.5, 0.4)
    variants = ["mamba_va", "no_tcn", "transformer", "frame"]
    scored = tb.link_default_runs(default, work, ["oracle", "mae"], ["transformer"], variants)
    assert scored == ["mamba_va", "transformer", "frame"]
    for lv in ("oracle", "mae"):
        assert (work / lv / "mamba_va").resolve() == (default / lv / "mamba_va").resolve()
        assert not (work / lv / "transformer").is_symlink()
        assert json.loads((work / lv / "transformer" / "fold0" / "metrics.json").read_text())["ccc_valence"] == 0.5
    assert not (work / "oracle" / "no_tcn").exists()
    # the validation table of the work folder now reads the default's runs for the linked variants
    rows = tb.validation(work, ["oracle"], ["mamba_va", "transformer"])
    assert [r["ccc"] for r in rows if r["target"] == "valence"] == [pytest.approx(0.9), pytest.approx(0.5)]
    # a second call links nothing new and keeps what is there
    assert tb.link_default_runs(default, work, ["oracle", "mae"], ["transformer"], variants) == scored
