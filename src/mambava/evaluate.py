"""Evaluation of every fold and seed of one (level, variant): the ``evaluate`` stage.

The best checkpoint of the run predicts every frame of every validation video of its fold and of
every test video (:func:`mambava.inference.predict_video`: whole videos in one pass, or the
authors' 500/500 windows, per ``evaluate.inference``; outputs clipped to [-1, 1]). Files written
in ``<evaluate.out>/<level>/<variant>/fold<k>/`` for the primary seed and its ``seed<s>/`` for the
others (:func:`mambava.runtime.eval_dir`; test files in ``test/``):

- ``predictions.csv`` and ``test/predictions.csv``: ``video, frame, valence, arousal,
  valence_true, arousal_true``; ``frame`` is 1-based (the image ``<frame:05d>.jpg``), truth -5
  where a frame is not annotated (every test frame of the real data);
- ``metrics.json`` and ``test/metrics.json``: flat, ``ccc_valence, ccc_arousal, p_va`` over all
  annotated frames of the split concatenated (the official way), ``n_frames`` (annotated frames
  scored), ``n_videos``, video-level bootstrap bounds ``<metric>_lo``/``<metric>_hi``, and the
  device, scan backend, inference, seed, versions and the training cost (parameters, seconds
  per epoch, peak memory, copied from ``train_metrics.json``); the test file has only counts
  when the test labels are not available;
- ``test/submission.txt``: the ABAW file, ``image_location,valence,arousal`` then
  ``<video>/<frame:05d>.jpg,v,a`` for every frame of every test video in the test list's order,
  checked by :func:`check_submission` before it is kept;
- ``window_sweep.csv``: validation CCCs with non-overlapping windows of each length in
  ``evaluate.sweep`` and with the whole video (``window`` = ``whole``): how much context helps.

The metrics are computed from the predictions as written (6 decimals) and read back, so
recomputing them from ``predictions.csv`` gives the same numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mambava import io
from mambava.data.windows import Video
from mambava.metrics import bootstrap_ccc, ccc_va, label_mask
from mambava.results import PRED_COLUMNS, load_predictions

log = logging.getLogger("mambava.evaluate")

SUBMISSION_HEADER = "image_location,valence,arousal"
DECIMALS = 6


# --------------------------------------------------------------------------- predictions
def predictions_frame(videos: Sequence[Video], preds: Sequence[np.ndarray]) -> pd.DataFrame:
    """One row per frame of every video, in video then frame order (columns PRED_COLUMNS)."""
    if len(videos) != len(preds):
        raise ValueError(f"{len(videos)} videos but {len(preds)} predictions")
    parts = []
    for v, p in zip(videos, preds):
        labels = np.asarray(v.labels, dtype=np.float64)
        if p.shape != labels.shape:
            raise ValueError(f"{v.name}: predictions {p.shape} vs labels {labels.shape}")
        parts.append(pd.DataFrame({
            "video": v.name,
            "frame": np.arange(1, len(p) + 1),
            "valence": p[:, 0].astype(np.float64),
            "arousal": p[:, 1].astype(np.float64),
            "valence_true": labels[:, 0],
            "arousal_true": labels[:, 1],
        }))
    if not parts:
        return pd.DataFrame(columns=PRED_COLUMNS)
    return pd.concat(parts, ignore_index=True)[PRED_COLUMNS]


def write_csv(df: pd.DataFrame, path: str | Path, float_format: str | None = f"%.{DECIMALS}f") -> None:
    """Write a table atomically, numbers with ``DECIMALS`` decimals (:func:`mambava.io.write_csv`)."""
    io.write_csv(df, path, float_format=float_format)


def score(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Flat metrics of a predictions table: CCCs over all annotated frames concatenated.

    Without any annotated frame (real test set) only the counts are returned.
    """
    pred = df[["valence", "arousal"]].to_numpy(np.float64)
    true = df[["valence_true", "arousal_true"]].to_numpy(np.float64)
    out: dict = {
        "n_frames": int(label_mask(true[:, 0]).sum()),
        "n_frames_arousal": int(label_mask(true[:, 1]).sum()),
        "n_frames_total": int(len(df)),
        "n_videos": int(df["video"].nunique()),
    }
    if out["n_frames"] == 0 or out["n_frames_arousal"] == 0:
        return out
    out.update(ccc_va(pred, true))
    if n_boot > 0:
        bounds = bootstrap_ccc(pred, true, df["video"].to_numpy(), n_boot=n_boot, seed=seed, level=level)
        for k, (lo, hi) in bounds.items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
    return out


# --------------------------------------------------------------------------- submission
def submission_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ABAW table (image_location, valence, arousal) of a test predictions table."""
    return pd.DataFrame({
        "image_location": df["video"] + "/" + df["frame"].map("{:05d}.jpg".format),
        "valence": df["valence"].to_numpy(),
        "arousal": df["arousal"].to_numpy(),
    })


def check_submission(path: str | Path, videos: Sequence[str], n_frames: Sequence[int]) -> list[str]:
    """Problems of an ABAW submission file: header, one row per frame of each video in order,
    numbers in [-1, 1]. Returns [] when the file is right; messages name file and line."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: file not found"]
    problems: list[str] = []
    with open(path) as f:
        header = f.readline().rstrip("\n")
        if header != SUBMISSION_HEADER:
            problems.append(f"{path}:1: header {header!r}, expected {SUBMISSION_HEADER!r}")
        expected = (f"{v}/{i:05d}.jpg" for v, n in zip(videos, n_frames) for i in range(1, n + 1))
        total = int(sum(n_frames))
        lineno = 1
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split(",")
            want = next(expected, None)
            if want is None:
                problems.append(f"{path}:{lineno}: more rows than the {total} test frames")
                break
            if len(parts) != 3:
                problems.append(f"{path}:{lineno}: {len(parts)} fields, expected 3")
            elif parts[0] != want:
                problems.append(f"{path}:{lineno}: {parts[0]!r}, expected {want!r}")
            else:
                try:
                    vals = [float(parts[1]), float(parts[2])]
                except ValueError:
                    problems.append(f"{path}:{lineno}: not numbers: {parts[1:]!r}")
                else:
                    if not all(-1.0 <= x <= 1.0 for x in vals):  # also false for nan
                        problems.append(f"{path}:{lineno}: values {vals} outside [-1, 1]")
            if len(problems) >= 20:
                problems.append(f"{path}: stopped after 20 problems")
                return problems
        rows = lineno - 1
        if rows < total:
            problems.append(f"{path}: {rows} rows, expected {total} (one per test frame)")
    return problems


def window_sweep(model, videos: Sequence[Video], device, windows: Sequence[int]) -> pd.DataFrame:
    """Validation CCCs with non-overlapping windows of each length, then the whole video."""
    from mambava.inference import predict_video

    true = np.concatenate([np.asarray(v.labels) for v in videos])
    rows = []
    was_training = model.training
    model.eval()
    for w in [*windows, None]:
        mode = "whole" if w is None else "windows"
        pred = np.concatenate([predict_video(model, v.features, device, mode, w or 1, w or 1) for v in videos])
        rows.append({"window": "whole" if w is None else str(w), **ccc_va(pred, true)})
    model.train(was_training)
    return pd.DataFrame(rows, columns=["window", "ccc_valence", "ccc_arousal", "p_va"])


# --------------------------------------------------------------------------- the stage
# What metrics.json copies from train_metrics.json; the measured costs (seconds per epoch, peak
# memory) stay in train.timing.json, which DVC does not hash (report.load_metrics joins them).
TRAIN_KEYS_COPIED = ("n_params", "best_epoch")


def _evaluate_split(model, videos, device, ecfg, path: Path) -> dict:
    from mambava.inference import predict_videos

    preds = predict_videos(model, videos, device, ecfg)
    write_csv(predictions_frame(videos, preds), path)
    return score(load_predictions(path), ecfg.n_boot, ecfg.boot_seed, ecfg.level)


def run(cfg, variant: str, fold: int, level: str = "mae", seed: int | None = None, cache: dict | None = None) -> dict:
    """Evaluate one (level, variant, fold, seed) (module doc). Returns the validation metrics."""
    from mambava.config import ModelConfig
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import fold_videos, read_folds
    from mambava.inference import load_videos, scan_backend
    from mambava.runtime import environment, eval_dir, level_features, load_best, resolve_device, set_threads, train_dir

    ecfg = cfg.evaluate
    seed = cfg.train.seed if seed is None else seed
    primary = seed == cfg.train.seed
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.device)
    src = train_dir(cfg, level, variant, fold, seed)
    out = eval_dir(cfg, level, variant, fold, seed)
    model, ck = load_best(src / "best.pt", device)
    feats = level_features(cfg, level)
    cache = {} if cache is None else cache
    if "index" not in cache:
        index = load_index(cfg.data.index)
        test = index[index["split"] == "test"]
        cache["index"] = index
        cache["test"] = load_videos(index, list(test["video"]), feats)
    index = cache["index"]
    if ("val", fold) not in cache:
        _, val_names = fold_videos(read_folds(cfg.folds.file), fold)
        cache[("val", fold)] = load_videos(index, val_names, feats)
    val_videos, test_videos = cache[("val", fold)], cache["test"]

    env = {
        "level": level, "variant": variant, "fold": fold, "inference": ecfg.inference,
        "window": ecfg.window if ecfg.inference == "windows" else 0, "best_step": int(ck.get("step", -1)),
        **environment(device, scan_backend(ModelConfig.model_validate(ck["model_cfg"]), device), seed),
    }
    val = _evaluate_split(model, val_videos, device, ecfg, out / "predictions.csv")
    cost_path = src / "train_metrics.json"
    cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
    cost = {k: cost[k] for k in TRAIN_KEYS_COPIED if k in cost}
    metrics = {**val, **env, **cost}
    io.write_json(out / "metrics.json", metrics)
    # the run's measured time and memory travel beside its metrics (a file DVC does not hash)
    io.write_timing(out, "train", io.read_timing(src, "train"))

    test_dir = out / "test"
    tm = _evaluate_split(model, test_videos, device, ecfg, test_dir / "predictions.csv")
    io.write_json(test_dir / "metrics.json", {**tm, **env})

    if primary:  # the submission and the context sweep are of the primary seed's model
        sub = submission_frame(load_predictions(test_dir / "predictions.csv"))
        with io.atomic_path(test_dir / "submission.txt", ".check") as tmp:  # kept only if it passes its check
            write_csv(sub, tmp)
            problems = check_submission(tmp, [v.name for v in test_videos], [len(v.labels) for v in test_videos])
            if problems:
                raise ValueError("submission failed its check:\n" + "\n".join(problems))
        sweep = window_sweep(model, val_videos, device, ecfg.sweep)
        write_csv(sweep, out / "window_sweep.csv", float_format=None)

    def fmt(m):
        return f"CCC_v {m['ccc_valence']:.4f} CCC_a {m['ccc_arousal']:.4f}" if "ccc_valence" in m else "no labels"

    log.info("%s %s/%s fold %d seed %d: validation %s; test %s", out, level, variant, fold, seed, fmt(val), fmt(tm))
    return {"validation": metrics, "test": {**tm, **env}}


_EVAL_CACHE: dict = {}  # per worker process: loaded videos


def _eval_job(args) -> dict:
    cfg, variant, level, fold, seed = args
    from mambava.runtime import inputs_key

    return run(cfg, variant, fold, level, seed, cache=_EVAL_CACHE.setdefault(inputs_key(cfg, level), {}))


def run_all(cfg, variant: str, level: str = "mae", folds: Sequence[int] | None = None) -> dict:
    """The ``evaluate`` stage of one (level, variant): every fold and seed that ``train`` wrote.
    Writes ``<evaluate.out>/<level>/<variant>.json``: validation and test CCCs of every fold and
    seed, flat keys (``fold0/seed42/test/p_va``) so that ``dvc metrics diff`` compares them."""
    from mambava.data.windows import read_folds
    from mambava.runtime import level_skipped, parallel_map, resolve_workers, seeds_of

    root = Path(cfg.evaluate.out) / level
    why = level_skipped(cfg, level)
    if why:
        log.warning("evaluate %s/%s skipped: %s", level, variant, why)
        (root / variant).mkdir(parents=True, exist_ok=True)
        io.write_json(root / f"{variant}.json", {"skipped": why})
        return {"skipped": why}
    if folds is None:
        folds = range(0, int(read_folds(cfg.folds.file)["cv_fold"].max()) + 1)
    jobs = [(fold, seed) for fold in folds for seed in seeds_of(cfg.train)]
    results = parallel_map(_eval_job, [(cfg, variant, level, f, s) for f, s in jobs], resolve_workers(cfg.train.workers))
    flat: dict = {}
    for (fold, seed), r in zip(jobs, results):
        for split, m in r.items():
            for key in ("ccc_valence", "ccc_arousal", "p_va"):
                if key in m:
                    flat[f"fold{fold}/seed{seed}/{split}/{key}"] = round(float(m[key]), 6)
    io.write_json(root / f"{variant}.json", flat)
    return flat
