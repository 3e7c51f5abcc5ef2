"""Where the ``evaluate`` stage's results live and how they are read back (report, plots, book).

Run layout (:func:`mambava.runtime.eval_dir` writes it; one level's folder is ``runs`` here)::

    <runs>/<variant>/fold<k>/metrics.json       validation metrics, flat JSON (ccc_valence, ...)
    <runs>/<variant>/fold<k>/predictions.csv    video, frame, valence, arousal, valence_true, arousal_true
    <runs>/<variant>/fold<k>/test/...           the same for the test split (+ the ABAW submission)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.io import read_timing
from mambava.models import VARIANTS

METRICS = ("ccc_valence", "ccc_arousal", "p_va")



METRIC_LABELS = {"ccc_valence": "Valence", "ccc_arousal": "Arousal", "p_va": "Average"}



PRED_COLUMNS = ["video", "frame", "valence", "arousal", "valence_true", "arousal_true"]



def run_dir(runs: str | Path, variant: str, fold: int, split: str = "validation") -> Path:
    d = Path(runs) / variant / f"fold{fold}"
    return d / "test" if split == "test" else d



def discover_runs(runs: str | Path) -> pd.DataFrame:
    """Every <variant>/fold<k> under ``runs`` that has a metrics.json (the primary seed's run),
    variants in study order: columns variant, fold, path. The one run discovery (report, plots)."""
    rows = []
    for m in sorted(Path(runs).glob("*/fold*/metrics.json")):
        fold = m.parent.name.removeprefix("fold")
        if fold.isdigit():
            rows.append({"variant": m.parent.parent.name, "fold": int(fold), "path": str(m.parent)})
    if not rows:
        raise FileNotFoundError(f"{runs}: no <variant>/fold<k>/metrics.json (has `dvc repro evaluate` run?)")
    df = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(VARIANTS)}
    return df.sort_values(["variant", "fold"], key=lambda s: s.map(order).fillna(99) if s.name == "variant" else s,
                          ignore_index=True)



def load_metrics(runs: str | Path, split: str = "validation") -> pd.DataFrame:
    """All metrics.json files of one split as a table: one row per (variant, fold), flat keys as columns."""
    rows = []
    for r in discover_runs(runs).itertuples():
        path = run_dir(runs, r.variant, r.fold, split) / "metrics.json"
        if split != "test" or path.exists():
            timing = read_timing(path.parent, "train") if split != "test" else {}  # measured costs
            rows.append({"variant": r.variant, "fold": r.fold, **timing, **_flat(json.loads(path.read_text()))})
    return pd.DataFrame(rows)



def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out



def load_predictions(path: str | Path) -> pd.DataFrame:
    """predictions.csv with the columns PRED_COLUMNS; ``path`` may be its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: predictions not found (run `dvc repro evaluate`)")
    df = pd.read_csv(path, dtype={"video": str})
    missing = [c for c in PRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: predictions lack columns {missing}")
    return df


CURVE_COLUMNS = ["level", "variant", "fold", "seed", "step", "epoch", "metric", "value"]


def load_training_curves(models: str | Path, level: str, fold: int = 0) -> pd.DataFrame:
    """The DVCLive logs of every variant and seed of one level and fold, as a long table
    (``CURVE_COLUMNS``): each validation's ``ccc_valence``, ``ccc_arousal`` and ``p_va`` and each
    optimizer step's training ``loss``, read with :mod:`mambava.runlog` from
    ``<models>/<level>/<variant>/fold<fold>/seed<s>/dvclive/`` (``models`` = ``train.out``);
    variants in study order, then seeds."""
    from mambava.runlog import EVAL_METRICS, LIVE_DIR, read_evals, read_steps

    found = sorted(Path(models, level).glob(f"*/fold{fold}/seed*/{LIVE_DIR}/metrics.json"))
    if not found:
        raise FileNotFoundError(f"{Path(models, level)}: no <variant>/fold{fold}/seed<s>/{LIVE_DIR}/metrics.json "
                                "(has `dvc repro train` run?)")
    order = {v: i for i, v in enumerate(VARIANTS)}
    runs = sorted(((f.parents[3].name, int(f.parents[1].name.removeprefix("seed")), f.parents[1]) for f in found),
                  key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))
    parts = []
    for variant, seed, run in runs:
        keys = {"level": level, "variant": variant, "fold": fold, "seed": seed}
        evals = read_evals(run).melt(id_vars=["step", "epoch"], value_vars=list(EVAL_METRICS), var_name="metric")
        steps = read_steps(run)[["step", "epoch", "loss"]].assign(metric="loss").rename(columns={"loss": "value"})
        parts += [evals.assign(**keys), steps.assign(**keys)]
    return pd.concat(parts, ignore_index=True)[CURVE_COLUMNS]


def training_curves(models: str | Path, levels, fold: int = 0) -> pd.DataFrame:
    """:func:`load_training_curves` of every level in ``levels`` that has training logs (real
    Aff-Wild2 has no oracle runs: its train stages only write why they were skipped); raises
    FileNotFoundError when none has."""
    from mambava.runlog import LIVE_DIR

    found = [lv for lv in levels if any(Path(models, lv).glob(f"*/fold{fold}/seed*/{LIVE_DIR}/metrics.json"))]
    if not found:
        return load_training_curves(models, levels[-1], fold)  # the error that names the folder
    return pd.concat([load_training_curves(models, lv, fold) for lv in found], ignore_index=True)


def epoch_means(curves: pd.DataFrame, metric: str = "loss") -> pd.DataFrame:
    """One ``metric``'s rows averaged over each epoch's steps (step s of epoch e: e - 1 < epoch <= e),
    per level, variant, fold and seed; ``epoch`` is then the epoch's number (1, 2, ...)."""
    keys = ["level", "variant", "fold", "seed", "metric"]
    d = curves[curves.metric == metric]
    d = d.assign(epoch=np.ceil(d.epoch.round(6)).astype(int))
    return d.groupby([*keys, "epoch"], sort=False, as_index=False)["value"].mean()[[*keys, "epoch", "value"]]
