"""Small fake pipeline outputs in the layout the book reads (see mambava.report), for tests and
for developing the notebooks without running the pipeline. Nothing here is shown in the book.

    python tests/_fake_runs.py OUT_DIR [--index data/index.csv]

writes OUT_DIR/runs/<variant>/fold<k>/..., OUT_DIR/models/<level>/<variant>/fold0/seed<s>/dvclive/
(training logs, written with DVCLive), OUT_DIR/bench/*.json, OUT_DIR/mae_pretrain/...,
OUT_DIR/mae_finetune/..., and (with --index) OUT_DIR/features/<video>.npy for the index's
validation videos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.metrics import ccc_va

# How good each fake variant is: prediction = gain * truth + noise * smooth noise.
QUALITY = {"mamba_va": (0.8, 0.25), "no_tcn": (0.7, 0.35), "no_mamba": (0.75, 0.3), "transformer": (0.8, 0.28),
           "frame": (0.6, 0.45)}
COST = {"mamba_va": (120_000, 4.1, 310), "no_tcn": (60_000, 3.0, 250), "no_mamba": (90_000, 2.2, 200),
        "transformer": (150_000, 5.5, 520), "frame": (2_000, 0.4, 150)}


def _smooth(rng, n, tau=30.0):
    x = rng.normal(size=n + 200)
    k = np.exp(-np.arange(int(4 * tau)) / tau)
    y = np.convolve(x, k / np.sqrt((k**2).sum()), mode="same")[100:100 + n]
    return y


def fake_truth(rng, videos: dict[str, int]) -> pd.DataFrame:
    parts = []
    for v, n in videos.items():
        t = np.tanh(0.6 * np.stack([_smooth(rng, n, 60), _smooth(rng, n, 40)], 1) + rng.normal(0, 0.3, 2))
        t = np.round(t, 4)
        t[rng.integers(0, n // 2): rng.integers(n // 2, n)][:5] = -5.0  # a few unannotated frames
        parts.append(pd.DataFrame({"video": v, "frame": np.arange(1, n + 1),
                                   "valence_true": t[:, 0], "arousal_true": t[:, 1]}))
    return pd.concat(parts, ignore_index=True)


def fake_predictions(rng, truth: pd.DataFrame, gain: float, noise: float) -> pd.DataFrame:
    t = truth[["valence_true", "arousal_true"]].to_numpy()
    base = np.where(t == -5, 0.0, t)
    n = len(truth)
    p = np.clip(gain * base + noise * np.stack([_smooth(rng, n, 20), _smooth(rng, n, 20)], 1), -1, 1)
    df = truth[["video", "frame"]].copy()
    df["valence"], df["arousal"] = np.round(p[:, 0], 4), np.round(p[:, 1], 4)
    df["valence_true"], df["arousal_true"] = truth.valence_true.to_numpy(), truth.arousal_true.to_numpy()
    return df


def _write_run(d: Path, pred: pd.DataFrame, variant: str, extra: dict | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    pred.to_csv(d / "predictions.csv", index=False)
    true = pred[["valence_true", "arousal_true"]].to_numpy()
    s = ccc_va(pred[["valence", "arousal"]].to_numpy(), true) if (true != -5).any() else {}  # real test: counts only
    n_params, spe, mem = COST[variant]
    metrics = {**s, "n_frames": int(len(pred)), "n_params": n_params, "seconds_per_epoch": spe,
               "peak_memory_mb": mem, "device": "cpu", "scan_backend": "numba", **(extra or {})}
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))


def make_runs(out: Path, seed: int = 0, folds=range(6), videos_per_fold: int = 4,
              variants=tuple(QUALITY), frames=(200, 600), real: bool = False) -> Path:
    """Fake <out>/runs: validation predictions per variant and fold, test split for fold 0,
    a window sweep per fold. ``real``: as with real Aff-Wild2, the test frames have no labels
    (-5) and the index counts none. Returns the runs folder."""
    rng = np.random.default_rng(seed)
    runs = out / "runs"
    for k in folds:
        vids = {f"{100 + 10 * k + i}-30-640x360": int(rng.integers(*frames)) for i in range(videos_per_fold)}
        truth = fake_truth(rng, vids)
        for v in variants:
            d = runs / v / f"fold{k}"
            _write_run(d, fake_predictions(rng, truth, *QUALITY[v]), v)
            sweep = []
            for w in ("50", "100", "300", "500", "1000", "whole"):
                g = QUALITY[v][0] * (1 - 0.3 / (1 + (1e9 if w == "whole" else float(w)) / 150))
                s = 0.45 * g / 0.8 + rng.normal(0, 0.005)
                sweep.append({"window": w, "ccc_valence": s + 0.05, "ccc_arousal": s - 0.05, "p_va": s})
            pd.DataFrame(sweep).to_csv(d / "window_sweep.csv", index=False)
    # the test split, scored, with its ABAW submission; an index and a test list to check it against
    test_vids = {f"9{i:02d}-30-1280x720": int(rng.integers(*frames)) for i in range(5)}
    truth = fake_truth(rng, test_vids)
    if real:
        truth[["valence_true", "arousal_true"]] = -5.0
    for v in variants:
        for k in folds:
            d = runs / v / f"fold{k}" / "test"
            pred = fake_predictions(rng, truth, *QUALITY[v])
            _write_run(d, pred, v)
            sub = pd.DataFrame({"image_location": [f"{a}/{b:05d}.jpg" for a, b in zip(pred.video, pred.frame)],
                                "valence": pred.valence, "arousal": pred.arousal})
            sub.to_csv(d / "submission.txt", index=False, float_format="%.6f")
    root = out / "root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_set_release.txt").write_text("\n".join(test_vids) + "\n")
    pd.DataFrame([{"video": v, "split": "test", "n_frames": n, "n_frames_on_disk": n, "n_annotated": 0 if real else n,
                   "path": str(root / "cropped_aligned" / v), "annotation": ""} for v, n in test_vids.items()]
                 ).to_csv(out / "index.csv", index=False)
    return runs


def make_models(out: Path, seed: int = 0, variants=tuple(QUALITY), levels=("mae", "oracle"), folds=(0,),
                seeds=(42, 43, 44), epochs: int = 6, steps_per_epoch: int = 5) -> Path:
    """Fake training logs, written by real DVCLive (mambava.runlog.RunLog):
    <out>/models/<level>/<variant>/fold<k>/seed<s>/dvclive/. Validation CCCs rise towards the
    variant's QUALITY (higher with the oracle), the CCC loss falls. Returns the models folder."""
    from mambava.runlog import RunLog

    rng = np.random.default_rng(seed)
    models = out / "models"
    for level in levels:
        for v in variants:
            top = 0.45 * QUALITY[v][0] / 0.8 + (0.3 if level == "oracle" else 0.0)
            for k in folds:
                for s in seeds:
                    log = RunLog(models / level / v / f"fold{k}" / f"seed{s}", steps_per_epoch=steps_per_epoch)
                    for step in range(1, epochs * steps_per_epoch + 1):
                        t = step / steps_per_epoch
                        p = top * (1 - np.exp(-t / 1.5)) + rng.normal(0, 0.02)
                        log.log_step(step, 1e-3, 2 - 2 * p + abs(rng.normal(0, 0.08)), rng.uniform(0.2, 1.0))
                        if step % steps_per_epoch == 0:
                            cv, ca = p + 0.05 + rng.normal(0, 0.02), p - 0.05 + rng.normal(0, 0.02)
                            log.log_validation((step, t, cv, ca, (cv + ca) / 2))
                    log.end()
    return models


def make_ladder(out: Path, runs: Path, n_boot: int = 50) -> Path:
    """<out>/ladder: the ladder of the fake runs (MAE rung only: fakes have no twin truth), made by
    the library's own code, and a leakage.json as the leakage stage writes it."""
    from mambava.models import VARIANTS
    from mambava.ladder import build, comparisons, scored_splits, write

    folds = sorted(int(p.name.removeprefix("fold")) for p in (runs / "mamba_va").glob("fold*"))
    fvids = {k: sorted(pd.read_csv(runs / "mamba_va" / f"fold{k}" / "predictions.csv", dtype={"video": str}).video.unique())
             for k in folds}
    test = sorted(pd.read_csv(runs / "mamba_va" / "fold0" / "test" / "predictions.csv", dtype={"video": str}).video.unique())
    splits = scored_splits(pd.read_csv(out / "index.csv"))
    table, reps = build({"mae": runs}, VARIANTS, folds, fvids, test, None, n_boot, 0, splits=splits)
    write(out / "ladder", table, comparisons(reps, table))
    eff = {k: {"diff": 0.05, "lo": -0.01, "hi": 0.11} for k in ("ccc_valence", "ccc_arousal", "p_va")}
    (out / "leakage.json").write_text(json.dumps({
        "variant": "mamba_va", "leak_effect": {"n_leaked_videos": 4, "n_clean_videos": 5, **eff},
        "folds_1_5_paper_protocol": {"ccc_valence": 0.5, "ccc_arousal": 0.3, "p_va": 0.4},
        "folds_1_5_clean_protocol": {"ccc_valence": 0.45, "ccc_arousal": 0.25, "p_va": 0.35}}))
    return out / "ladder"


def make_params(out: Path, repo_params: Path, features: bool = False) -> Path:
    """A params file pointing at the fakes: <out>/params.yaml (runs, index and test list), or with
    ``features`` <out>/params_features.yaml (MAE outputs and features; the repository's index)."""
    import yaml

    p = yaml.safe_load(Path(repo_params).read_text())
    if features:
        p["mae_pretrain"]["out"] = str(out / "mae_pretrain")
        p["mae_finetune"]["out"] = str(out / "mae_finetune")
        p["features"]["dir"] = str(out / "features")
        name = "params_features.yaml"
    else:
        p["data"]["index"] = str(out / "index.csv")
        p["data"]["root"] = str(out / "root")
        p.setdefault("evaluate", {})["out"] = str(out / "runs")
        name = "params.yaml"
    (out / name).write_text(yaml.safe_dump(p, sort_keys=False))
    return out / name


def make_bench(out: Path) -> Path:
    d = out / "bench"
    d.mkdir(parents=True, exist_ok=True)
    recs = []
    for L in (1000, 10000, 100000):
        recs.append({"model": "mamba", "seq_len": L, "seconds": 2e-5 * L, "peak_memory_mb": 0.01 * L + 20})
        if L <= 10000:
            recs.append({"model": "transformer", "seq_len": L, "seconds": 1e-8 * L * L + 1e-5 * L,
                         "peak_memory_mb": 4e-6 * L * L + 20})
    (d / "bench_temporal.json").write_text(json.dumps({"machine": {"cores": 2}, "temporal": recs}, indent=2))
    return d


def make_features(out: Path, index_csv: Path, seed: int = 0) -> None:
    """Fake MAE outputs and features of the index's validation videos (features correlate with labels)."""
    from PIL import Image

    from mambava.data.affwild2 import load_index, read_annotation

    rng = np.random.default_rng(seed)
    for name in ("mae_pretrain", "mae_finetune"):
        (out / name).mkdir(parents=True, exist_ok=True)
    img = (rng.random((3 * 112, 8 * 112, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(out / "mae_pretrain" / "reconstructions.png")
    (out / "mae_pretrain" / "metrics.json").write_text(json.dumps(
        {"steps": 10, "mask_ratio": 0.75, "train_loss_first": 1.0, "train_loss_last": 0.6, "heldout_loss": 0.65}))
    (out / "mae_finetune" / "metrics.json").write_text(json.dumps(
        {"ccc_valence": 0.41, "ccc_arousal": 0.22, "p_va": 0.315, "n_frames": 1000, "freeze_blocks": 4}))
    fdir = out / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    index = load_index(index_csv)
    W = rng.normal(size=(2, 16))
    for r in index[index.split == "validation"].itertuples():
        lab = read_annotation(r.annotation)
        lab = np.where(lab == -5, 0, lab)
        x = lab @ W + rng.normal(0, 0.5, (len(lab), 16))
        np.save(fdir / f"{r.video}.npy", x.astype(np.float16))
        np.save(fdir / f"{r.video}.mask.npy", np.ones(len(lab), bool))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--index", type=Path, default=None)
    a = ap.parse_args()
    make_runs(a.out)
    make_models(a.out)
    make_bench(a.out)
    if a.index:
        make_features(a.out, a.index)
    make_params(a.out, Path("params.yaml"))
    if a.index:
        make_params(a.out, Path("params.yaml"), features=True)
    print(a.out)
