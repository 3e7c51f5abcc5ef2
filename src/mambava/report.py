"""What the book's notebooks compute: loading pipeline outputs and turning them into tables.

The notebooks in ``notebooks/`` only load, call these functions and plot, so everything that is a
computation lives here, with tests (tests/test_report.py). Every number in the book comes from a
pipeline output, except the paper's own, which come from one file: ``paper_results.yaml`` beside
this module (:func:`paper_results`).

Run layout read here (written by the ``train``/``evaluate`` stages)::

    <runs>/<variant>/fold<k>/metrics.json       validation metrics, flat JSON (ccc_valence, ...)
    <runs>/<variant>/fold<k>/predictions.csv    video, frame, valence, arousal, valence_true, arousal_true
    <runs>/<variant>/fold<k>/test/...           the same for the test split (+ the ABAW submission)

CCCs shown in the book are recomputed from ``predictions.csv`` (the split's frames concatenated,
-5 excluded, as the challenge scores) and checked against ``metrics.json``; intervals are
video-level bootstrap percentile intervals (:func:`mambava.metrics.bootstrap_ccc`, scipy).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mambava.config import VARIANTS
from mambava.io import read_timing
from mambava.metrics import bootstrap, bootstrap_ccc, ccc, ccc_va, ccc_va_from_stats, label_mask, per_video_stats

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
VARIANT_LABELS = {
    "mamba_va": "Mamba-VA (TCN + Mamba)",
    "no_tcn": "no TCN (Mamba only)",
    "no_mamba": "no Mamba (TCN only)",
    "transformer": "TCN + Transformer",
    "frame": "frame only (no TCN, no temporal model)",
}
METRICS = ("ccc_valence", "ccc_arousal", "p_va")
METRIC_LABELS = {"ccc_valence": "Valence", "ccc_arousal": "Arousal", "p_va": "Average"}
PRED_COLUMNS = ["video", "frame", "valence", "arousal", "valence_true", "arousal_true"]


# --------------------------------------------------------------------------- the paper's numbers
def paper_results(path: str | Path = PAPER_RESULTS) -> dict:
    """The paper's numbers (Table 1, Table 2, dataset facts) from the one reference file."""
    return yaml.safe_load(Path(path).read_text())


def paper_table1(ref: dict | None = None) -> pd.DataFrame:
    """Table 1 of the paper: index fold (0-5) then "baseline"; columns valence, arousal, average."""
    ref = ref or paper_results()
    t = ref["table1"]
    rows = {int(k): v for k, v in t["folds"].items()}
    df = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    df.loc["baseline"] = pd.Series(t["baseline"])
    return df[["valence", "arousal", "average"]].astype(float)


def paper_table2(ref: dict | None = None) -> pd.DataFrame:
    """Table 2 of the paper (test leaderboard) in its order: method, valence, arousal, average."""
    ref = ref or paper_results()
    return pd.DataFrame(ref["table2"]["rows"])[["method", "valence", "arousal", "average"]]


# --------------------------------------------------------------------------- run layout
def run_dir(runs: str | Path, variant: str, fold: int, split: str = "validation") -> Path:
    d = Path(runs) / variant / f"fold{fold}"
    return d / "test" if split == "test" else d


def discover_runs(runs: str | Path) -> pd.DataFrame:
    """Every <variant>/fold<k> under ``runs`` that has a metrics.json: columns variant, fold, path."""
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
    """predictions.csv (or .parquet) with the columns PRED_COLUMNS; `path` may be its run folder."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("predictions.csv", "predictions.parquet") if (path / n).exists()),
                    path / "predictions.csv")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"video": str})
    missing = [c for c in PRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: predictions lack columns {missing}")
    return df


# --------------------------------------------------------------------------- scores
def scores(pred: pd.DataFrame, n_boot: int = 0, seed: int = 0) -> dict:
    """CCC_v, CCC_a, P_VA over all frames of ``pred`` concatenated (-5 excluded), plus
    ``<metric>_lo/_hi`` video-level bootstrap 95% bounds when ``n_boot`` > 0, and n_frames/n_videos."""
    p = pred[["valence", "arousal"]].to_numpy(np.float64)
    t = pred[["valence_true", "arousal_true"]].to_numpy(np.float64)
    out: dict = dict(ccc_va(p, t))
    out["n_frames"] = int(label_mask(t).any(axis=1).sum())
    out["n_videos"] = int(pred["video"].nunique())
    if n_boot:
        bounds = bootstrap_ccc(p, t, pred["video"].to_numpy(), n_boot=n_boot, seed=seed)
        for k, (lo, hi) in bounds.items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


def per_video_ccc(pred: pd.DataFrame) -> pd.DataFrame:
    """CCC of each video on its own: video, n_frames (annotated), ccc_valence, ccc_arousal, p_va."""
    rows = []
    for video, g in pred.groupby("video", sort=True):
        t = g[["valence_true", "arousal_true"]].to_numpy(np.float64)
        p = g[["valence", "arousal"]].to_numpy(np.float64)
        if not label_mask(t[:, 0]).any() or not label_mask(t[:, 1]).any():
            continue
        r = ccc_va(p, t)
        rows.append({"video": video, "n_frames": int(label_mask(t).any(axis=1).sum()), **r})
    return pd.DataFrame(rows, columns=["video", "n_frames", *METRICS])


def paired_bootstrap(pred_a: pd.DataFrame, pred_b: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Split-level CCC of A minus that of B, with a paired video-level bootstrap interval.

    Both prediction tables must cover the same frames (same video, frame and truth). Each resample
    draws videos with replacement and scores A and B on the *same* videos (``scipy.stats.bootstrap``
    with ``paired=True``; percentile intervals, as :func:`mambava.metrics.bootstrap`), so the interval is of the
    difference, not of two independent scores. Returns {metric: (diff, lo, hi)} and
    ``p_better``: the fraction of resamples where A's P_VA exceeds B's.
    """
    key = ["video", "frame"]
    m = pred_a.merge(pred_b, on=key, suffixes=("_a", "_b"), validate="one_to_one")
    if len(m) != len(pred_a) or len(m) != len(pred_b):
        raise ValueError("paired_bootstrap: the two prediction tables cover different frames")
    for c in ("valence_true", "arousal_true"):
        if not np.array_equal(m[f"{c}_a"].to_numpy(), m[f"{c}_b"].to_numpy()):
            raise ValueError(f"paired_bootstrap: {c} differs between the two tables")
    t = m[["valence_true_a", "arousal_true_a"]].to_numpy(np.float64)
    g = m["video"].to_numpy()
    _, sa = per_video_stats(m[["valence_a", "arousal_a"]].to_numpy(np.float64), t, g)
    _, sb = per_video_stats(m[["valence_b", "arousal_b"]].to_numpy(np.float64), t, g)

    def diff(ia, ib, axis=-1):  # paired=True: ia and ib are the same video draw
        return ccc_va_from_stats(sa[ia].sum(axis=-3)) - ccc_va_from_stats(sb[ib].sum(axis=-3))

    videos = np.arange(len(sa))
    point = diff(videos, videos)
    lo, hi, reps = bootstrap((videos, videos), diff, n_boot, seed, level, paired=True)
    out = {k: (float(point[j]), float(lo[j]), float(hi[j])) for j, k in enumerate(METRICS)}
    out["p_better"] = float(np.nanmean(reps[2] > 0))
    return out


def paired_video_differences(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """Per-video CCC of A minus B: video, n_frames, d_ccc_valence, d_ccc_arousal, d_p_va."""
    a, b = per_video_ccc(pred_a), per_video_ccc(pred_b)
    m = a.merge(b, on=["video", "n_frames"], suffixes=("_a", "_b"), validate="one_to_one")
    out = m[["video", "n_frames"]].copy()
    for k in METRICS:
        out[f"d_{k}"] = m[f"{k}_a"] - m[f"{k}_b"]
    return out


def sign_test(diffs) -> float:
    """Two-sided exact sign test p-value of paired differences (zeros dropped): the binomial test
    of the number of positive differences against p = 1/2 (``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) == 0:
        return 1.0
    return float(binomtest(int((d > 0).sum()), len(d), 0.5, alternative="two-sided").pvalue)


def fold_scores(runs: str | Path, variant: str, split: str = "validation", n_boot: int = 0,
                seed: int = 0) -> pd.DataFrame:
    """scores() of every fold of one variant, recomputed from its predictions, one row per fold,
    with ``reported_p_va`` (metrics.json) beside the recomputed value."""
    folds = discover_runs(runs)
    folds = folds[folds.variant == variant]
    if folds.empty:
        raise FileNotFoundError(f"{runs}: no runs of variant {variant!r}")
    rows = []
    for f in folds.fold:
        d = run_dir(runs, variant, int(f), split)
        s = scores(load_predictions(d), n_boot=n_boot, seed=seed)
        reported = json.loads((d / "metrics.json").read_text())
        rows.append({"fold": int(f), **s, "reported_p_va": reported.get("p_va")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables
def fmt_ci(x: float, lo: float | None = None, hi: float | None = None, digits: int = 3) -> str:
    """'0.512 [0.480, 0.551]'; just the value when no bounds."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    s = f"{x:.{digits}f}"
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def table1(ours: pd.DataFrame, paper: pd.DataFrame | None = None, digits: int = 3) -> pd.DataFrame:
    """Table 1: per fold, our CCC (with 95% interval) beside the paper's, then the mean over folds
    and the paper's baseline row.

    ``ours``: fold_scores() output (fold, ccc_*, and *_lo/_hi if bootstrapped). Returns a frame
    indexed by "Fold k" / "Mean (folds)" / "Baseline", columns (Valence|Arousal|Average, ours|paper).
    """
    paper = paper_table1() if paper is None else paper
    pcol = {"ccc_valence": "valence", "ccc_arousal": "arousal", "p_va": "average"}
    cols = pd.MultiIndex.from_tuples([(METRIC_LABELS[k], w) for k in METRICS for w in ("ours", "paper")])
    rows, index = [], []
    for r in ours.sort_values("fold").to_dict("records"):
        row = []
        for k in METRICS:
            row.append(fmt_ci(r[k], r.get(f"{k}_lo"), r.get(f"{k}_hi"), digits))
            pv = paper[pcol[k]].get(r["fold"]) if r["fold"] in paper.index else None
            row.append("" if pv is None else f"{pv:.4f}")
        rows.append(row)
        index.append(f"Fold {r['fold']}")
    folds = [f for f in ours.fold if f in paper.index]
    mean_row = []
    for k in METRICS:
        mean_row.append(f"{ours[k].mean():.{digits}f} ± {ours[k].std(ddof=1):.{digits}f}" if len(ours) > 1
                        else f"{ours[k].mean():.{digits}f}")
        pm = paper.loc[folds, pcol[k]].astype(float)
        mean_row.append(f"{pm.mean():.4f} ± {pm.std(ddof=1):.3f}" if len(pm) > 1 else "")
    rows.append(mean_row)
    index.append("Mean ± sd (folds)")
    base = []
    for k in METRICS:
        base += ["", f"{paper.loc['baseline', pcol[k]]:.4f}"]
    rows.append(base)
    index.append("Baseline (organisers)")
    return pd.DataFrame(rows, index=index, columns=cols)


def table2(ours: dict, label: str = "mambava (this run)", paper: pd.DataFrame | None = None,
           digits: int = 3, extra: Sequence[tuple[str, dict]] = ()) -> pd.DataFrame:
    """Table 2: the paper's leaderboard with our test-set row(s) inserted, sorted by average CCC.

    ``ours``: scores() of the test predictions (ccc_*, optional *_lo/_hi); ``extra``: more
    (label, scores) rows of ours. The column ``source`` says which rows are the paper's and which
    are ours (and on which data).
    """
    paper = paper_table2() if paper is None else paper
    lb = paper.rename(columns={"valence": "Valence", "arousal": "Arousal", "average": "Average",
                               "method": "Method"}).copy()
    lb["source"] = "paper (Aff-Wild2 test)"
    mine = dict([(label, ours), *extra])
    rows = [{"Method": lab, "Valence": sc["ccc_valence"], "Arousal": sc["ccc_arousal"], "Average": sc["p_va"],
             "source": "this pipeline"} for lab, sc in mine.items()]
    lb = pd.concat([lb, pd.DataFrame(rows)], ignore_index=True)
    lb = lb.sort_values("Average", ascending=False, kind="stable", ignore_index=True)
    lb.insert(0, "Rank", np.arange(1, len(lb) + 1))
    for k, col in zip(METRICS, ("Valence", "Arousal", "Average")):
        lb[col] = [fmt_ci(v, mine[m].get(f"{k}_lo"), mine[m].get(f"{k}_hi"), digits) if m in mine else f"{v:.3f}"
                   for v, m in zip(lb[col], lb["Method"])]
    return lb.set_index("Rank")


def ladder_test_row(ladder: pd.DataFrame, variant: str, level: str = "mae") -> dict | None:
    """scores()-like dict of one ladder cell on the test split (mean over folds and seeds, with its
    video x seed interval), or None when the ladder has no such cell."""
    t = ladder[(ladder.split == "test") & (ladder.level == level) & (ladder.variant == variant)]
    if t.empty:
        return None
    out: dict = {}
    for r in t.itertuples():
        k = f"ccc_{r.target}"
        out[k], out[f"{k}_lo"], out[f"{k}_hi"] = float(r.ccc), float(r.lo), float(r.hi)
        out["n_folds"], out["n_seeds"] = int(r.n_folds), int(r.n_seeds)
    out["p_va"] = (out["ccc_valence"] + out["ccc_arousal"]) / 2
    return out


# The cost columns of the authors' later LightMamba ablation table: the parameters (metrics.json)
# and the measured time and memory (train.timing.json), plus where the run ran.
COST_KEYS = ("n_params", "seconds_per_epoch", "peak_memory_mb", "peak_cuda_mb", "device", "scan_backend")


def cost_columns(metrics: pd.DataFrame) -> pd.DataFrame:
    """variant, fold and the COST_KEYS columns of load_metrics() (NaN where a run lacks one)."""
    out = metrics[["variant", "fold"]].copy()
    for name in COST_KEYS:
        out[name] = metrics[name] if name in metrics.columns else np.nan
    return out


def ablation_table(per_fold: pd.DataFrame, costs: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """One row per variant: CCC mean ± sd over folds, fold 0 with its interval, parameters,
    time per epoch and peak memory (means over folds).

    ``per_fold``: concatenated fold_scores() with a ``variant`` column; ``costs``: cost_columns().
    """
    rows = []
    order = [v for v in VARIANTS if v in set(per_fold.variant)] + sorted(set(per_fold.variant) - set(VARIANTS))
    for v in order:
        f = per_fold[per_fold.variant == v]
        c = costs[costs.variant == v]
        row = {"Variant": VARIANT_LABELS.get(v, v), "folds": len(f)}
        for k in METRICS:
            sd = f[k].std(ddof=1) if len(f) > 1 else float("nan")
            row[f"{METRIC_LABELS[k]} (mean ± sd)"] = f"{f[k].mean():.{digits}f}" + (
                f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")
        f0 = f[f.fold == 0]
        if len(f0):
            r = f0.iloc[0]
            row["Average, fold 0 [95% CI]"] = fmt_ci(r["p_va"], r.get("p_va_lo"), r.get("p_va_hi"), digits)
        n = pd.to_numeric(c["n_params"], errors="coerce")
        row["Parameters"] = f"{int(n.iloc[0]):,}" if n.notna().any() else ""
        s = pd.to_numeric(c["seconds_per_epoch"], errors="coerce")
        row["s / epoch"] = f"{s.mean():.2f}" if s.notna().any() else ""
        mem = pd.to_numeric(c["peak_memory_mb"], errors="coerce")
        row["Peak memory (MB)"] = f"{mem.mean():.0f}" if mem.notna().any() else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("Variant")


def pick_videos(per_video: pd.DataFrame, key: str = "p_va") -> dict[str, str]:
    """The best, median and worst video by ``key`` (the median: the one closest to it, lower on ties)."""
    s = per_video.dropna(subset=[key]).sort_values([key, "video"], ignore_index=True)
    if s.empty:
        raise ValueError("pick_videos: no video with a score")
    return {"best": s.video.iloc[-1], "median": s.video.iloc[(len(s) - 1) // 2], "worst": s.video.iloc[0]}


# --------------------------------------------------------------------------- data and features
def dataset_table(index: pd.DataFrame) -> pd.DataFrame:
    """Videos, frames, frames with a face crop and annotated frames per split (+ total)."""
    g = index.groupby("split", sort=False).agg(videos=("video", "count"), frames=("n_frames", "sum"),
                                               face_crops=("n_frames_on_disk", "sum"),
                                               annotated=("n_annotated", "sum"))
    g = g.reindex([s for s in ("train", "validation", "test") if s in g.index])
    g.loc["total"] = g.sum()
    g["faces %"] = (100 * g.face_crops / g.frames).round(1)
    return g


def load_labels(index: pd.DataFrame, splits=("train", "validation")) -> pd.DataFrame:
    """All annotated frames of ``splits``: video, split, frame (1-based), valence, arousal (-5 dropped)."""
    from mambava.data.affwild2 import read_annotation

    parts = []
    for r in index[index.split.isin(splits) & (index.annotation != "")].itertuples():
        lab = read_annotation(r.annotation)
        keep = label_mask(lab).all(axis=1)
        parts.append(pd.DataFrame({"video": r.video, "split": r.split, "frame": np.flatnonzero(keep) + 1,
                                   "valence": lab[keep, 0], "arousal": lab[keep, 1]}))
    return pd.concat(parts, ignore_index=True)


def feature_sample(index: pd.DataFrame, features_dir: str | Path, split: str = "validation",
                   n_points: int = 3000, seed: int = 0, videos=None) -> tuple[np.ndarray, pd.DataFrame]:
    """Up to ``n_points`` annotated frames that had a face, drawn evenly from ``split`` (or from
    ``videos`` when given): (features (n, dim) float32, table video/frame/valence/arousal)."""
    from mambava.data.affwild2 import read_annotation
    from mambava.features.extract import load_features

    feats, rows = [], []
    pick_rows = index.video.isin(set(videos)) if videos is not None else index.split == split
    for r in index[pick_rows & (index.annotation != "")].itertuples():
        x, mask = load_features(features_dir, r.video)
        lab = read_annotation(r.annotation)
        n = min(len(x), len(lab))
        keep = np.flatnonzero(mask[:n] & label_mask(lab[:n]).all(axis=1))
        feats.append(np.asarray(x[keep], dtype=np.float32))
        rows.append(pd.DataFrame({"video": r.video, "frame": keep + 1, "valence": lab[keep, 0],
                                  "arousal": lab[keep, 1]}))
    X, meta = np.concatenate(feats), pd.concat(rows, ignore_index=True)
    if len(X) > n_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(X), n_points, replace=False))
        X, meta = X[pick], meta.iloc[pick].reset_index(drop=True)
    return X, meta


def project_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Standardise and project to 2-D with PCA (deterministic; t-SNE/UMAP would be slower and
    would need their own tuning)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    return PCA(n_components=2, random_state=seed).fit_transform(StandardScaler().fit_transform(X))


def linear_probe_r2(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Held-out CCC of a ridge regression from features to one label, grouped 3-fold by video:
    how linearly readable the label is from single-frame features."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.zeros(len(y))
    n_splits = min(3, len(np.unique(groups)))
    for tr, te in GroupKFold(n_splits=n_splits).split(X, y, groups):
        m = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(X[tr], y[tr])
        pred[te] = m.predict(X[te])
    return ccc(pred, y)


# --------------------------------------------------------------------------- long sequences
LENGTH_KEYS = ("seq_len", "length", "frames", "n_frames", "L")


def benchmark_records(path: str | Path) -> pd.DataFrame:
    """The records of a benchmark JSON that have a sequence length (a key in LENGTH_KEYS), from
    wherever they sit in the file (a list at the top, or lists inside objects), flattened, with
    a ``seq_len`` column and ``group`` = the key path of their list."""
    obj = json.loads(Path(path).read_text())
    rows = []

    def walk(node, where):
        if isinstance(node, list):
            for r in node:
                if isinstance(r, dict) and any(k in r for k in LENGTH_KEYS):
                    flat = _flat(r)
                    flat["seq_len"] = next(r[k] for k in LENGTH_KEYS if k in r)
                    rows.append({"group": where, **flat})
                else:
                    walk(r, where)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else k)

    walk(obj, "")
    return pd.DataFrame(rows)


def load_window_sweep(runs: str | Path, variant: str) -> pd.DataFrame:
    """CCC against inference window length for every fold of ``variant``: the ``window_sweep.csv``
    beside each fold's metrics (columns window, ccc_valence, ccc_arousal, p_va; window "whole" or
    <= 0 = the whole video in one pass), with a ``fold`` column; window_frames is numeric with the
    whole video as +inf."""
    parts = []
    for r in discover_runs(runs).itertuples():
        if r.variant != variant:
            continue
        f = Path(r.path) / "window_sweep.csv"
        if not f.exists():
            raise FileNotFoundError(f"{f}: no window sweep (the evaluate stage writes it)")
        parts.append(pd.read_csv(f, dtype={"window": str}).assign(fold=r.fold))
    df = pd.concat(parts, ignore_index=True)
    num = pd.to_numeric(df.window, errors="coerce")
    df["whole"] = num.isna() | (num <= 0)
    df["window_frames"] = num.where(~df.whole, np.inf)
    return df


# --------------------------------------------------------------------------- the twin, explained
def mean_expression(valence: float, arousal: float) -> dict[str, float]:
    """The drawing parameters of a face at rest (not blinking, not talking) at (valence, arousal):
    the means of mambava.data.synthetic.expression_track without its frame noise and drifts
    (tests check them against expression_track). For the book's valence / arousal sweeps."""
    return {"mouth_curve": 0.85 * valence, "brow_tilt": -0.7 * valence,
            "eye_open": 0.62 + 0.18 * arousal, "mouth_open": 0.05 + 0.08 * arousal}


def docstring_markdown(doc: str, level: int = 3) -> str:
    """A module docstring (reST-ish: ``code``, **bold**, underlined titles) as Markdown, with its
    first line dropped and underlined titles turned into headings of ``level``."""
    lines = doc.strip("\n").splitlines()[1:]
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and nxt.strip() and set(nxt.strip()) <= set("-=~^") and len(nxt.strip()) >= 3:
            out.append("#" * level + " " + line.strip())
            i += 2
            continue
        out.append(re.sub(r":[a-z]+:`", "`", line.replace("``", "`")))
        i += 1
    return "\n".join(out).strip() + "\n"


# --------------------------------------------------------------------------- reproducibility
def pipeline_stages(dvc_yaml: str | Path = "dvc.yaml", params_yaml: str | Path = "params.yaml") -> pd.DataFrame:
    """The stages of ``dvc_yaml`` as DVC itself expands them (``dvc.repo.Repo(root).index.stages``:
    ``${...}`` interpolated, matrix/foreach instances listed): stage (DVC's name, e.g.
    ``train@mae-frame``), base (the name in dvc.yaml), cmd (commands joined by `` && ``), deps
    (files and folders; the params are not listed), outs (with metrics and plots outputs) as lists
    of paths.

    DVC reads the ``params.yaml`` beside ``dvc.yaml`` (its default); ``params_yaml`` must be that
    file. The folder needs no ``.dvc`` (it is opened uninitialized) and nothing is written."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    dvc_yaml = Path(dvc_yaml).resolve()
    root = dvc_yaml.parent
    if dvc_yaml.name != "dvc.yaml":
        raise ValueError(f"{dvc_yaml}: DVC reads pipelines from a file named dvc.yaml")
    if Path(params_yaml).resolve() != root / "params.yaml":
        raise ValueError(f"{params_yaml}: DVC interpolates from {root / 'params.yaml'}; pass that file")
    rows = []
    with Repo(str(root), uninitialized=True) as repo:
        for st in repo.index.stages:
            if st.path != str(dvc_yaml):  # a .dvc file, not a pipeline stage
                continue
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd or [])
            rows.append({"stage": st.addressing.split(":")[-1], "base": st.name.split("@")[0], "cmd": cmd,
                         "deps": [d.def_path for d in st.deps if not isinstance(d, ParamsDependency)], "outs": [o.def_path for o in st.outs]})
    return pd.DataFrame(rows, columns=["stage", "base", "cmd", "deps", "outs"])


def pipeline_edges(stages: pd.DataFrame, collapse: bool = True) -> set[tuple[str, str]]:
    """(upstream, downstream) pairs: B depends on A when a dep of B is, contains or lies inside an
    out of A. With ``collapse``, matrix/foreach stages are merged under their base name."""
    def norm(p):
        return p.rstrip("/")

    def related(dep, out):
        d, o = norm(dep), norm(out)
        return d == o or d.startswith(o + "/") or o.startswith(d + "/")

    edges = set()
    key = "base" if collapse else "stage"
    for a in stages.itertuples():
        for b in stages.itertuples():
            if a.stage != b.stage and any(related(d, o) for d in b.deps for o in a.outs):
                if getattr(a, key) != getattr(b, key):
                    edges.add((getattr(a, key), getattr(b, key)))
    return edges


def flatten_params(cfg) -> pd.DataFrame:
    """A Config (pydantic) as a table of dotted keys and values, without the profile overlays."""
    d = _flat(cfg.model_dump(exclude={"profiles"}))
    return pd.DataFrame({"parameter": list(d), "value": [str(v) for v in d.values()]})


def environment() -> pd.DataFrame:
    """Versions of Python, the platform and the packages the study relies on."""
    import platform
    from importlib import metadata

    rows = [("python", platform.python_version()), ("platform", platform.platform()),
            ("machine", platform.machine()), ("cpu count", str(os.cpu_count()))]
    for pkg in ("mambava", "torch", "timm", "numpy", "numba", "pandas", "scikit-learn", "scipy", "matplotlib",
                "seaborn", "dvc", "papermill", "jupyter-book", "mamba-ssm"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    try:
        import torch

        rows.append(("cuda available", str(torch.cuda.is_available())))
        if torch.cuda.is_available():
            rows.append(("gpu", torch.cuda.get_device_name(0)))
    except ImportError:  # pragma: no cover
        pass
    return pd.DataFrame(rows, columns=["component", "version"])


# --------------------------------------------------------------------------- the signal ladder
LEVEL_LABELS = {"ceiling": "label ceiling", "oracle": "oracle features", "mae": "MAE features"}


def protocol_note(cfg) -> str:
    """One paragraph saying which protocol made the numbers (Markdown)."""
    if cfg.protocol == "clean":
        return ("**Protocol: clean** (the default). The MAE encoder was fine-tuned on the labels of "
                f"{cfg.folds.encoder_fraction:.0%} of the official training groups, drawn with seed "
                f"{cfg.folds.seed}; those videos train every fold and validate none, so no label of a video "
                "that scores a model reached that model, features included. Fold 0 is the official split; "
                "folds 1-5 validate on the remaining training and validation videos.")
    return ("**Protocol: paper** (the authors'). The MAE encoder was fine-tuned on the labels of every "
            "official training video, and folds 1-5 validate on those videos too: their features were "
            "made with their own labels, so folds 1-5 are optimistic. The test split and fold 0 are clean.")


def _cell(r) -> str:
    return fmt_ci(r.ccc, r.lo, r.hi)


def ladder_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Rows: variant; columns: (rung, target) 'CCC [lo, hi]' and the seed spread, one split."""
    t = table[table.split == split].copy()
    t["cell"] = [_cell(r) for r in t.itertuples()]
    ceil = t[t.level == "ceiling"]
    body = t[t.level != "ceiling"]
    wide = body.pivot_table(index="variant", columns=["level", "target"], values="cell", aggfunc="first")
    order = [v for v in VARIANTS if v in wide.index]
    wide = wide.reindex(order)
    levels = [lv for lv in ("oracle", "mae") if lv in wide.columns.get_level_values(0)]
    wide = wide[[(lv, tg) for lv in levels for tg in ("valence", "arousal")]]
    wide.columns = [f"{LEVEL_LABELS[lv]}: {tg}" for lv, tg in wide.columns]
    sd = body.pivot_table(index="variant", columns=["level", "target"], values="seed_sd").reindex(order)
    for lv in levels:
        wide[f"seed s.d. ({lv}: v / a)"] = [f"{sd.loc[v, (lv, 'valence')]:.3f} / {sd.loc[v, (lv, 'arousal')]:.3f}"
                                           for v in order]
    wide.index = [VARIANT_LABELS.get(v, v) for v in order]
    if len(ceil):
        row = {c: "" for c in wide.columns}
        for r in ceil.itertuples():
            for lv in levels:
                row[f"{LEVEL_LABELS[lv]}: {r.target}"] = _cell(r)
        wide.loc["label ceiling (latent vs labels)"] = row
    return wide


def ladder_shares(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """oracle / ceiling and MAE / oracle per variant and target (point estimates)."""
    t = table[table.split == split]
    rows = []
    ceil = {r.target: r.ccc for r in t[t.level == "ceiling"].itertuples()}
    for v in [v for v in VARIANTS if v in set(t.variant)]:
        row = {"variant": VARIANT_LABELS.get(v, v)}
        for tg in ("valence", "arousal"):
            o = t[(t.variant == v) & (t.level == "oracle") & (t.target == tg)].ccc
            m = t[(t.variant == v) & (t.level == "mae") & (t.target == tg)].ccc
            if len(o) and tg in ceil:
                row[f"oracle / ceiling: {tg}"] = round(float(o.iloc[0]) / ceil[tg], 3)
            if len(o) and len(m):
                row[f"MAE / oracle: {tg}"] = round(float(m.iloc[0]) / float(o.iloc[0]), 3)
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def comparison_table(comp: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Paired differences a - b (mean over folds and seeds) with intervals; 'holds' when the
    interval excludes 0."""
    c = comp[comp.split == split].copy()
    if c.empty:
        return pd.DataFrame()
    c["difference [95% CI]"] = [fmt_ci(r.diff, r.lo, r.hi) for r in c.itertuples()]
    c["excludes 0"] = np.where((c.lo > 0) | (c.hi < 0), "yes", "no")
    c["comparison"] = [f"{VARIANT_LABELS.get(a, a)} - {VARIANT_LABELS.get(b, b)}" for a, b in zip(c.a, c.b)]
    c["rung"] = c.level.map(LEVEL_LABELS)
    return c.set_index(["rung", "comparison", "target"])[["difference [95% CI]", "excludes 0"]]
