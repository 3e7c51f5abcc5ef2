"""What the book's notebooks compute: loading pipeline outputs and turning them into tables.

The notebooks in ``notebooks/`` only load, call these functions and plot (``from mambava import
report``), so everything that is a computation lives in the library, with tests. This module holds
the scores and paired comparisons and the pipeline table, and gives the notebooks, under one name,
what lives beside it: the run layout and its readers (:mod:`mambava.results`), the tables and the
paper's numbers (:mod:`mambava.tables`, ``paper_results.yaml``), and the data, benchmark and
environment pages' loaders (:mod:`mambava.book_data`).

CCCs shown in the book are recomputed from ``predictions.csv`` (the split's frames concatenated,
-5 excluded, as the challenge scores) and checked against ``metrics.json``; intervals are
video-level bootstrap percentile intervals (:func:`mambava.metrics.bootstrap_ccc`, scipy).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mambava.book_data import (  # noqa: F401  (the notebooks' one import: `from mambava import report`)
    LENGTH_KEYS,
    benchmark_records,
    dataset_table,
    docstring_markdown,
    environment,
    feature_sample,
    flatten_params,
    linear_probe_r2,
    load_labels,
    load_window_sweep,
    mean_expression,
    project_2d,
)
from mambava.metrics import bootstrap, bootstrap_ccc, ccc, ccc_va, ccc_va_from_stats, label_mask, per_video_stats
from mambava.models import VARIANT_LABELS, VARIANTS  # noqa: F401
from mambava.results import (  # noqa: F401
    CURVE_COLUMNS,
    METRIC_LABELS,
    METRICS,
    PRED_COLUMNS,
    discover_runs,
    epoch_means,
    load_metrics,
    load_predictions,
    load_training_curves,
    run_dir,
    training_curves,
)
from mambava.tables import (  # noqa: F401
    COST_COLUMNS,
    LEVEL_LABELS,
    PAPER_RESULTS,
    ablation_table,
    comparison_table,
    cost_columns,
    fmt_ci,
    ladder_shares,
    ladder_table,
    ladder_test_row,
    paper_results,
    paper_table1,
    paper_table2,
    pick_videos,
    protocol_note,
    table1,
    table2,
)


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


def pipeline_graph(stages: pd.DataFrame, collapse: bool = True):
    """The stage graph to draw: :func:`pipeline_edges` without the edges implied by longer paths
    (transitive reduction), every node with its ``layer`` (0 = no upstream; a node sits one layer
    below its deepest upstream). Nodes are inserted by (layer, name) and edges sorted, so the
    drawing does not depend on Python's hash seed (a set's order does)."""
    import networkx as nx

    key = "base" if collapse else "stage"
    full = nx.DiGraph()
    full.add_nodes_from(sorted(set(stages[key])))
    full.add_edges_from(sorted(pipeline_edges(stages, collapse)))
    reduced = nx.transitive_reduction(full)
    layer = {n: i for i, gen in enumerate(nx.topological_generations(full)) for n in gen}
    g = nx.DiGraph()
    for n in sorted(full.nodes, key=lambda n: (layer[n], n)):
        g.add_node(n, layer=layer[n])
    g.add_edges_from(sorted(reduced.edges))
    return g


def pipeline_layout(g) -> dict[str, tuple[float, float]]:
    """Positions for drawing :func:`pipeline_graph`: one row per layer (y = -layer), the nodes of a
    row in name order, centred and spread over x in [-1, 1] (the widest row fills it). Written out
    here because networkx's multipartite layout groups the nodes of a layer in a set, whose order
    follows the hash seed."""
    rows: dict[int, list[str]] = {}
    for n, d in g.nodes(data=True):
        rows.setdefault(d["layer"], []).append(n)
    widest = max((len(r) for r in rows.values()), default=1)
    step = 2.0 / max(1, widest - 1)
    return {n: ((i - (len(r) - 1) / 2) * step, -float(layer))
            for layer, r in rows.items() for i, n in enumerate(sorted(r))}
