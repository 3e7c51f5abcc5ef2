"""Static images of the training logs and a table of every run's CCCs: the ``plots`` stage.

The training curves are DVCLive's (:mod:`mambava.runlog`; ``dvc plots show`` draws the primary
run's with Vega, from the copy that ``make install`` puts in ``.dvc/vega/``). The book needs
static images of every fold, so they are drawn here with matplotlib into PNG files:

- ``training_ccc.png``: validation P_VA against epoch, one panel per variant, one line per fold;
- ``training_loss.png``: training CCC loss against epoch, same layout;
- ``ccc_by_fold.png``: validation CCC_v / CCC_a of the best checkpoint, variant by fold;

and ``results.csv``: one row per (variant, fold) with the validation and test CCCs and
intervals (columns ``variant, fold, split, ccc_valence, ..., p_va_hi``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from mambava.io import write_csv, write_figure
from mambava.models import VARIANTS
from mambava.results import discover_runs

log = logging.getLogger("mambava.plots")

KEYS = ("ccc_valence", "ccc_arousal", "p_va", "ccc_valence_lo", "ccc_valence_hi", "ccc_arousal_lo",
        "ccc_arousal_hi", "p_va_lo", "p_va_hi", "n_frames", "n_videos")


def find_runs(runs: str | Path) -> list[tuple[str, int, Path]]:
    """(variant, fold, folder) of every evaluated run folder, variants in study order
    (:func:`mambava.results.discover_runs`; [] when there is none)."""
    try:
        found = discover_runs(runs)
    except FileNotFoundError:
        return []
    return [(r.variant, int(r.fold), Path(r.path)) for r in found.itertuples()]


def results_table(runs: str | Path) -> pd.DataFrame:
    rows = []
    for variant, fold, d in find_runs(runs):
        for split, f in (("validation", d / "metrics.json"), ("test", d / "test" / "metrics.json")):
            if f.exists():
                m = json.loads(f.read_text())
                rows.append({"variant": variant, "fold": fold, "split": split, **{k: m.get(k) for k in KEYS}})
    return pd.DataFrame(rows, columns=["variant", "fold", "split", *KEYS])


def _curves(runs, trained, read, column: str, ylabel: str, path: Path) -> None:
    """trained(variant, fold) -> the training run's folder; read(folder) -> its DVCLive log
    (:func:`mambava.runlog.read_steps` or ``read_evals``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = find_runs(runs)
    variants = list(dict.fromkeys(v for v, _, _ in found))
    fig, axes = plt.subplots(1, max(1, len(variants)), figsize=(3.6 * max(1, len(variants)), 3.0),
                             sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for v, fold, d in found:
            if v == variant:
                df = read(trained(v, fold))
                ax.plot(df["epoch"], df[column], label=f"fold {fold}", lw=1.2, alpha=0.85)
        ax.set_title(variant)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _bars(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = table[table.split == "validation"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, key, title in zip(axes, ("ccc_valence", "ccc_arousal"), ("valence", "arousal")):
        wide = val.pivot(index="fold", columns="variant", values=key)
        wide = wide[[v for v in VARIANTS if v in wide.columns] + [c for c in wide.columns if c not in VARIANTS]]
        wide.plot.bar(ax=ax, rot=0, width=0.8)
        ax.set_title(f"validation CCC, {title}")
        ax.set_xlabel("fold")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    write_figure(fig, path, dpi=120)


def run(cfg, out: str | Path = "outputs/plots") -> pd.DataFrame:
    """The ``plots`` stage: PNGs and results.csv of the MAE-feature runs (primary seed of each fold)."""
    from mambava.runlog import read_evals, read_steps
    from mambava.runtime import train_dir

    runs, out = Path(cfg.evaluate.out) / "mae", Path(out)
    if not find_runs(runs):
        raise FileNotFoundError(f"{runs}: no <variant>/fold<k>/metrics.json (run `dvc repro evaluate`)")

    def trained(variant: str, fold: int) -> Path:
        return train_dir(cfg, "mae", variant, fold, cfg.train.seed)

    table = results_table(runs)
    write_csv(table, out / "results.csv", float_format="%.6f")
    _curves(runs, trained, read_evals, "p_va", "validation P_VA", out / "training_ccc.png")
    _curves(runs, trained, read_steps, "loss", "training loss (2 - CCC_v - CCC_a)", out / "training_loss.png")
    if len(table):
        _bars(table, out / "ccc_by_fold.png")
    log.info("%s: results.csv and plots of %d runs", out, len(find_runs(runs)))
    return table
