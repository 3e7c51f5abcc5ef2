"""The book's tables: the paper's numbers beside ours (Tables 1 and 2), the ablation and ladder
tables, and their formatting. Inputs are the frames of :mod:`mambava.results` and
:mod:`mambava.report`; the paper's numbers come from one file, ``paper_results.yaml`` beside this
module (:func:`paper_results`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mambava.models import VARIANT_LABELS, VARIANTS
from mambava.results import METRIC_LABELS, METRICS

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")



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



# The cost columns of the Ablations page: the parameters (metrics.json) and the measured time and
# memory (train.timing.json), plus where the run ran.
COST_COLUMNS = ("n_params", "seconds_per_epoch", "peak_memory_mb", "peak_cuda_mb", "device", "scan_backend")



def cost_columns(metrics: pd.DataFrame) -> pd.DataFrame:
    """variant, fold and the COST_COLUMNS columns of load_metrics() (NaN where a run lacks one)."""
    out = metrics[["variant", "fold"]].copy()
    for name in COST_COLUMNS:
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



LEVEL_LABELS = {"ceiling": "label ceiling", "oracle": "oracle features", "mae": "face encoder"}  # level key mae: the pixel path (pixels -> frame encoder -> features)



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
    """One split of the ladder, long enough to read on a page: rows (rung, variant), the oracle
    rung first, then the face-encoder rung, then the label ceiling; columns 'CCC [lo, hi]' for valence and
    arousal and the seed spread (s.d. over seeds, valence / arousal)."""
    t = table[table.split == split]
    rows, index = [], []
    for lv in ("oracle", "mae", "ceiling"):
        part = t[t.level == lv]
        names = ["all"] if lv == "ceiling" else [v for v in VARIANTS if v in set(part.variant)]
        for v in names:
            cells = {tg: part[(part.variant == v) & (part.target == tg)] for tg in ("valence", "arousal")}
            if not all(len(c) for c in cells.values()):
                continue
            r = {f"{tg} [95% CI]": _cell(next(c.itertuples())) for tg, c in cells.items()}
            sd = [float(c.seed_sd.iloc[0]) for c in cells.values()]
            r["seed s.d. (v / a)"] = "" if lv == "ceiling" else f"{sd[0]:.3f} / {sd[1]:.3f}"
            rows.append(r)
            index.append((LEVEL_LABELS[lv], "latent vs labels" if lv == "ceiling" else VARIANT_LABELS.get(v, v)))
    out = pd.DataFrame(rows, columns=["valence [95% CI]", "arousal [95% CI]", "seed s.d. (v / a)"])
    out.index = pd.MultiIndex.from_tuples(index, names=["rung", "variant"])
    return out



def ladder_shares(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """oracle / ceiling and face encoder / oracle per variant and target (point estimates)."""
    t = table[table.split == split]
    rows = []
    ceil = {r.target: r.ccc for r in t[t.level == "ceiling"].itertuples()}
    for v in [v for v in VARIANTS if v in set(t.variant)]:
        row = {"variant": VARIANT_LABELS.get(v, v)}
        for tg in ("valence", "arousal"):
            o = t[(t.variant == v) & (t.level == "oracle") & (t.target == tg)].ccc
            m = t[(t.variant == v) & (t.level == "mae") & (t.target == tg)].ccc
            if len(o) and tg in ceil:
                row[(tg, "oracle / ceiling")] = round(float(o.iloc[0]) / ceil[tg], 3)
            if len(o) and len(m):
                row[(tg, "face encoder / oracle")] = round(float(m.iloc[0]) / float(o.iloc[0]), 3)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("variant")
    if len(out.columns):  # (target, share): short headers; none without an oracle rung (real data)
        out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out



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
