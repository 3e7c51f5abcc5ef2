"""The book's training curves: read from the TSV files that real DVCLive writes
(mambava.runlog.RunLog), checked against the logged numbers and a plain ``csv`` reading."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from mambava import report
from mambava.runlog import RunLog

SPE = 4  # steps per epoch
EPOCHS = 3


def _log_run(run_dir, rng):
    """A tiny run through RunLog: (step rows, eval rows) as logged."""
    log = RunLog(run_dir, steps_per_epoch=SPE)
    rows, evals = [], []
    for step in range(1, SPE * EPOCHS + 1):
        r = (step, step / SPE, 1e-3, float(rng.uniform(0.5, 2.0)), float(rng.uniform(0, 1)))
        rows.append(r)
        log.log_step(step, r[2], r[3], r[4])
        if step % SPE == 0:
            v, a = rng.uniform(-0.2, 0.8, 2)
            e = (step, step / SPE, float(v), float(a), float((v + a) / 2))
            evals.append(e)
            log.log_validation(e)
    log.end()
    return rows, evals


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(3)
    logged = {}
    for variant in ("no_tcn", "mamba_va"):  # written out of study order
        for seed in (43, 42):
            logged[variant, seed] = _log_run(root / "mae" / variant / "fold0" / f"seed{seed}", rng)
    _log_run(root / "mae" / "mamba_va" / "fold1" / "seed42", rng)  # another fold: not read
    _log_run(root / "oracle" / "mamba_va" / "fold0" / "seed42", rng)  # another level: not read
    return root, logged


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_curves_are_what_dvclive_wrote(models):
    root, logged = models
    df = report.load_training_curves(root, "mae", fold=0)
    assert list(df.columns) == report.CURVE_COLUMNS
    assert (df.level == "mae").all() and (df.fold == 0).all()
    assert list(dict.fromkeys(zip(df.variant, df.seed))) == [("mamba_va", 42), ("mamba_va", 43),
                                                              ("no_tcn", 42), ("no_tcn", 43)]
    for (variant, seed), (rows, evals) in logged.items():
        live = root / "mae" / variant / "fold0" / f"seed{seed}" / "dvclive"
        spe = json.loads((live / "metrics.json").read_text())["steps_per_epoch"]
        assert spe == SPE
        run = df[(df.variant == variant) & (df.seed == seed)]
        for group, metric, column in (("val", "ccc_valence", 2), ("val", "ccc_arousal", 3), ("val", "p_va", 4),
                                      ("train", "loss", 3)):
            want = _tsv(live / "plots" / "metrics" / group / f"{metric}.tsv")
            got = run[run.metric == metric]
            assert [int(r["step"]) for r in want] == got.step.tolist()
            assert got.value.to_numpy() == pytest.approx([float(r[metric]) for r in want], abs=1e-12)
            assert got.epoch.to_numpy() == pytest.approx([int(r["step"]) / spe for r in want], abs=1e-4)
            # and the numbers the run logged
            source = evals if group == "val" else rows
            assert got.value.to_numpy() == pytest.approx([r[column] for r in source], rel=1e-6)
    assert len(df) == 4 * (3 * EPOCHS + SPE * EPOCHS)


def test_epoch_means_average_each_epochs_steps(models):
    root, logged = models
    df = report.load_training_curves(root, "mae", fold=0)
    means = report.epoch_means(df, "loss")
    assert set(means.epoch) == set(range(1, EPOCHS + 1))
    for (variant, seed), (rows, _) in logged.items():
        got = means[(means.variant == variant) & (means.seed == seed)].sort_values("epoch")
        want = [sum(r[3] for r in rows if math.ceil(r[0] / SPE) == e) / SPE for e in range(1, EPOCHS + 1)]
        assert got.value.to_numpy() == pytest.approx(want, rel=1e-6)


def test_missing_logs_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="oracle"):
        report.load_training_curves(tmp_path, "oracle")
