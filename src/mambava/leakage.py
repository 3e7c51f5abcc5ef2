"""How optimistic is the paper's protocol? A randomised measurement on the default run.

In the authors' protocol the MAE encoder is fine-tuned on the labels of every official training
video, and the cross-validation folds 1-5 then validate on those same videos: a validation
video's labels shaped the features the model is scored on. The clean protocol (the default)
fine-tunes the encoder on a *random* part E of the training groups (``folds.encoder_fraction``)
and never validates on E.

That random draw is an experiment. This stage re-runs the paper's folds 1-5 (cross-validation
over all training and validation videos, E included) with the clean encoder's features, training
``book.variant`` with the primary seed. Among the validation videos of those folds, the official
training videos in E had their labels seen by the encoder; those outside E did not; which is
which was decided by a coin, so the difference of their CCCs estimates what seeing the labels is
worth (with a video bootstrap interval). ``leakage.json`` also gives the folds 1-5 mean as the
paper's protocol reports it next to the clean protocol's.

Outputs in ``<evaluate.out>/leakage/``: the runs (as the ``evaluate`` stage writes them),
``per_video.csv`` (video, fold, leaked, CCCs) and, beside the folder, ``leakage.json``; the trained
models in ``<train.out>/leakage/`` (:func:`models_root`, kept between runs).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("mambava.leakage")


def per_video_table(runs: Path, variant: str, folds: pd.DataFrame) -> pd.DataFrame:
    from mambava.report import load_predictions, per_video_ccc

    rows = []
    enc = set(folds.loc[folds["encoder"] == 1, "video"])
    train_videos = set(folds.loc[folds["split"] == "train", "video"])
    for f in range(1, int(folds["cv_fold"].max()) + 1):
        pv = per_video_ccc(load_predictions(runs / variant / f"fold{f}"))
        pv["fold"] = f
        pv["leaked"] = pv["video"].isin(enc)
        pv["official_train"] = pv["video"].isin(train_videos)
        rows.append(pv)
    return pd.concat(rows, ignore_index=True)


def leak_effect(pv: pd.DataFrame, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Mean per-video CCC of leaked minus clean official-training videos, frame-weighted, with a
    bootstrap percentile interval (``scipy.stats.bootstrap``, :func:`mambava.metrics.bootstrap`)
    that resamples videos within each group: the two groups are two independent samples."""
    from mambava.metrics import bootstrap

    part = pv[pv["official_train"]]
    a, b = part[part["leaked"]], part[~part["leaked"]]
    out = {"n_leaked_videos": int(len(a)), "n_clean_videos": int(len(b))}
    if len(a) == 0 or len(b) == 0:
        return out
    keys = ("ccc_valence", "ccc_arousal", "p_va")
    va, vb = a[list(keys)].to_numpy(np.float64), b[list(keys)].to_numpy(np.float64)
    wa, wb = a["n_frames"].to_numpy(np.float64), b["n_frames"].to_numpy(np.float64)

    def diff(ia, ib, axis=-1):  # frame-weighted means of the drawn videos: (3, *batch)
        ma = np.einsum("...v,...vk->k...", wa[ia], va[ia]) / wa[ia].sum(axis=-1)
        mb = np.einsum("...v,...vk->k...", wb[ib], vb[ib]) / wb[ib].sum(axis=-1)
        return ma - mb

    ia, ib = np.arange(len(a)), np.arange(len(b))
    point = diff(ia, ib)
    lo, hi, _ = bootstrap((ia, ib), diff, n_boot, seed, level)
    for j, key in enumerate(keys):
        out[key] = {"diff": round(float(point[j]), 4), "lo": round(float(lo[j]), 4), "hi": round(float(hi[j]), 4)}
    return out


def models_root(cfg) -> Path:
    """Where the stage's trainings live: ``<train.out>/leakage`` (``<level>/<variant>/fold<k>/seed<s>``
    below it). DVC keeps the folder between runs (``persist``), so a rerun keeps each finished run
    whose fingerprint is unchanged (:func:`mambava.train_runs.run`): a change to another variant's
    settings or model code reruns this stage in seconds, not minutes."""
    return Path(cfg.train.out) / "leakage"


def run(cfg) -> dict:
    """The ``leakage`` stage (module doc)."""
    from mambava import evaluate, train_runs
    from mambava.data.windows import make_folds, read_folds, write_folds
    from mambava.io import write_json
    from mambava.report import fold_scores

    root = Path(cfg.evaluate.out) / "leakage"
    summary_path = Path(cfg.evaluate.out) / "leakage.json"
    if cfg.protocol != "clean":
        why = "the measurement needs the clean protocol's random encoder videos (protocol: clean)"
        write_json(summary_path, {"skipped": why})
        root.mkdir(parents=True, exist_ok=True)
        return {"skipped": why}
    clean = read_folds(cfg.folds.file)
    from mambava.data.affwild2 import load_index

    paper = make_folds(load_index(cfg.data.index), cfg.folds.n_splits, cfg.folds.seed, "paper")
    paper["encoder"] = paper["video"].map(dict(zip(clean["video"], clean["encoder"]))).astype(int)
    folds_file = root / "folds_paper.csv"
    write_folds(paper, folds_file)
    sub = cfg.model_copy(update={
        "folds": cfg.folds.model_copy(update={"file": str(folds_file)}),
        "train": cfg.train.model_copy(update={"out": str(models_root(cfg)), "seeds": 1}),
        "evaluate": cfg.evaluate.model_copy(update={"out": str(root / "runs")}),
    })
    variant = cfg.book.variant
    folds = list(range(1, int(paper["cv_fold"].max()) + 1))
    train_runs.run_all(sub, variant, "mae", folds=folds, progress=False)
    evaluate.run_all(sub, variant, "mae", folds=folds)
    runs = root / "runs" / "mae"
    pv = per_video_table(runs, variant, paper)
    from mambava.io import write_csv

    write_csv(pv.round(6), root / "per_video.csv")
    effect = leak_effect(pv, cfg.book.n_boot, cfg.evaluate.boot_seed, cfg.evaluate.level)
    paper_cv = fold_scores(runs, variant)
    clean_runs = Path(cfg.evaluate.out) / "mae"
    clean_cv = fold_scores(clean_runs, variant)
    clean_cv = clean_cv[clean_cv.fold >= 1]
    result = {
        "variant": variant,
        "leak_effect": effect,
        "folds_1_5_paper_protocol": {k: round(float(paper_cv[k].mean()), 4) for k in ("ccc_valence", "ccc_arousal", "p_va")},
        "folds_1_5_clean_protocol": {k: round(float(clean_cv[k].mean()), 4) for k in ("ccc_valence", "ccc_arousal", "p_va")},
    }
    write_json(summary_path, result)
    log.info("leakage: %s", json.dumps(result))
    return result
