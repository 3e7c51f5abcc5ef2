"""Evaluation: predictions, metrics recomputed independently, inference modes, the submission;
and the folds -> train -> evaluate stages end to end on a tiny project (stand-in model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambava.config import load_config
from mambava.data.affwild2 import write_annotation
from mambava.data.windows import Video
from mambava.evaluate import (
    SUBMISSION_HEADER,
    check_submission,
    predictions_frame,
    score,
    submission_frame,
    write_csv,
)
from mambava.inference import predict_video
from mambava.results import load_predictions

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TinyCausal, make_videos  # noqa: E402


def oracle_ccc(x, y):
    """CCC via Pearson's r: 2 r sx sy / (sx^2 + sy^2 + (mx - my)^2), frames with y == -5 dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = y != -5
    x, y = x[keep], y[keep]
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


# --------------------------------------------------------------------------- inference
def test_predict_video_whole_windows_and_clip():
    torch.manual_seed(0)
    model = TinyCausal(6, k=5).eval()
    f = np.random.default_rng(1).normal(size=(1234, 6)).astype(np.float16)
    whole = predict_video(model, f, torch.device("cpu"), "whole")
    win = predict_video(model, f, torch.device("cpu"), "windows", 500, 500)
    assert whole.shape == win.shape == (1234, 2) and whole.dtype == np.float32
    # a causal model with a 5-frame receptive field: windows differ from one pass only in the
    # first 4 frames after each window start (state reset), and the padded last window is exact
    diff = np.abs(whole - win).max(1) > 1e-6
    assert set(np.flatnonzero(diff)) <= {t + i for t in (500, 1000) for i in range(4)}
    np.testing.assert_allclose(whole[~diff], win[~diff], atol=1e-6)
    assert diff[500:504].any()
    # overlapping windows: a frame takes the first window covering it
    ov = predict_video(model, f, torch.device("cpu"), "windows", 500, 250)
    np.testing.assert_allclose(ov[:500], whole[:500], atol=1e-6)
    with torch.no_grad():
        model.head.weight.mul_(100)
    big = predict_video(model, f, torch.device("cpu"), "whole")
    assert big.min() == -1.0 and big.max() == 1.0


# --------------------------------------------------------------------------- metrics
def test_score_recomputed_from_saved_predictions(tmp_path):
    vids = make_videos(n_videos=5, seed=3)
    rng = np.random.default_rng(0)
    preds = [np.clip(np.where(v.labels == -5, 0, v.labels) + rng.normal(0, 0.4, v.labels.shape), -1, 1).astype(np.float32)
             for v in vids]
    write_csv(predictions_frame(vids, preds), tmp_path / "predictions.csv")
    df = load_predictions(tmp_path / "predictions.csv")
    assert list(df.columns) == ["video", "frame", "valence", "arousal", "valence_true", "arousal_true"]
    assert len(df) == sum(len(v.labels) for v in vids)
    assert (df.groupby("video")["frame"].min() == 1).all()
    assert (df["valence_true"] == -5).sum() == sum((v.labels[:, 0] == -5).sum() for v in vids)
    m = score(df, n_boot=200, seed=1)
    # recomputed independently from the file
    raw = pd.read_csv(tmp_path / "predictions.csv")
    assert m["ccc_valence"] == pytest.approx(oracle_ccc(raw.valence, raw.valence_true), abs=1e-12)
    assert m["ccc_arousal"] == pytest.approx(oracle_ccc(raw.arousal, raw.arousal_true), abs=1e-12)
    assert m["p_va"] == pytest.approx((m["ccc_valence"] + m["ccc_arousal"]) / 2)
    assert m["n_frames"] == int((raw.valence_true != -5).sum()) and m["n_videos"] == 5
    for k in ("ccc_valence", "ccc_arousal", "p_va"):
        assert m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"]
    # and the values in the file are the clipped predictions, 6 decimals
    np.testing.assert_allclose(raw.valence.to_numpy(), np.concatenate(preds)[:, 0], atol=5e-7)


def test_score_without_labels_gives_counts_only():
    v = Video("t", np.zeros((10, 2), np.float16), np.full((10, 2), -5, np.float32))
    m = score(predictions_frame([v], [np.zeros((10, 2), np.float32)]))
    assert m == {"n_frames": 0, "n_frames_arousal": 0, "n_frames_total": 10, "n_videos": 1}


# --------------------------------------------------------------------------- submission
def test_submission_rows_order_and_check(tmp_path):
    vids = [Video(n, np.zeros((k, 2), np.float16), np.full((k, 2), -5, np.float32))
            for n, k in (("b-video", 3), ("a_left", 12), ("a_right", 1))]
    preds = [np.full((len(v.labels), 2), 0.25, np.float32) for v in vids]
    sub = submission_frame(predictions_frame(vids, preds))
    path = tmp_path / "submission.csv"
    write_csv(sub, path)
    lines = path.read_text().splitlines()
    assert lines[0] == SUBMISSION_HEADER
    assert len(lines) == 1 + 16
    assert lines[1:4] == ["b-video/00001.jpg,0.250000,0.250000", "b-video/00002.jpg,0.250000,0.250000",
                          "b-video/00003.jpg,0.250000,0.250000"]
    assert lines[4].startswith("a_left/00001.jpg,") and lines[15].startswith("a_left/00012.jpg,")
    assert lines[16].startswith("a_right/00001.jpg,")
    names, counts = [v.name for v in vids], [len(v.labels) for v in vids]
    assert check_submission(path, names, counts) == []
    # the check catches a missing row, a swapped order, a bad header, a value out of range
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:-1]) + "\n")
    assert any("15 rows, expected 16" in p for p in check_submission(bad, names, counts))
    bad.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert any(":2:" in p and "b-video/00001.jpg" in p for p in check_submission(bad, names, counts))
    bad.write_text("\n".join(["image,valence,arousal", *lines[1:]]) + "\n")
    assert any(":1: header" in p for p in check_submission(bad, names, counts))
    bad.write_text("\n".join([*lines[:5], "a_left/00002.jpg,1.5,0", *lines[6:]]) + "\n")
    assert any(":6:" in p and "outside" in p for p in check_submission(bad, names, counts))
    bad.write_text("\n".join([*lines, "a_right/00002.jpg,0,0"]) + "\n")
    assert any("more rows" in p for p in check_submission(bad, names, counts))


# --------------------------------------------------------------------------- the stages
@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """index, annotations and features of 12 small videos; the stand-in model for every variant."""
    import mambava.inference as inf
    import mambava.models as models

    vids = make_videos(n_videos=12, dim=6, seed=5, lengths=(60, 130))
    names = [f"vid{i:02d}" for i in range(10)] + ["rec_left", "rec_right"]
    splits = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2 + ["train"] * 2
    feats = tmp_path / "features"
    feats.mkdir()
    rows = []
    for v, name, split in zip(vids, names, splits):
        ann = tmp_path / "ann" / f"{name}.txt"
        ann.parent.mkdir(exist_ok=True)
        write_annotation(ann, v.labels)
        np.save(feats / f"{name}.npy", np.asarray(v.features, np.float16))
        np.save(feats / f"{name}.mask.npy", np.ones(len(v.labels), bool))
        n = len(v.labels)
        rows.append((name, split, n, n, int((v.labels[:, 0] != -5).sum()), str(tmp_path / name), str(ann)))
    pd.DataFrame(rows, columns=["video", "split", "n_frames", "n_frames_on_disk", "n_annotated", "path",
                                "annotation"]).to_csv(tmp_path / "index.csv", index=False)
    params = tmp_path / "params.yaml"
    params.write_text(f"""
device: cpu
data: {{index: {tmp_path}/index.csv}}
model: {{input_dim: 6}}
mae_pretrain: {{encoder: {{embed_dim: 6}}}}  # = model.input_dim (checked)
features: {{dir: {feats}}}
folds: {{file: {tmp_path}/folds.csv, n_splits: 3}}
train: {{out: {tmp_path}/models, epochs: 2, warmup_epochs: 1, restart_epochs: 1, lr: 1.0e-2, batch_size: 4,
         window: 32, stride: 24, window_fold0: 48, stride_fold0: 40, evals_per_epoch: 2, seeds: 2, workers: 1}}
evaluate: {{n_boot: 50, out: {tmp_path}/runs}}
""")
    monkeypatch.setattr(models, "variant_config", lambda m, v: m)
    monkeypatch.setattr(models, "build_model", lambda m: TinyCausal(m.input_dim))
    monkeypatch.setattr(inf, "scan_backend", lambda m, d: "none")
    return load_config(params), tmp_path, dict(zip(names, vids))


def test_stages_end_to_end(tiny_project):
    from mambava import evaluate
    from mambava import train_runs as train
    from mambava.data.windows import read_folds, run_folds

    cfg, root, vids = tiny_project
    run_folds(cfg)
    folds = read_folds(root / "folds.csv")
    assert folds.loc[folds.video == "rec_left", "cv_fold"].item() == folds.loc[folds.video == "rec_right", "cv_fold"].item()
    assert json.loads((root / "folds.json").read_text())["n_splits"] == 3
    for fold in (0, 2):
        tm = train.run(cfg, "mamba_va", fold, progress=False)
        m = evaluate.run(cfg, "mamba_va", fold)
        out = root / "runs" / "mae" / "mamba_va" / f"fold{fold}"
        trained = root / "models" / "mae" / "mamba_va" / f"fold{fold}" / "seed42"
        for f in ("best.pt", "train_metrics.json", "dvclive/metrics.json", "dvclive/plots/metrics/train/loss.tsv",
                  "dvclive/plots/metrics/val/p_va.tsv"):
            assert (trained / f).exists(), f
        for f in ("predictions.csv", "metrics.json", "test/predictions.csv", "test/metrics.json", "test/submission.txt",
                  "window_sweep.csv"):
            assert (out / f).exists(), f
        assert not (trained / "last.pt").exists()
        assert tm["device"] == "cpu" and tm["seed"] == 42 and tm["torch"] == torch.__version__
        # metrics.json is what the saved predictions give, recomputed independently
        disk = json.loads((out / "metrics.json").read_text())
        pred = pd.read_csv(out / "predictions.csv")
        assert disk["ccc_valence"] == pytest.approx(oracle_ccc(pred.valence, pred.valence_true), abs=1e-12)
        assert disk["ccc_arousal"] == pytest.approx(oracle_ccc(pred.arousal, pred.arousal_true), abs=1e-12)
        # the validation videos are the fold's, every frame of each
        val = set(folds.video[folds.split == "validation"]) if fold == 0 else set(folds.video[folds.cv_fold == fold])
        assert set(pred.video) == val
        assert len(pred) == sum(len(vids[v].labels) for v in val)
        # the test set is scored (the twin has its labels) and the submission covers it
        test = json.loads((out / "test" / "metrics.json").read_text())
        tp = pd.read_csv(out / "test" / "predictions.csv")
        assert test["ccc_valence"] == pytest.approx(oracle_ccc(tp.valence, tp.valence_true), abs=1e-12)
        sub = (out / "test" / "submission.txt").read_text().splitlines()
        assert sub[0] == SUBMISSION_HEADER and len(sub) == 1 + len(vids["vid08"].labels) + len(vids["vid09"].labels)
        assert sub[1].startswith("vid08/00001.jpg,")
        # the in-training validation used the same inference: its best CCC is the evaluated one
        assert tm["ccc_valence"] == pytest.approx(disk["ccc_valence"], abs=2e-5)
        assert disk["n_params"] == tm["n_params"]
        # measured costs: in train.timing.json (not hashed by DVC), joined by the report
        timing = json.loads((out / "train.timing.json").read_text())
        assert timing["seconds_per_epoch"] == tm["seconds_per_epoch"] and timing["peak_memory_mb"] > 0
        for f in (out / "metrics.json", trained / "train_metrics.json"):
            assert not {"seconds", "seconds_per_epoch", "peak_memory_mb"} & set(json.loads(f.read_text()))
        from mambava.report import load_metrics

        lm = load_metrics(root / "runs" / "mae").set_index("fold")
        assert lm.at[fold, "seconds_per_epoch"] == timing["seconds_per_epoch"]
        # the sweep's whole-video row is the evaluated inference (whole) before rounding
        sweep = pd.read_csv(out / "window_sweep.csv", dtype={"window": str})
        assert list(sweep.window) == [*map(str, cfg.evaluate.sweep), "whole"]
        assert sweep.p_va.iloc[-1] == pytest.approx(disk["p_va"], abs=2e-5)
    # two runs with one seed: the same bytes in every file DVC hashes (times are aside)
    import shutil

    trained2 = root / "models" / "mae" / "mamba_va" / "fold2" / "seed42"
    fold2 = root / "runs" / "mae" / "mamba_va" / "fold2"
    hashed = {trained2: ("best.pt", "train_metrics.json", "dvclive/metrics.json", "dvclive/plots/metrics/train/loss.tsv",
                         "dvclive/plots/metrics/val/ccc_valence.tsv"),
              fold2: ("metrics.json", "predictions.csv", "test/metrics.json")}
    before = {d / f: (d / f).read_bytes() for d, fs in hashed.items() for f in fs}
    first = json.loads((fold2 / "metrics.json").read_text())
    shutil.rmtree(trained2.parent)  # train again from scratch
    train.run(cfg, "mamba_va", 2, progress=False)
    evaluate.run(cfg, "mamba_va", 2)
    assert {p: p.read_bytes() for p in before} == before
    again = json.loads((fold2 / "metrics.json").read_text())

    def results(m):
        return m
    # static plots and the results table
    from mambava import plots

    table = plots.run(cfg, root / "plots")
    assert set(zip(table.fold, table.split)) == {(0, "validation"), (0, "test"), (2, "validation"), (2, "test")}
    row = table[(table.fold == 2) & (table.split == "validation")].iloc[0]
    assert row.ccc_valence == pytest.approx(again["ccc_valence"])
    for f in ("training_ccc.png", "training_loss.png", "ccc_by_fold.png", "results.csv"):
        assert (root / "plots" / f).stat().st_size > 0
    assert results(first).keys() >= {"ccc_valence", "ccc_arousal", "p_va", "n_frames", "ccc_valence_lo", "p_va_hi"}


def test_stage_errors_name_files(tiny_project):
    from mambava import evaluate
    from mambava import train_runs as train

    cfg, root, _ = tiny_project
    with pytest.raises(FileNotFoundError, match="folds.csv"):
        train.run(cfg, "mamba_va", 0, progress=False)
    with pytest.raises(FileNotFoundError, match="best.pt"):
        evaluate.run(cfg, "mamba_va", 0)


def test_stage_runs_every_fold_and_seed_and_keeps_finished_runs(tiny_project):
    """run_all: every (fold, seed), the same results with 2 worker processes as with 1; a rerun keeps
    finished runs; a change in the features' content (same shape) retrains."""
    from mambava import evaluate
    from mambava import train_runs as train
    from mambava.data.windows import run_folds

    cfg, root, vids = tiny_project
    run_folds(cfg)
    one = train.run_all(cfg, "mamba_va", progress=False)
    assert set(one["runs"]) == {f"fold{f}/seed{s}" for f in range(4) for s in (42, 43)}
    models = root / "models" / "mae" / "mamba_va"
    w42 = torch.load(models / "fold1" / "seed42" / "best.pt", weights_only=True)["model"]
    w43 = torch.load(models / "fold1" / "seed43" / "best.pt", weights_only=True)["model"]
    assert any(not torch.equal(w42[k], w43[k]) for k in w42)  # the seeds differ
    stamp = (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns
    again = train.run_all(cfg, "mamba_va", progress=False)
    assert again == one and (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns == stamp
    # two workers, from scratch: the same numbers
    import shutil

    shutil.rmtree(models)
    two = train.run_all(cfg.model_copy(update={"train": cfg.train.model_copy(update={"workers": 2})}), "mamba_va",
                        progress=False)
    assert set(two["runs"]) == set(one["runs"])  # the same numbers, to float32 rounding (forked BLAS state)
    for k, m in one["runs"].items():
        assert two["runs"][k]["best_step"] == m["best_step"]
        assert two["runs"][k]["p_va"] == pytest.approx(m["p_va"], abs=1e-6)
    flat = evaluate.run_all(cfg, "mamba_va")
    assert set(flat) >= {"fold3/seed43/test/p_va", "fold0/seed42/validation/ccc_arousal"}
    assert (root / "runs" / "mae" / "mamba_va" / "fold3" / "seed43" / "test" / "predictions.csv").exists()
    assert json.loads((root / "runs" / "mae" / "mamba_va.json").read_text()) == flat
    # other training code (a fix in a model): the fingerprint sees it and the run trains again
    stamp = (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns
    real = train.code_digest
    train.code_digest = lambda mcfg: {**real(mcfg), "models/mamba.py": "edited"}
    try:
        train.run(cfg, "mamba_va", 1, seed=43, progress=False)
    finally:
        train.code_digest = real
    assert (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns != stamp
    stamp = (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns
    # same shape, other content: the fingerprint sees it and the run trains again
    f = cfg.features.dir + "/vid00.npy"
    x = np.load(f)
    np.save(f, (x * 0.5).astype(np.float16))
    train.run(cfg, "mamba_va", 1, seed=43, progress=False)
    assert (models / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns != stamp


def test_a_setting_retrains_only_the_variants_that_read_it(tiny_project, monkeypatch):
    """The Transformer's heads and window retrain the Transformer, not Mamba-VA; Mamba's state size
    the reverse; the head's width both (every variant reads it)."""
    import mambava.models as models
    from mambava import train_runs as train
    from mambava.data.windows import run_folds

    monkeypatch.setattr(models, "variant_config", lambda m, v: models._VARIANTS[v](m))  # the real configs

    cfg, root, _ = tiny_project
    run_folds(cfg)

    def stamps(c) -> dict[str, int]:
        for variant in ("mamba_va", "transformer"):
            train.run(c, variant, 1, seed=43, progress=False)
        return {v: (root / "models" / "mae" / v / "fold1" / "seed43" / "best.pt").stat().st_mtime_ns
                for v in ("mamba_va", "transformer")}

    def changed(c, **model) -> dict[str, bool]:
        new = c.model_copy(update={"model": c.model.model_copy(update=model)})
        before, after = stamps(c), stamps(new)
        return {v: before[v] != after[v] for v in before}

    assert changed(cfg, n_heads=cfg.model.n_heads * 2, attention_window=100) == {"mamba_va": False, "transformer": True}
    assert changed(cfg, d_state=cfg.model.d_state + 1) == {"mamba_va": True, "transformer": False}
    assert changed(cfg, head_hidden=cfg.model.head_hidden + 1) == {"mamba_va": True, "transformer": True}
