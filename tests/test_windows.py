"""Windows (w/s and the final partial window) and the folds of the study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambava.data.windows import (
    Video,
    Windows,
    fold_summary,
    fold_videos,
    group_of,
    make_folds,
    read_folds,
    window_starts,
    write_folds,
)


# --------------------------------------------------------------------------- windows
def covered(n, w, starts):
    seen = np.zeros(n, dtype=bool)
    for t in starts:
        seen[t : t + w] = True
    return seen


@pytest.mark.parametrize(
    "n, w, s, last, expected",
    [
        (1000, 300, 200, "pad", [0, 200, 400, 600, 800]),  # 800..999 is the padded partial one
        (1000, 300, 200, "drop", [0, 200, 400, 600]),  # the authors: frames 900..999 never seen
        (1000, 300, 200, "shift", [0, 200, 400, 600, 700]),
        (900, 300, 200, "pad", [0, 200, 400, 600]),  # fits exactly: no partial window
        (900, 300, 200, "drop", [0, 200, 400, 600]),
        (250, 300, 200, "pad", [0]),  # shorter than a window: one padded window
        (250, 300, 200, "drop", []),
        (250, 300, 200, "shift", [0]),
        (1200, 500, 500, "pad", [0, 500, 1000]),  # test inference 500/500 tiles the video
        (1000, 500, 500, "pad", [0, 500]),
        (0, 300, 200, "pad", []),
    ],
)
def test_window_starts(n, w, s, last, expected):
    assert window_starts(n, w, s, last) == expected


@pytest.mark.parametrize("n", [1, 7, 299, 300, 301, 999, 1000, 1001, 2345])
@pytest.mark.parametrize("w, s", [(300, 200), (1000, 800), (500, 500), (64, 48)])
def test_pad_and_shift_cover_every_frame(n, w, s):
    for last in ("pad", "shift"):
        starts = window_starts(n, w, s, last)
        assert covered(n, w, starts).all(), (n, w, s, last)
        assert all(0 <= t < n for t in starts)
    # drop loses exactly the tail after the last full window (or the whole short video)
    starts = window_starts(n, w, s, "drop")
    lost = n - (starts[-1] + w if starts else 0)
    assert (~covered(n, w, starts)).sum() == lost
    assert lost == (n - w) % s if n >= w else lost == n


def test_windows_pad_features_and_mask_labels():
    rng = np.random.default_rng(0)
    n, dim = 23, 3
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    labels = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    labels[4] = -5.0
    ds = Windows([Video("a", feats, labels)], w=10, s=8, last="pad")
    assert ds.index == [(0, 0), (0, 8), (0, 16)]
    x, y = ds[2]
    assert x.shape == (10, dim) and y.shape == (10, 2)
    np.testing.assert_array_equal(x[:7], feats[16:])
    assert (x[7:] == 0).all()
    np.testing.assert_array_equal(y[:7], labels[16:])
    assert (y[7:] == -5).all()  # padding never reaches the loss
    xb, yb = ds.batch([0, 1])
    assert xb.shape == (2, 10, dim)
    np.testing.assert_array_equal(yb[0, 4], [-5, -5])  # an unannotated frame stays masked
    assert ds.frames_used() == n
    assert Windows([Video("a", feats, labels)], w=10, s=8, last="drop").frames_used() == 18


def slow_windows(videos, w, s, last):
    """The plain reference: every window sliced out of its video and padded, one at a time."""
    xs, ys = [], []
    for v in videos:
        n = len(v.labels)
        for t in window_starts(n, w, s, last):
            real = min(w, n - t)
            x = np.zeros((w, *v.features.shape[1:]), dtype=np.float32)
            y = np.full((w, 2), -5.0, dtype=np.float32)
            x[:real] = np.asarray(v.features[t : t + real], dtype=np.float32)
            y[:real] = v.labels[t : t + real]
            xs.append(x)
            ys.append(y)
    return xs, ys


def random_videos(lengths, dim=5, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        y = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        y[rng.random(n) < 0.1] = -5.0
        out.append(Video(f"v{i}", rng.normal(size=(n, dim)).astype(dtype), y))
    return out


# lengths: exact fits, partial tails, shorter than a window, a single frame, an empty video
@pytest.mark.parametrize("lengths", [[23, 40, 10], [7, 1, 0, 35, 30, 12], [100]])
@pytest.mark.parametrize("w, s", [(10, 8), (12, 12), (5, 2)])
@pytest.mark.parametrize("last", ["pad", "drop", "shift"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_equals_per_window_slicing(lengths, w, s, last, dtype):
    videos = random_videos(lengths, dtype=dtype)
    ds = Windows(videos, w, s, last)
    xs, ys = slow_windows(videos, w, s, last)
    assert len(ds) == len(xs)
    assert ds.index == [(k, t) for k, v in enumerate(videos) for t in window_starts(len(v.labels), w, s, last)]
    assert ds.frames_used() == sum(covered(len(v.labels), w, window_starts(len(v.labels), w, s, last)).sum()
                                   for v in videos)
    if not xs:
        return
    order = np.random.default_rng(1).permutation(len(ds))
    for items in (order, order[:3], [0], [len(ds) - 1, 0, len(ds) - 1]):  # shuffled, short, repeated
        x, y = ds.batch(items)
        assert x.dtype == dtype and y.dtype == np.float32  # features stay in their dtype
        assert x.shape == (len(items), w, 5) and y.shape == (len(items), w, 2)
        np.testing.assert_array_equal(x.astype(np.float32), np.stack([xs[i] for i in items]))
        np.testing.assert_array_equal(y, np.stack([ys[i] for i in items]))
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        np.testing.assert_array_equal(x.astype(np.float32), xs[i])
        np.testing.assert_array_equal(y, ys[i])
    x32, y32 = Windows(videos, w, s, last, dtype=np.float32).batch(order)  # cast once, at construction
    assert x32.dtype == np.float32
    np.testing.assert_array_equal(x32, np.stack([xs[i] for i in order]))
    np.testing.assert_array_equal(y32, np.stack([ys[i] for i in order]))


def test_windows_over_memory_mapped_float16(tmp_path):
    videos = random_videos([50, 9, 31], dim=4, dtype=np.float16, seed=3)
    mapped = []
    for v in videos:
        np.save(tmp_path / f"{v.name}.npy", v.features)
        mapped.append(Video(v.name, np.load(tmp_path / f"{v.name}.npy", mmap_mode="r"), v.labels))
    ds = Windows(mapped, 16, 10, "pad")
    xs, ys = slow_windows(videos, 16, 10, "pad")
    x, y = ds.batch(np.arange(len(ds)))
    assert x.dtype == np.float16 and x.flags.writeable and x.flags.c_contiguous
    np.testing.assert_array_equal(x.astype(np.float32), np.stack(xs))
    np.testing.assert_array_equal(y, np.stack(ys))
    x32, _ = Windows(mapped, 16, 10, "pad", dtype=np.float32).batch(np.arange(len(ds)))
    np.testing.assert_array_equal(x32, np.stack(xs))


def test_windows_reject_mixed_feature_sizes():
    a, b = random_videos([20], dim=4)[0], random_videos([20], dim=5)[0]
    with pytest.raises(ValueError, match="v0"):
        Windows([a, Video("other", b.features, b.labels)], 10, 5)
    assert len(Windows([], 10, 5)) == 0


def test_video_checks_lengths():
    with pytest.raises(ValueError, match="vid"):
        Video("vid", np.zeros((5, 2)), np.zeros((4, 2)))


def test_bad_window_settings():
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)
    with pytest.raises(ValueError):
        window_starts(10, 5, 5, "wrap")


# --------------------------------------------------------------------------- folds
def toy_index(seed=0, n=40, pairs=4):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        split = "train" if i < 0.7 * n else "validation" if i < 0.85 * n else "test"
        rows.append((f"vid{i:03d}", split, int(rng.integers(100, 3000))))
    for j in range(pairs):
        split = ["train", "validation", "test", "train"][j % 4]
        for side in ("left", "right"):
            rows.append((f"video{j}_{side}", split, 777 + j))
    return pd.DataFrame(rows, columns=["video", "split", "n_frames"])


def test_group_of():
    assert group_of("video97_left") == "video97"
    assert group_of("video97_right") == "video97"
    assert group_of("101-30-1920x1080") == "101-30-1920x1080"
    assert group_of("left_side") == "left_side"


def test_folds_partition_and_pairs_together():
    index = toy_index()
    folds = make_folds(index, n_splits=5, seed=42)
    assert list(folds["video"]) == list(index["video"])
    pool = set(index.loc[index["split"] != "test", "video"])
    test = set(index.loc[index["split"] == "test", "video"])
    seen: list[str] = []
    for k in range(1, 6):
        train, val = fold_videos(folds, k)
        assert not set(train) & set(val)
        assert set(train) | set(val) == pool
        assert not (set(train) | set(val)) & test
        assert val, f"fold {k} is empty"
        seen += val
        # the two people of one recording are on the same side
        for v in val:
            if v.endswith("_left"):
                assert v[: -len("left")] + "right" in val
    assert sorted(seen) == sorted(pool)  # every video validated exactly once
    # folds balanced in frames: within 1.5x of each other on this toy set
    frames = folds[folds.cv_fold > 0].groupby("cv_fold")["n_frames"].sum()
    assert frames.max() < 1.5 * frames.min()
    train0, val0 = fold_videos(folds, 0)
    assert set(train0) == set(index.loc[index.split == "train", "video"])
    assert set(val0) == set(index.loc[index.split == "validation", "video"])


def test_folds_deterministic_and_seeded(tmp_path):
    index = toy_index()
    a = make_folds(index, 5, seed=42)
    b = make_folds(index.sample(frac=1.0, random_state=3), 5, seed=42)  # row order is irrelevant
    merged = a.merge(b, on="video")
    assert (merged.cv_fold_x == merged.cv_fold_y).all()
    c = make_folds(index, 5, seed=7)
    assert not (a.cv_fold.values == c.cv_fold.values).all()
    write_folds(a, tmp_path / "f" / "folds.csv")
    back = read_folds(tmp_path / "f" / "folds.csv")
    pd.testing.assert_frame_equal(back, a, check_dtype=False)


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_fold_summary_counts_the_encoder_videos_and_each_cv_fold(protocol):
    index = toy_index()
    folds = make_folds(index, 5, seed=42, protocol=protocol)
    s = fold_summary(folds)
    enc = folds[folds.encoder == 1]
    assert s["n_splits"] == 5 and s["encoder_videos"] == len(enc) > 0
    assert s["encoder_frames"] == enc.n_frames.sum()
    assert [k for k in s if k.startswith("fold")] == [f"fold{f}_{x}" for f in range(1, 6) for x in ("videos", "frames")]
    pool = folds[folds.split != "test"]
    assert sum(s[f"fold{f}_videos"] for f in range(1, 6)) == (pool.cv_fold > 0).sum()
    if protocol == "clean":  # the encoder's videos are in no CV fold
        assert set(enc.video) == set(pool.loc[pool.cv_fold == 0, "video"])


def test_folds_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_folds(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="folds"):
        make_folds(toy_index(n=4, pairs=0), n_splits=5)
    with pytest.raises(ValueError, match="does not exist"):
        fold_videos(make_folds(toy_index(), 5), 6)
