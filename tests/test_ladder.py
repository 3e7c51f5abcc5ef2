"""The signal ladder: oracle features, the clean protocol, and the ladder's statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambava.config import SyntheticConfig
from mambava.data.affwild2 import build_index
from mambava.data.synthetic import generate_twin
from mambava.data.windows import fold_videos, make_folds
from mambava.metrics import ccc

SMALL = dict(n_videos=12, n_pairs=1, min_frames=60, max_frames=300, workers=1, seed=11,
             missing_runs_per_1k=4.0, missing_rate=0.02)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    cfg = SyntheticConfig(**SMALL)
    root, labels, truth = tmp / "twin" / "affwild2", tmp / "twin" / "test_labels", tmp / "twin" / "truth"
    generate_twin(cfg, root, labels, truth, "test_list.txt")
    index = build_index(root, labels, "test_list.txt")
    return tmp, root, truth, index


# --------------------------------------------------------------------------- oracle features
def test_oracle_features_are_the_rendered_parameters(twin):
    """Read the truth file independently (np.load, by name) and compare column by column."""
    from mambava.data.oracle import COLUMNS, build_oracle_store
    from mambava.features.store import load_features

    tmp, root, truth, index = twin
    out = tmp / "oracle"
    summary = build_oracle_store(index, truth, out)
    assert summary["dim"] == len(COLUMNS)
    mean, std = np.array(summary["mean"]), np.array(summary["std"])
    # the standardisation uses only the non-test videos: recompute it from the raw truth files
    col = COLUMNS.index("mouth_curve")
    raw = []
    for v in index.loc[index.split != "test", "video"]:
        z = np.load(truth / f"{v}.npz")
        keep = ~z["missing"] & (z["occlusion"].round() != 2)  # mouth not covered
        raw.append(z["mouth_curve"][keep])
    assert mean[col] == pytest.approx(np.concatenate(raw).mean(), abs=1e-5)
    for v in index.video:
        feats, mask = load_features(out, v, mmap=False)
        z = np.load(truth / f"{v}.npz")
        assert feats.dtype == np.float16 and feats.shape == (len(z["mouth_curve"]), len(COLUMNS))
        np.testing.assert_array_equal(mask, ~z["missing"])
        x = feats.astype(np.float64) * std + mean  # back to the rendered units
        seen = mask.copy()
        occl = z["occlusion"].round().astype(int)
        for name in ("brow_tilt", "eye_open", "mouth_open", "dx", "yaw", "blur"):
            c = COLUMNS.index(name)
            hidden = {"brow_tilt": (1, 4), "eye_open": (1,), "mouth_open": (2,)}.get(name, ())
            ok = seen & ~np.isin(occl, hidden)
            np.testing.assert_allclose(x[ok, c], z[name][ok], atol=2e-3 * max(1.0, std[c]) + 1e-3 * abs(mean[c]))
            if hidden and (seen & np.isin(occl, hidden)).any():  # hidden parameters read as the mean
                np.testing.assert_allclose(x[seen & np.isin(occl, hidden), c], mean[c], atol=1e-2 * std[c] + 1e-3)
        c = COLUMNS.index("light_cos")
        np.testing.assert_allclose(x[seen, c], np.cos(z["light_angle"][seen]), atol=5e-3)
        for r, region in enumerate(("eyes", "mouth", "cheek", "forehead")):
            c = COLUMNS.index(f"occluded_{region}")
            np.testing.assert_allclose(x[seen, c], (occl[seen] == r + 1).astype(float), atol=5e-3)
        # frames without a crop repeat the previous face frame, as the MAE features do
        miss = np.flatnonzero(~mask)
        if len(miss) and miss[0] > 0:
            np.testing.assert_array_equal(feats[miss[0]], feats[miss[0] - 1])
        # no latent state and no derived statistic is a column
        assert not {"latent", "labels", "blink_onset", "motion_energy"} & set(COLUMNS)


def test_label_ceiling_is_the_latent_at_label_time(twin):
    from mambava.data.oracle import latent_and_labels
    from mambava.metrics import ccc_va

    tmp, root, truth, index = twin
    test = list(index.loc[index.split == "test", "video"])
    pairs = [latent_and_labels(index, truth, v) for v in test]  # what the ladder's ceiling scores
    got = ccc_va(np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs]))
    preds, trues = [], []
    for v in test:
        z = np.load(truth / f"{v}.npz")
        lag = int(z["lag_frames"])
        lat = z["latent"]
        preds.append(np.concatenate([np.repeat(lat[:1], lag, 0), lat[:-lag]]))
        trues.append(z["labels"])
    p, t = np.concatenate(preds), np.concatenate(trues)
    assert got["ccc_valence"] == pytest.approx(ccc(p[:, 0], t[:, 0]), abs=1e-9)
    assert got["ccc_arousal"] == pytest.approx(ccc(p[:, 1], t[:, 1]), abs=1e-9)
    assert got["ccc_valence"] > 0.9 and got["ccc_arousal"] > 0.9  # only annotator noise remains


# --------------------------------------------------------------------------- protocol
def _pool_index(n_train=16, n_val=5, n_test=4):
    rows = [(f"tr{i:02d}", "train", 100 + 7 * i) for i in range(n_train)]
    rows += [(f"va{i}", "validation", 90 + 5 * i) for i in range(n_val)]
    rows += [(f"te{i}", "test", 80) for i in range(n_test)]
    rows += [("pair_left", "train", 120), ("pair_right", "train", 120)]
    return pd.DataFrame(rows, columns=["video", "split", "n_frames"])


def _leaks(folds: pd.DataFrame) -> list[str]:
    """Every (fold, video) where a scored video's labels fine-tuned the encoder."""
    enc = set(folds.loc[folds.encoder == 1, "video"])
    out = [f"test:{v}" for v in folds.loc[folds.split == "test", "video"] if v in enc]
    for f in range(int(folds.cv_fold.max()) + 1):
        out += [f"fold{f}:{v}" for v in fold_videos(folds, f)[1] if v in enc]
    return out


def test_clean_protocol_keeps_validation_labels_out_of_the_encoder():
    index = _pool_index()
    clean = make_folds(index, 5, 42, "clean", 0.5)
    assert _leaks(clean) == []
    enc = set(clean.loc[clean.encoder == 1, "video"])
    assert enc and enc <= set(index.loc[index.split == "train", "video"])
    assert len(enc) == pytest.approx(0.5 * 17, abs=1)  # half of the 17 training groups (the pair is one)
    assert ("pair_left" in enc) == ("pair_right" in enc)
    # encoder videos train every fold
    for f in range(6):
        assert enc <= set(fold_videos(clean, f)[0])
    # the paper's protocol is selectable and does leak: the same check catches it
    paper = make_folds(index, 5, 42, "paper")
    leaks = _leaks(paper)
    assert leaks and all(not x.startswith(("test", "fold0")) for x in leaks)


def test_fine_tuning_reads_only_encoder_labels(twin, monkeypatch):
    """The fine-tuning stage's labelled frames come from the encoder videos alone: a spy on the
    dataset it builds sees no frame of any fold's validation video or of a test video."""
    from mambava.features import finetune

    tmp, root, truth, index = twin
    folds = make_folds(index, 3, 1, "clean", 0.5)
    folds_file = tmp / "folds_clean.csv"
    folds.to_csv(folds_file, index=False)

    class Stop(Exception):
        pass

    seen = {}

    class Spy:
        def __init__(self, dirs, frames, video_of, *a, labels=None, **k):
            seen["videos"] = {str(d).rstrip("/").split("/")[-1] for d in dirs}
            raise Stop

    class Cfg:  # the few settings the stage reads before it builds the dataset
        pass

    monkeypatch.setattr(finetune, "FrameDataset", Spy)
    monkeypatch.setattr(finetune, "load_index", lambda path: index)
    cfg = Cfg()
    cfg.folds = type("F", (), {"file": str(folds_file)})()
    cfg.protocol = "clean"
    assert set(finetune.fine_tune_videos(cfg)) == set(folds.loc[folds.encoder == 1, "video"])
    from mambava.features.frames import split_frames

    dirs, frames, video_of, labels = split_frames(index, "train", labelled=True, videos=finetune.fine_tune_videos(cfg))
    used = {str(d).split("/")[-1] for d in dirs}
    scored = set(index.loc[index.split == "test", "video"])
    for f in range(int(folds.cv_fold.max()) + 1):
        scored |= set(fold_videos(folds, f)[1])
    assert used and not used & scored
    with pytest.raises(Stop):
        finetune.FrameDataset(dirs, frames, video_of, 32, (0, 0, 0), (1, 1, 1), labels=labels)
    assert seen["videos"] == used


# --------------------------------------------------------------------------- statistics
def test_ccc_from_stats_matches_the_formula():
    from mambava.ladder import ccc_from_stats, video_stats

    rng = np.random.default_rng(0)
    n = 500
    truth = rng.uniform(-1, 1, (n, 2))
    truth[rng.random(n) < 0.1, 1] = -5
    pred = np.where(truth == -5, 0, truth) * 0.7 + rng.normal(0, 0.3, (n, 2))
    df = pd.DataFrame({"video": np.repeat(["a", "b", "c", "d", "e"], 100), "valence": pred[:, 0], "arousal": pred[:, 1],
                       "valence_true": truth[:, 0], "arousal_true": truth[:, 1]})
    st = video_stats(df, ["a", "b", "c", "d", "e"]).sum(axis=0)
    got = ccc_from_stats(st)
    assert got[0] == pytest.approx(ccc(pred[:, 0], truth[:, 0]), abs=1e-9)
    k = truth[:, 1] != -5
    assert got[1] == pytest.approx(ccc(pred[k, 1], truth[k, 1]), abs=1e-9)


def _frames(rng, n_vid, noise, n=60):
    """One seed's predictions: a table of n_vid videos with per-video offsets (video variance)."""
    rows = []
    for v in range(n_vid):
        y = rng.uniform(-1, 1, (n, 2))
        x = y + rng.normal(0, noise, (n, 2)) + rng.normal(0, 0.2, 2)
        rows.append(pd.DataFrame({"video": f"v{v}", "valence": x[:, 0], "arousal": x[:, 1],
                                  "valence_true": y[:, 0], "arousal_true": y[:, 1]}))
    return pd.concat(rows, ignore_index=True)


def test_ladder_interval_holds_seed_variance():
    """Two cells with the same mean: one whose seeds disagree gets the wider interval."""
    from mambava.ladder import cell_bootstrap, video_stats

    rng = np.random.default_rng(1)
    vids = [f"v{v}" for v in range(8)]
    calm = [np.stack([video_stats(_frames(rng, 8, 0.3), vids) for _ in range(3)])]
    wild = [np.stack([video_stats(_frames(rng, 8, s), vids) for s in (0.1, 0.6, 1.2)])]
    _, lc, hc, _ = cell_bootstrap(calm, True, 2000, 0)
    _, lw, hw, _ = cell_bootstrap(wild, True, 2000, 0)
    assert hw[0] - lw[0] > 2 * (hc[0] - lc[0])


@pytest.mark.parametrize("shared,n_vid", [(True, [5, 5]), (False, [5, 4]), (False, [5, 1])])
def test_ladder_bootstrap_is_the_two_level_resampling(shared, n_vid, monkeypatch):
    """Against a slow reference on the frames: draw videos (one draw for all folds when shared,
    else one per fold), then each fold's seeds, with replacement (default_rng(seed), in that order;
    a one-element sample is not drawn), pool the drawn videos' frames, CCC per seed by the formula,
    mean over drawn seeds, then folds; percentile bounds. And compare(): the same for a - b, with
    a's then b's seeds drawn after the shared videos."""
    from mambava.ladder import build, compare

    rng = np.random.default_rng(7)
    n_boot, seed = 150, 5
    seeds = {"a": [3, 1], "b": [2, 2]}
    vids = [[f"v{v}" for v in range(n)] for n in n_vid]
    frames = {c: [[_frames(rng, n_vid[f], 0.3 + 0.3 * s) for s in range(seeds[c][f])] for f in range(2)] for c in "ab"}

    def ref_ccc(df, cols):
        k = df[f"{cols}_true"].to_numpy() != -5
        x, y = df[cols].to_numpy()[k], df[f"{cols}_true"].to_numpy()[k]
        mx, my = x.mean(), y.mean()
        return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)

    def cell_value(c, vdraw, sdraw):
        per_fold = []
        for f in range(2):
            picked = vdraw[0 if shared else f]
            per_seed = []
            for s in sdraw[f]:
                df = frames[c][f][s]
                pooled = pd.concat([df[df.video == vids[f][i]] for i in picked])
                per_seed.append([ref_ccc(pooled, t) for t in ("valence", "arousal")])
            per_fold.append(np.mean(per_seed, axis=0))
        return np.mean(per_fold, axis=0)

    def draws(r, cells):
        v = [r.integers(0, n_vid[0], (n_boot, n_vid[0]))] if shared else [
            r.integers(0, n, (n_boot, n)) if n > 1 else np.zeros((n_boot, 1), int) for n in n_vid]
        s = {c: [r.integers(0, k, (n_boot, k)) if k > 1 else np.zeros((n_boot, 1), int) for k in seeds[c]] for c in cells}
        return v, s

    def reference(cells, fn):
        v, s = draws(np.random.default_rng(seed), cells)
        reps = np.array([fn(*[cell_value(c, [x[b] for x in v], [x[b] for x in s[c]]) for c in cells])
                         for b in range(n_boot)])
        return np.quantile(reps, [0.025, 0.975], axis=0)

    from mambava import ladder

    def collect(root, variants, folds, split, videos_of_fold):
        return {c: [np.stack([ladder.video_stats(df, videos_of_fold(f)) for df in frames[c][f]]) for f in folds]
                for c in variants}

    monkeypatch.setattr(ladder, "collect", collect)  # the cells' statistics from the frames above
    table, reps = build({"mae": "x"}, ["a", "b"], [0, 1], {0: vids[0], 1: vids[1]}, vids[0], None, n_boot, seed)
    split = "test" if shared else "validation"
    for c in "ab":
        lo, hi = reference([c], lambda x: x)
        got = table.query("split == @split and variant == @c").sort_values("target", ascending=False)
        assert list(got.target) == ["valence", "arousal"]
        assert got.lo.to_numpy() == pytest.approx(lo, abs=1e-10)
        assert got.hi.to_numpy() == pytest.approx(hi, abs=1e-10)
    lo, hi = reference(["a", "b"], lambda x, y: x - y)
    d = compare(reps, table, (split, "mae", "a"), (split, "mae", "b"))
    assert [d["valence"]["lo"], d["arousal"]["lo"]] == pytest.approx(lo, abs=1e-10)
    assert [d["valence"]["hi"], d["arousal"]["hi"]] == pytest.approx(hi, abs=1e-10)


def test_leak_effect_is_the_frame_weighted_difference():
    from mambava.leakage import leak_effect

    rng = np.random.default_rng(3)
    n = 30
    pv = pd.DataFrame({"video": [f"v{i}" for i in range(n)], "n_frames": rng.integers(100, 1000, n),
                       "leaked": np.arange(n) % 2 == 0, "official_train": np.arange(n) < 24})
    base = rng.normal(0.4, 0.05, n)
    pv["ccc_valence"] = base + np.where(pv.leaked, 0.2, 0.0)
    pv["ccc_arousal"] = base
    pv["p_va"] = (pv.ccc_valence + pv.ccc_arousal) / 2
    e = leak_effect(pv, 500, 0)
    part = pv[pv.official_train]
    a, b = part[part.leaked], part[~part.leaked]
    want = np.average(a.ccc_valence, weights=a.n_frames) - np.average(b.ccc_valence, weights=b.n_frames)
    assert e["ccc_valence"]["diff"] == pytest.approx(want, abs=1e-4)
    assert e["ccc_valence"]["lo"] > 0.1  # a real leak is detected
    assert e["ccc_arousal"]["lo"] < 0 < e["ccc_arousal"]["hi"]  # no leak, no claim
    assert e["n_leaked_videos"] == 12 and e["n_clean_videos"] == 12  # only official training videos compare
    # the interval against a slow reference: leaked and clean videos drawn independently
    # (default_rng(seed): all draws of the leaked group, then of the clean group), percentile bounds
    r = np.random.default_rng(0)
    da, db = r.integers(0, len(a), (500, len(a))), r.integers(0, len(b), (500, len(b)))
    for key in ("ccc_valence", "ccc_arousal", "p_va"):
        reps = [np.average(a[key].to_numpy()[i], weights=a.n_frames.to_numpy()[i])
                - np.average(b[key].to_numpy()[j], weights=b.n_frames.to_numpy()[j]) for i, j in zip(da, db)]
        lo, hi = np.quantile(reps, [0.025, 0.975])
        assert (e[key]["lo"], e[key]["hi"]) == pytest.approx((lo, hi), abs=5e-5)  # rounded to 4 places


def test_ladder_table_layout():
    """A ladder written out by hand: rows (rung, variant) with the oracle rung first and the
    ceiling last, each cell 'CCC [lo, hi]', the seed spread as 'v / a'; other splits ignored."""
    from mambava.tables import ladder_shares, ladder_table

    rows = []
    for split, shift in (("test", 0.0), ("validation", 0.5)):
        for level, variant, v, a, sd in (("mae", "frame", 0.1, 0.2, 0.01), ("oracle", "frame", 0.8, 0.4, 0.02),
                                          ("oracle", "mamba_va", 0.9, 0.7, 0.03), ("ceiling", "all", 0.99, 0.98, 0.0)):
            for target, c, k in (("valence", v, 1), ("arousal", a, 2)):
                rows.append(dict(split=split, level=level, variant=variant, target=target, ccc=c - shift,
                                 lo=c - shift - 0.05, hi=c - shift + 0.05, seed_sd=k * sd, n_seeds=3, n_folds=6))
    t = pd.DataFrame(rows)
    out = ladder_table(t, "test")
    assert list(out.index) == [("oracle features", "Mamba-VA (TCN + Mamba)"),
                               ("oracle features", "frame only (no TCN, no temporal model)"),
                               ("face encoder", "frame only (no TCN, no temporal model)"),
                               ("label ceiling", "latent vs labels")]
    assert list(out.columns) == ["valence [95% CI]", "arousal [95% CI]", "seed s.d. (v / a)"]
    assert out.iloc[0].tolist() == ["0.900 [0.850, 0.950]", "0.700 [0.650, 0.750]", "0.030 / 0.060"]
    assert out.iloc[2].tolist() == ["0.100 [0.050, 0.150]", "0.200 [0.150, 0.250]", "0.010 / 0.020"]
    assert out.iloc[3].tolist() == ["0.990 [0.940, 1.040]", "0.980 [0.930, 1.030]", ""]
    shares = ladder_shares(t, "test")
    assert shares.loc["frame only (no TCN, no temporal model)", ("arousal", "face encoder / oracle")] == 0.5
    assert shares.loc["Mamba-VA (TCN + Mamba)", ("valence", "oracle / ceiling")] == round(0.9 / 0.99, 3)
    # real Aff-Wild2: only the MAE rung, so no shares, and no error
    assert ladder_shares(t[t.level == "mae"], "test").shape == (1, 0)
    assert list(ladder_table(t[t.level == "mae"], "test").index) == [("face encoder", "frame only (no TCN, no temporal model)")]
