"""What the book's pages load besides the run tables: the data and its features, the long-sequence
benchmarks and the context sweep, the twin's generative process, the software environment.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.metrics import ccc, label_mask
from mambava.results import _flat, discover_runs

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
    from mambava.features.store import load_features

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
