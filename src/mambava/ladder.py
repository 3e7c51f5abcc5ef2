"""The signal ladder: where the valence/arousal signal is lost, measured on the twin.

Three rungs, valence and arousal separately, for every variant (``mambava.data.oracle``):

- ``ceiling``: the twin's latent state at label time against the labels (annotator noise only);
- ``oracle``: the temporal models trained and scored like the real run on the parameters the twin
  rendered into each frame (a perfect frame encoder);
- ``mae``: the same on the MAE features.

Every number is a mean over the folds' models and their seeds, with a 95% interval from a
two-level bootstrap: the scored videos are resampled (the same draw for every run, so that
paired comparisons are paired), and each fold's seeds are resampled with replacement, so the
interval holds both video and seed variance. CCCs are computed from per-video sufficient
statistics (frames, sums, sums of squares and cross-products), so a resample costs a matrix
product instead of a pass over the frames.

:func:`compare` gives paired differences between two (variant, level) cells under the same
bootstrap: the ladder's claims (e.g. "Mamba beats the frame-only model on arousal") are
intervals of differences that exclude 0, or they are not made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("mambava.ladder")

TARGETS = ("valence", "arousal")
SPLITS = ("test", "validation")


# --------------------------------------------------------------------------- sufficient statistics
def video_stats(pred: pd.DataFrame, videos) -> np.ndarray:
    """(len(videos), 2, 6) per-video statistics of (prediction x, truth y) for valence and arousal:
    n, Σx, Σy, Σx², Σy², Σxy over the annotated frames (truth != -5). Videos absent: zeros."""
    out = np.zeros((len(videos), 2, 6))
    pos = {v: i for i, v in enumerate(videos)}
    for video, g in pred.groupby("video", sort=False):
        if video not in pos:
            continue
        for j, t in enumerate(TARGETS):
            y = g[f"{t}_true"].to_numpy(np.float64)
            x = g[t].to_numpy(np.float64)
            k = y != -5
            x, y = x[k], y[k]
            out[pos[video], j] = (len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    return out


def ccc_from_stats(s: np.ndarray) -> np.ndarray:
    """CCC from summed statistics (..., 6) -> (...); the population (biased) moments of the formula
    CCC = 2 cov / (var_x + var_y + (mean_x - mean_y)^2), over all frames pooled."""
    n = s[..., 0]
    mx, my = s[..., 1] / n, s[..., 2] / n
    vx, vy = s[..., 3] / n - mx * mx, s[..., 4] / n - my * my
    cov = s[..., 5] / n - mx * my
    return 2 * cov / (vx + vy + (mx - my) ** 2)


# --------------------------------------------------------------------------- runs on disk
def run_predictions(runs: str | Path, variant: str, fold: int, split: str) -> list[Path]:
    """The prediction files of every seed of one (variant, fold): the primary seed first."""
    d = Path(runs) / variant / f"fold{fold}"
    sub = "test/predictions.csv" if split == "test" else "predictions.csv"
    files = [d / sub] + sorted(p / sub for p in d.glob("seed*") if p.is_dir())
    return [f for f in files if f.exists()]


def collect(runs: str | Path, variants, folds, split: str, videos_of_fold) -> dict:
    """{variant: [per fold: (n_seeds, n_videos_of_fold, 2, 6) stats]} for one level and split."""
    out = {}
    for v in variants:
        per_fold = []
        for f in folds:
            files = run_predictions(runs, v, f, split)
            if not files:
                break
            vids = videos_of_fold(f)
            per_fold.append(np.stack([video_stats(pd.read_csv(p, dtype={"video": str}), vids) for p in files]))
        if len(per_fold) == len(folds):
            out[v] = per_fold
    return out


# --------------------------------------------------------------------------- bootstrap
def _draws(n_folds_videos: list[int], n_seeds: list[int], n_boot: int, seed: int, shared: bool):
    """Resampling weights: per fold, video counts (n_boot, n_videos) and seed picks (n_boot, n_seeds)."""
    rng = np.random.default_rng(seed)
    if shared:  # the test split: one video draw for every fold
        c = rng.multinomial(n_folds_videos[0], np.full(n_folds_videos[0], 1 / n_folds_videos[0]), size=n_boot)
        vcounts = [c] * len(n_folds_videos)
    else:
        vcounts = [rng.multinomial(n, np.full(n, 1 / n), size=n_boot) for n in n_folds_videos]
    picks = [rng.integers(0, s, size=(n_boot, s)) for s in n_seeds]
    return vcounts, picks


def cell_scores(per_fold: list[np.ndarray], vcounts, picks) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate (2,) and bootstrap replicates (n_boot, 2) of the mean over folds and seeds."""
    point = np.mean([ccc_from_stats(st.sum(axis=1)).mean(axis=0) for st in per_fold], axis=0)
    reps = []
    for st, c, pk in zip(per_fold, vcounts, picks):
        # (seeds, boot, 2, 6): every seed's statistics under every video draw
        tot = np.einsum("bv,svjk->sbjk", c.astype(np.float64), st)
        cc = ccc_from_stats(tot)  # (seeds, boot, 2)
        b = np.arange(cc.shape[1])
        reps.append(cc[pk.T, b[None, :]].mean(axis=0))  # resampled seeds, averaged: (boot, 2)
    return point, np.mean(reps, axis=0)


def seed_spread(per_fold: list[np.ndarray]) -> np.ndarray:
    """Mean over folds of the standard deviation across seeds (2,): the seed spread."""
    return np.mean([ccc_from_stats(st.sum(axis=1)).std(axis=0, ddof=1) if len(st) > 1 else np.zeros(2)
                    for st in per_fold], axis=0)


# --------------------------------------------------------------------------- the ladder
def build(levels: dict[str, str | Path], variants, folds, fold_videos: dict, test_videos, ceiling: dict | None,
          n_boot: int = 1000, seed: int = 0, level_ci: float = 0.95) -> tuple[pd.DataFrame, dict]:
    """The ladder table and the bootstrap replicates behind it.

    levels: {level: runs root}; fold_videos: {fold: validation videos}; ceiling: {split: (point (2,),
    replicates (n_boot, 2))} or None. Returns (table with columns split, level, variant, target,
    ccc, lo, hi, seed_sd, n_seeds; {(split, level, variant): replicates}).
    """
    alpha = (1 - level_ci) / 2
    rows, reps = [], {}
    for split in SPLITS:
        vids = (lambda f: list(test_videos)) if split == "test" else (lambda f: list(fold_videos[f]))
        for level, runs in levels.items():
            cells = collect(runs, variants, folds, split, vids)
            if not cells:
                continue
            any_cell = next(iter(cells.values()))
            vcounts, _ = _draws([st.shape[1] for st in any_cell], [1] * len(any_cell), n_boot, seed, split == "test")
            for v, per_fold in cells.items():
                _, picks = _draws([st.shape[1] for st in per_fold], [st.shape[0] for st in per_fold], n_boot,
                                  seed + 1 + list(variants).index(v), split == "test")
                point, r = cell_scores(per_fold, vcounts, picks)
                reps[(split, level, v)] = r
                sd = seed_spread(per_fold)
                for j, t in enumerate(TARGETS):
                    lo, hi = np.nanquantile(r[:, j], [alpha, 1 - alpha])
                    rows.append({"split": split, "level": level, "variant": v, "target": t, "ccc": point[j],
                                 "lo": lo, "hi": hi, "seed_sd": sd[j], "n_seeds": int(min(st.shape[0] for st in per_fold)),
                                 "n_folds": len(per_fold)})
        if ceiling and split in ceiling:
            point, r = ceiling[split]
            reps[(split, "ceiling", "all")] = r
            for j, t in enumerate(TARGETS):
                lo, hi = np.nanquantile(r[:, j], [alpha, 1 - alpha])
                rows.append({"split": split, "level": "ceiling", "variant": "all", "target": t, "ccc": point[j],
                             "lo": lo, "hi": hi, "seed_sd": 0.0, "n_seeds": 0, "n_folds": 0})
    return pd.DataFrame(rows), reps


def compare(reps: dict, table: pd.DataFrame, a: tuple[str, str, str], b: tuple[str, str, str],
            level_ci: float = 0.95) -> dict:
    """Paired difference a - b of two cells (split, level, variant) on valence and arousal, with
    the interval of the replicate differences (same video draws; seeds drawn independently)."""
    alpha = (1 - level_ci) / 2
    d = reps[a] - reps[b]
    out = {}
    for j, t in enumerate(TARGETS):
        pa = table.query("split == @a[0] and level == @a[1] and variant == @a[2] and target == @t").ccc.item()
        pb = table.query("split == @b[0] and level == @b[1] and variant == @b[2] and target == @t").ccc.item()
        lo, hi = np.nanquantile(d[:, j], [alpha, 1 - alpha])
        out[t] = {"diff": pa - pb, "lo": float(lo), "hi": float(hi)}
    return out


def ceiling_replicates(index: pd.DataFrame, truth: str | Path, fold_sets, n_boot: int, seed: int, shared: bool):
    """The label ceiling as (point (2,), replicates (n_boot, 2)): the mean over ``fold_sets`` (lists
    of videos) of the CCC of the latent at label time against the labels, under the ladder's
    video bootstrap (``shared``: one draw for all sets, as for the test split)."""
    from mambava.data.oracle import latent_and_labels

    per_fold = []
    for videos in fold_sets:
        frames = []
        for v in videos:
            at_label, lab = latent_and_labels(index, truth, v)
            frames.append(pd.DataFrame({"video": v, "valence": at_label[:, 0], "arousal": at_label[:, 1],
                                        "valence_true": lab[:, 0], "arousal_true": lab[:, 1]}))
        per_fold.append(video_stats(pd.concat(frames), list(videos))[None])  # one "seed"
    vcounts, picks = _draws([st.shape[1] for st in per_fold], [1] * len(per_fold), n_boot, seed, shared)
    return cell_scores(per_fold, vcounts, picks)


# --------------------------------------------------------------------------- the stage
COMPARISONS = (  # (a, b): the ladder's claims about context, on arousal and valence
    ("mamba_va", "frame"), ("mamba_va", "no_mamba"), ("no_tcn", "frame"), ("no_tcn", "no_mamba"),
    ("transformer", "no_mamba"), ("mamba_va", "transformer"), ("no_mamba", "frame"),
)


def run(cfg) -> dict:
    """The ``ladder`` stage: outputs/ladder/{ladder.csv, comparisons.csv, ladder.json, ladder.png}."""
    from mambava.models import VARIANTS
    from mambava.data.affwild2 import load_index
    from mambava.data.oracle import truth_dir
    from mambava.data.windows import fold_videos, read_folds
    from mambava.runtime import level_skipped

    out = Path(cfg.ladder.out)
    out.mkdir(parents=True, exist_ok=True)
    why = level_skipped(cfg, "oracle")
    index = load_index(cfg.data.index)
    folds_df = read_folds(cfg.folds.file)
    k = int(folds_df["cv_fold"].max())
    folds = list(range(k + 1))
    fvids = {f: fold_videos(folds_df, f)[1] for f in folds}
    test = list(index.loc[index["split"] == "test", "video"])
    levels = {"mae": Path(cfg.evaluate.out) / "mae"}
    ceiling = None
    n_boot, seed = cfg.book.n_boot, cfg.evaluate.boot_seed
    if why:
        log.warning("ladder: oracle and ceiling rungs skipped: %s", why)
    else:
        levels = {"oracle": Path(cfg.evaluate.out) / "oracle", **levels}
        td = truth_dir(cfg)
        ceiling = {"test": ceiling_replicates(index, td, [test] * len(folds), n_boot, seed, True),
                   "validation": ceiling_replicates(index, td, [fvids[f] for f in folds], n_boot, seed, False)}
    table, reps = build(levels, VARIANTS, folds, fvids, test, ceiling, n_boot, seed, cfg.evaluate.level)
    return write(out, table, comparisons(reps, table, cfg.evaluate.level), skipped=why)


def comparisons(reps: dict, table: pd.DataFrame, level_ci: float = 0.95) -> pd.DataFrame:
    """Every pair of COMPARISONS present in ``reps``, per split and level: a - b with its interval."""
    rows = []
    for split, level in dict.fromkeys((k[0], k[1]) for k in reps):
        for a, b in COMPARISONS:
            if (split, level, a) in reps and (split, level, b) in reps:
                for t, d in compare(reps, table, (split, level, a), (split, level, b), level_ci).items():
                    rows.append({"split": split, "level": level, "a": a, "b": b, "target": t, **d})
    return pd.DataFrame(rows, columns=["split", "level", "a", "b", "target", "diff", "lo", "hi"])


def write(out: Path, table: pd.DataFrame, comp: pd.DataFrame, skipped: str | None = None) -> dict:
    """ladder.csv, comparisons.csv, ladder.json (flat, for `dvc metrics`) and ladder.png in ``out``."""
    from mambava.io import write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_csv(table.round(6), out / "ladder.csv")
    write_csv(comp.round(6), out / "comparisons.csv")
    flat = {f"{r.split}/{r.level}/{r.variant}/{r.target}": round(float(r.ccc), 4) for r in table.itertuples()}
    if skipped:
        flat["skipped_oracle"] = skipped
    write_json(out / "ladder.json", flat)
    plot(table, out / "ladder.png")
    return flat


def plot(table: pd.DataFrame, path: Path) -> None:
    """Test-split ladder: one panel per target, a group of bars per variant (oracle, MAE), the
    ceiling as a line; error bars are the 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[table.split == "test"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    colours = {"oracle": "#4c72b0", "mae": "#dd8452"}
    for ax, target in zip(axes, TARGETS):
        part = t[t.target == target]
        ceil = part[part.level == "ceiling"]
        variants = [v for v in part.variant.unique() if v != "all"]
        x = np.arange(len(variants))
        for i, level in enumerate(["oracle", "mae"]):
            p = part[part.level == level].set_index("variant").reindex(variants)
            if p.ccc.isna().all():
                continue
            err = np.vstack([p.ccc - p.lo, p.hi - p.ccc])
            ax.bar(x + (i - 0.5) * 0.38, p.ccc, 0.36, yerr=err, capsize=3, color=colours[level],
                   label={"oracle": "oracle features", "mae": "MAE features"}[level])
        if len(ceil):
            ax.axhline(ceil.ccc.item(), color="k", ls="--", lw=1, label="label ceiling")
        ax.set_xticks(x, variants, rotation=20)
        ax.set_title(f"{target}, test split")
        ax.set_ylim(min(0, float(part.lo.min()) - 0.05), 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("CCC (mean over folds and seeds, 95% CI)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from mambava.io import write_figure

    write_figure(fig, path, dpi=110)
    plt.close(fig)
