"""The signal ladder: where the valence/arousal signal is lost, measured on the twin.

Three rungs, valence and arousal separately, for every variant (``mambava.data.oracle``):

- ``ceiling``: the twin's latent state at label time against the labels (annotator noise only);
- ``oracle``: the temporal models trained and scored like the real run on the parameters the twin
  rendered into each frame (a perfect frame encoder);
- ``mae``: the same on the features of the pipeline's frame encoder (the pixel path; "face-encoder
  features" on the pages, the paper's MAE features in the paper profile).

Every number is a mean over the folds' models and their seeds, with a 95% interval from a
two-level bootstrap (``scipy.stats.bootstrap``, percentile intervals as everywhere in the
project, see :mod:`mambava.metrics`): the scored videos are resampled (the same draw for every run, so that
paired comparisons are paired), and each fold's seeds are resampled with replacement, so the
interval holds both video and seed variance. CCCs are computed from per-video sufficient
statistics (frames, sums, sums of squares and cross-products), so a resample costs a sum
instead of a pass over the frames.

How the two levels go through scipy (:func:`cell_data`, :func:`cell_statistic`): the samples
given to ``scipy.stats.bootstrap`` are *indices*: first the video indices (one sample for the
test split, whose videos every fold scores, so one draw serves all folds; one per fold on the
validation split), then the seed indices of every fold with two or more seeds. scipy resamples
each sample independently with replacement, which is exactly "videos, and within each fold
seeds"; the statistic sums the drawn videos' statistics for every seed, takes the CCC, and
averages the drawn seeds and then the folds. scipy draws the samples in order from one
generator, video indices first, so every cell bootstrapped with the same seed gets the same
video draws: that is the shared draw that makes comparisons paired. A fold with a single seed
has no seed level (scipy needs two observations per sample, and a one-seed resample is the seed
itself). Seeds are not shared between cells: a paired difference a - b (:func:`compare`) is one
bootstrap of the statistic cell_a - cell_b over (videos, seeds of a, seeds of b), so a's and b's
seeds are drawn independently and the videos together.

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

from mambava.metrics import bootstrap, ccc_from_stats, per_video_stats

log = logging.getLogger("mambava.ladder")

TARGETS = ("valence", "arousal")
SPLITS = ("test", "validation")


# --------------------------------------------------------------------------- sufficient statistics
def video_stats(pred: pd.DataFrame, videos) -> np.ndarray:
    """(len(videos), 2, 6) per-video statistics of (prediction x, truth y) for valence and arousal:
    n, Σx, Σy, Σx², Σy², Σxy over the annotated frames (truth != -5). Videos absent: zeros."""
    out = np.zeros((len(videos), 2, 6))
    got, s = per_video_stats(pred[list(TARGETS)].to_numpy(np.float64),
                             pred[[f"{t}_true" for t in TARGETS]].to_numpy(np.float64), pred["video"].to_numpy())
    pos = {v: i for i, v in enumerate(videos)}
    for v, row in zip(got, s):
        if v in pos:
            out[pos[v]] = row
    return out


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
def _video_sets(per_fold: list[np.ndarray], shared: bool) -> list[int]:
    """Which video sample each fold reads: one for all when ``shared``, else one per fold."""
    return [0] * len(per_fold) if shared else list(range(len(per_fold)))


def cell_data(per_fold: list[np.ndarray], shared: bool) -> tuple[np.ndarray, ...]:
    """The samples scipy resamples for one cell (module doc): the video indices of each video set
    (one when ``shared``, else one per fold), then the seed indices of each fold. Samples of a
    single element (one video, one seed) are left out: their only resample is themselves."""
    sizes = [per_fold[0].shape[1]] if shared else [st.shape[1] for st in per_fold]
    return (*(np.arange(n) for n in sizes if n > 1), *(np.arange(st.shape[0]) for st in per_fold if st.shape[0] > 1))


def cell_statistic(per_fold: list[np.ndarray], shared: bool):
    """The vectorised statistic over :func:`cell_data`'s samples: mean over folds of the mean over
    the drawn seeds of the CCC of the drawn videos pooled. Returns (2, *batch) (valence, arousal)."""
    sets = _video_sets(per_fold, shared)
    sizes = [per_fold[0].shape[1]] if shared else [st.shape[1] for st in per_fold]
    n_vid = sum(n > 1 for n in sizes)

    def stat(*samples, axis=-1):
        drawn = iter(samples[:n_vid])
        vids = [next(drawn) if n > 1 else np.arange(n) for n in sizes]
        seeds = iter(samples[n_vid:])
        folds = []
        for f, st in enumerate(per_fold):
            cc = np.moveaxis(ccc_from_stats(st[:, vids[sets[f]]].sum(axis=-3)), 0, -1)  # (*batch, 2, seeds)
            if st.shape[0] > 1:
                pick = next(seeds)  # (*batch, seeds); cc has no batch axes when no video was drawn
                cc = np.take_along_axis(np.broadcast_to(cc, pick.shape[:-1] + cc.shape[-2:]), pick[..., None, :], axis=-1)
            folds.append(cc.mean(axis=-1))
        batch = np.broadcast_shapes(*(f.shape for f in folds))
        return np.moveaxis(np.mean([np.broadcast_to(f, batch) for f in folds], axis=0), -1, 0)

    stat.n_video_samples = n_vid
    return stat


def cell_bootstrap(per_fold: list[np.ndarray], shared: bool, n_boot: int, seed: int, level_ci: float = 0.95):
    """Point estimate (2,), interval bounds lo, hi (2,) and replicates (2, n_boot) of one cell."""
    data, stat = cell_data(per_fold, shared), cell_statistic(per_fold, shared)
    lo, hi, reps = bootstrap(data, stat, n_boot, seed, level_ci)
    return stat(*data), lo, hi, reps


def seed_spread(per_fold: list[np.ndarray]) -> np.ndarray:
    """Mean over folds of the standard deviation across seeds (2,): the seed spread."""
    return np.mean([ccc_from_stats(st.sum(axis=1)).std(axis=0, ddof=1) if len(st) > 1 else np.zeros(2)
                    for st in per_fold], axis=0)


# --------------------------------------------------------------------------- the ladder
def build(levels: dict[str, str | Path], variants, folds, fold_videos: dict, test_videos, ceiling: dict | None,
          n_boot: int = 1000, seed: int = 0, level_ci: float = 0.95, splits=SPLITS) -> tuple[pd.DataFrame, dict]:
    """The ladder table and the cells behind it.

    levels: {level: runs root}; fold_videos: {fold: validation videos}; ceiling: {split: per-fold
    statistics (one "seed" each, :func:`ceiling_stats`)} or None; splits: those to score (real
    Aff-Wild2: validation only, its test labels are not public). Returns (table with columns split,
    level, variant, target, ccc, lo, hi, seed_sd, n_seeds; {(split, level, variant): (per-fold
    statistics, shared video draw)}, what :func:`compare` bootstraps again, with ``n_boot`` and
    ``seed`` stored under the key "boot").
    """
    rows, reps = [], {}
    for split in splits:
        vids = (lambda f: list(test_videos)) if split == "test" else (lambda f: list(fold_videos[f]))
        for level, runs in levels.items():
            cells = collect(runs, variants, folds, split, vids)
            if not cells:
                continue
            for v, per_fold in cells.items():
                point, lo, hi, _ = cell_bootstrap(per_fold, split == "test", n_boot, seed, level_ci)
                reps[(split, level, v)] = (per_fold, split == "test")
                sd = seed_spread(per_fold)
                for j, t in enumerate(TARGETS):
                    rows.append({"split": split, "level": level, "variant": v, "target": t, "ccc": point[j],
                                 "lo": lo[j], "hi": hi[j], "seed_sd": sd[j], "n_seeds": int(min(st.shape[0] for st in per_fold)),
                                 "n_folds": len(per_fold)})
        if ceiling and split in ceiling:
            per_fold = ceiling[split]
            point, lo, hi, _ = cell_bootstrap(per_fold, split == "test", n_boot, seed, level_ci)
            reps[(split, "ceiling", "all")] = (per_fold, split == "test")
            for j, t in enumerate(TARGETS):
                rows.append({"split": split, "level": "ceiling", "variant": "all", "target": t, "ccc": point[j],
                             "lo": lo[j], "hi": hi[j], "seed_sd": 0.0, "n_seeds": 0, "n_folds": 0})
    reps["boot"] = (n_boot, seed)
    return pd.DataFrame(rows), reps


def compare(reps: dict, table: pd.DataFrame, a: tuple[str, str, str], b: tuple[str, str, str],
            level_ci: float = 0.95) -> dict:
    """Paired difference a - b of two cells (split, level, variant) on valence and arousal, with
    its bootstrap interval: one ``scipy.stats.bootstrap`` of cell_a - cell_b over the cells' video
    indices (the same draw as the cells' own intervals; both cells score the same videos) and
    each cell's own seed indices (drawn independently)."""
    (fa, shared), (fb, _) = reps[a], reps[b]
    n_boot, seed = reps["boot"]
    da, db = cell_data(fa, shared), cell_data(fb, shared)
    sa, sb = cell_statistic(fa, shared), cell_statistic(fb, shared)
    n_vid = sa.n_video_samples  # both cells score the same videos
    na = len(da) - n_vid

    def diff(*samples, axis=-1):
        vids = samples[:n_vid]
        return sa(*vids, *samples[n_vid:n_vid + na]) - sb(*vids, *samples[n_vid + na:])

    lo, hi, _ = bootstrap((*da, *db[n_vid:]), diff, n_boot, seed, level_ci)
    out = {}
    for j, t in enumerate(TARGETS):
        pa = table.query("split == @a[0] and level == @a[1] and variant == @a[2] and target == @t").ccc.item()
        pb = table.query("split == @b[0] and level == @b[1] and variant == @b[2] and target == @t").ccc.item()
        out[t] = {"diff": pa - pb, "lo": float(lo[j]), "hi": float(hi[j])}
    return out


def ceiling_stats(index: pd.DataFrame, truth: str | Path, fold_sets) -> list[np.ndarray]:
    """The label ceiling as a cell: per fold set (lists of videos), the (1, n_videos, 2, 6)
    statistics of the latent at label time against the labels (one "seed")."""
    from mambava.data.oracle import latent_and_labels

    per_fold = []
    for videos in fold_sets:
        frames = []
        for v in videos:
            at_label, lab = latent_and_labels(index, truth, v)
            frames.append(pd.DataFrame({"video": v, "valence": at_label[:, 0], "arousal": at_label[:, 1],
                                        "valence_true": lab[:, 0], "arousal_true": lab[:, 1]}))
        per_fold.append(video_stats(pd.concat(frames), list(videos))[None])  # one "seed"
    return per_fold


# --------------------------------------------------------------------------- the stage
def scored_splits(index: pd.DataFrame) -> tuple[str, ...]:
    """The splits the ladder scores: both, or only the validation folds when no test frame has a
    label (real Aff-Wild2: the test labels are not public)."""
    return SPLITS if int(index.loc[index["split"] == "test", "n_annotated"].sum()) else ("validation",)


COMPARISONS = (  # (a, b): the ladder's claims about context, on arousal and valence
    ("mamba_va", "frame"), ("mamba_va", "no_mamba"), ("no_tcn", "frame"), ("no_tcn", "no_mamba"),
    ("transformer", "no_mamba"), ("mamba_va", "transformer"), ("no_mamba", "frame"),
)


def run(cfg) -> dict:
    """The ``ladder`` stage: outputs/ladder/{ladder.csv, comparisons.csv, ladder.json, ladder.png},
    and the copy of ladder.png at ``ladder.figure``."""
    from mambava.variants import VARIANTS
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
    splits = scored_splits(index)
    if "test" not in splits:
        log.warning("ladder: test split skipped: its labels are not public (data.test_labels is null); "
                    "the ladder is on the validation folds")
    if why:
        log.warning("ladder: oracle and ceiling rungs skipped: %s", why)
    else:
        levels = {"oracle": Path(cfg.evaluate.out) / "oracle", **levels}
        td = truth_dir(cfg)
        ceiling = {"test": ceiling_stats(index, td, [test] * len(folds)),
                   "validation": ceiling_stats(index, td, [fvids[f] for f in folds])}
    table, reps = build(levels, VARIANTS, folds, fvids, test, ceiling, n_boot, seed, cfg.evaluate.level, splits)
    flat = write(out, table, comparisons(reps, table, cfg.evaluate.level), skipped=why)
    if cfg.ladder.figure:  # the front page's figure: README and the book's landing page show this copy
        from mambava.io import write_bytes

        write_bytes(cfg.ladder.figure, (out / "ladder.png").read_bytes())
    return flat


def comparisons(reps: dict, table: pd.DataFrame, level_ci: float = 0.95) -> pd.DataFrame:
    """Every pair of COMPARISONS present in ``reps``, per split and level: a - b with its interval."""
    rows = []
    for split, level in dict.fromkeys((k[0], k[1]) for k in reps if k != "boot"):
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
    """Test-split ladder (the validation folds' when the test split has no labels): one panel per
    target, a group of bars per variant (oracle, MAE), the ceiling as a line; error bars are the
    95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "test" if (table.split == "test").any() else "validation"
    t = table[table.split == split]
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
            xs = x + (i - 0.5) * 0.38
            ax.bar(xs, p.ccc, 0.36, color=colours[level],
                   label={"oracle": "oracle features", "mae": "face-encoder features"}[level])
            # the interval as a line with end marks (a percentile interval need not contain the mean)
            ax.vlines(xs, p.lo, p.hi, color="k", lw=1.2)
            ax.plot(np.r_[xs, xs], np.r_[p.lo, p.hi], "_", color="k", ms=7)
        if len(ceil):
            ax.axhline(ceil.ccc.item(), color="k", ls="--", lw=1, label="label ceiling")
        ax.set_xticks(x, variants, rotation=20)
        ax.set_title(f"{target}, {'test split' if split == 'test' else 'validation folds'}")
        ax.set_ylim(min(0, float(t.lo.min()) - 0.05), 1.0)  # shared y: the lowest end of either panel
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("CCC (mean over folds and seeds, 95% CI)")
    # beside the panels, where it cannot cover a bar or an interval
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    from mambava.io import write_figure

    write_figure(fig, path, dpi=110)
    plt.close(fig)
