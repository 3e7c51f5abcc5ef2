"""Windows over videos, and the folds of the study.

**Windows.** A video of ``n`` frames is cut into segments of ``w`` frames with stride ``s``. The
full windows start at 0, s, 2s, ... while they fit (``start + w <= n``). What happens to the
frames after the last full window is the ``last`` setting:

- ``pad`` (our default): one more window starts at the next stride position and holds the
  remaining ``n - start`` frames; it is padded on the right to ``w`` frames with zero features
  and ``-5`` labels, so the loss ignores the padding. No frame is lost, and because every model
  of the study is causal (causal TCN, Mamba, causal Transformer), right padding cannot change the
  outputs on the real frames. A video shorter than ``w`` becomes one padded window.
- ``drop`` (the authors' training code): the partial window is dropped, so the last
  ``(n - w) mod s`` frames of every video never reach the loss, and a video shorter than ``w``
  is not used at all.
- ``shift``: one more full window ending at the last frame (``start = n - w``); it overlaps its
  neighbour more than ``w - s`` frames. A video shorter than ``w`` is one padded window.

With ``s == w`` (the authors' 500/500 test inference) and ``pad``, windows tile the video.

**Folds.** Fold 0 is the official split: train on ``train`` videos, validate on ``validation``.
Folds 1..k are a k-fold cross validation over the train and validation videos together. Videos
are grouped by person recording: ``<name>_left`` and ``<name>_right`` (two people in one video)
form one group, so the two never fall on different sides of a split. Groups are shuffled with a
seed and then given, largest first, to the fold with the fewest frames so far (folds of similar
size in frames, not only in videos). The result is a table ``video, split, group, cv_fold``
(``cv_fold`` = the fold in which the video is validation; 0 for test videos), saved by the
``folds`` stage; :func:`fold_videos` reads a fold back from it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mambava.data.affwild2 import UNLABELLED

LastWindow = Literal["pad", "drop", "shift"]
FOLD_COLUMNS = ["video", "split", "group", "n_frames", "cv_fold", "encoder"]
_PAIR_RE = re.compile(r"^(.*)_(left|right)$")


# --------------------------------------------------------------------------- windows
def window_starts(n: int, w: int, s: int, last: LastWindow = "pad") -> list[int]:
    """Start frames (0-based) of the windows over a video of ``n`` frames (module doc).

    A window starting at ``t`` covers frames ``t .. min(t + w, n) - 1``; a window shorter than
    ``w`` is padded by :class:`Windows`.
    """
    if w < 1 or s < 1:
        raise ValueError(f"window length and stride must be >= 1 (got w={w}, s={s})")
    if last not in ("pad", "drop", "shift"):
        raise ValueError(f"unknown last-window policy {last!r}; choose pad, drop or shift")
    if n <= 0:
        return []
    starts = list(range(0, n - w + 1, s)) if n >= w else []
    covered = starts[-1] + w if starts else 0
    if covered < n and last != "drop":
        if not starts:
            starts.append(0)
        elif last == "pad":
            starts.append(starts[-1] + s)
        else:  # shift
            starts.append(n - w)
    return starts


def pad_to(x: np.ndarray, length: int, value: float) -> np.ndarray:
    """``x`` (frames, ...) padded on the right with ``value`` to ``length`` frames."""
    if len(x) >= length:
        return x[:length]
    out = np.full((length, *x.shape[1:]), value, dtype=x.dtype)
    out[: len(x)] = x
    return out


@dataclass(frozen=True)
class Video:
    """One video: features (n, dim) (float16 memory-mapped, or float32) and labels (n, 2) float32 with -5."""

    name: str
    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.features) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.features)} feature rows but {len(self.labels)} label rows"
            )


def _copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``, with a float16 -> float32 cast done by torch (numpy's is ~10x slower)."""
    src = np.asarray(src)
    if not (src.dtype == np.float16 and dst.dtype == np.float32):
        dst[...] = src
        return
    import warnings

    import torch

    with warnings.catch_warnings():  # torch warns about read-only (memory-mapped) arrays; src is only read
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(dst).copy_(torch.from_numpy(src))


class Windows:
    """Fixed-length windows over a list of videos, as a map-style dataset.

    Item ``i`` is ``(x, y)``: x (w, dim) features in :attr:`dtype`, y (w, 2) float32 labels;
    padding has zero features and -5 labels, so that the CCC loss ignores it. ``index`` lists
    (video number, start) of every window in order. ``dtype`` defaults to the videos' own
    (float16 for the feature files; the training loop casts a batch to float32 on its device).

    At construction the features and labels of all videos are copied once into one contiguous
    array each, :attr:`features` (frames + 1, dim) and :attr:`labels` (frames + 1, 2): video
    ``k`` in rows ``offsets[k] .. offsets[k + 1] - 1``, then one padding row (zeros, -5).
    Window ``i`` is rows ``row0[i] .. row0[i] + n_real[i] - 1`` followed by ``w - n_real[i]``
    times the padding row, so :meth:`batch` gathers a whole batch with one ``take`` of its
    ``b * w`` rows for the features and one for the labels, without per-window Python work.
    Memory: one in-RAM copy of the videos' frames (frames x dim x 2 bytes in float16), also
    when their features are memory-mapped.
    """

    def __init__(self, videos: Sequence[Video], w: int, s: int, last: LastWindow = "pad", dtype=None):
        self.videos = list(videos)
        self.w, self.s, self.last = w, s, last
        self.index = [(k, t) for k, v in enumerate(self.videos) for t in window_starts(len(v.labels), w, s, last)]
        if dtype is None:
            dtype = np.result_type(*(v.features.dtype for v in self.videos)) if self.videos else np.float32
        self.dtype = np.dtype(dtype)
        shape = self.videos[0].features.shape[1:] if self.videos else (0,)
        for v in self.videos:
            if v.features.shape[1:] != shape:
                raise ValueError(f"{v.name}: features of shape {v.features.shape[1:]}, "
                                 f"but {self.videos[0].name} has {shape}")
        lengths = np.array([len(v.labels) for v in self.videos], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.pad_row = int(self.offsets[-1])
        self.features = np.empty((self.pad_row + 1, *shape), dtype=self.dtype)
        self.labels = np.empty((self.pad_row + 1, 2), dtype=np.float32)
        for v, a, b in zip(self.videos, self.offsets[:-1], self.offsets[1:]):
            _copy_rows(self.features[a:b], v.features)
            self.labels[a:b] = v.labels
        self.features[self.pad_row] = 0.0
        self.labels[self.pad_row] = UNLABELLED
        k = np.array([k for k, _ in self.index], dtype=np.int64)
        t = np.array([t for _, t in self.index], dtype=np.int64)
        self.row0 = self.offsets[k] + t  # row of every window's first frame
        self.n_real = np.minimum(w, lengths[k] - t)  # and its number of real (unpadded) frames
        self._steps = np.arange(w, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """(b, w): the rows of :attr:`features` and :attr:`labels` that make the windows ``items``."""
        items = np.asarray(items, dtype=np.int64)
        rows = self.row0[items, None] + self._steps
        return np.where(self._steps < self.n_real[items, None], rows, self.pad_row)

    def batch(self, items: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows ``items`` as (b, w, dim) features in :attr:`dtype` and (b, w, 2) float32 labels."""
        rows = self.rows(items)
        flat = rows.reshape(-1)
        x = self.features.take(flat, axis=0).reshape(*rows.shape, *self.features.shape[1:])
        y = self.labels.take(flat, axis=0).reshape(*rows.shape, 2)
        return x, y

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.batch([i])
        return x[0], y[0]

    def frames_used(self) -> int:
        """Real (unpadded) frame positions covered by at least one window, over all videos."""
        depth = np.zeros(self.pad_row + 1, dtype=np.int64)  # windows over each row, as differences
        np.add.at(depth, self.row0, 1)
        np.add.at(depth, self.row0 + self.n_real, -1)
        return int((np.cumsum(depth) > 0).sum())


# --------------------------------------------------------------------------- folds
def group_of(video: str) -> str:
    """The recording a video belongs to: ``<name>`` for ``<name>_left``/``<name>_right``."""
    m = _PAIR_RE.match(video)
    return m.group(1) if m else video


def make_folds(index: pd.DataFrame, n_splits: int = 5, seed: int = 42, protocol: str = "paper",
               encoder_fraction: float = 0.5) -> pd.DataFrame:
    """Assign every train/validation video a cross-validation fold 1..n_splits (module doc).

    index: the data index (columns ``video, split, n_frames`` at least). Returns a table with
    columns ``video, split, group, n_frames, cv_fold, encoder`` in index order; test videos get
    cv_fold 0. ``encoder`` (0/1) marks the videos whose labels fine-tune the MAE encoder:

    - protocol ``paper``: every official training video (the authors' set-up). Folds 1..k then
      validate on videos whose labels made the features: the scores are optimistic;
    - protocol ``clean``: a seeded ``encoder_fraction`` of the official training groups. These
      videos get cv_fold 0: they train every fold and validate none, so no validation (or test)
      video's labels reach the features of the model that scores it. Fold 0 is unchanged.

    Deterministic in (the set of videos, n_splits, seed, protocol, fraction); independent of row order.
    """
    if protocol not in ("paper", "clean"):
        raise ValueError(f"unknown protocol {protocol!r}; choose clean or paper")
    missing = {"video", "split", "n_frames"} - set(index.columns)
    if missing:
        raise ValueError(f"index lacks columns {sorted(missing)}")
    df = index[["video", "split", "n_frames"]].copy()
    df["group"] = df["video"].map(group_of)
    pool = df[df["split"].isin(["train", "validation"])]
    sizes = pool.groupby("group")["n_frames"].sum().sort_index()  # sorted: order-independent
    if len(sizes) < n_splits:
        raise ValueError(f"{len(sizes)} train/validation groups cannot make {n_splits} folds")
    mixed = pool.groupby("group")["split"].nunique()
    if (mixed > 1).any():  # the official split keeps pairs together; say so if a copy does not
        raise ValueError(f"groups split across train and validation: {sorted(mixed[mixed > 1].index)}")
    train_groups = sorted(set(pool.loc[pool["split"] == "train", "group"]))
    if protocol == "paper":
        encoder_groups = set(train_groups)
    else:
        n_enc = max(1, min(len(train_groups), round(encoder_fraction * len(train_groups))))
        n_enc = min(n_enc, len(sizes) - n_splits)  # keep enough groups to validate on
        if n_enc < 1:
            raise ValueError(f"{len(sizes)} train/validation groups: too few for {n_splits} folds and encoder videos")
        pick = np.random.default_rng([seed, 1]).permutation(len(train_groups))[:n_enc]
        encoder_groups = {train_groups[i] for i in pick}
        sizes = sizes.drop(sorted(encoder_groups))
    rng = np.random.default_rng(seed)
    groups = list(sizes.index[rng.permutation(len(sizes))])
    # largest first (stable, so equal sizes keep the seeded order), each to the lightest fold
    groups.sort(key=lambda g: -int(sizes[g]))
    load = np.zeros(n_splits, dtype=np.int64)
    count = np.zeros(n_splits, dtype=np.int64)
    fold_of: dict[str, int] = {}
    for g in groups:
        f = int(np.lexsort((np.arange(n_splits), count, load))[0])  # fewest frames, then videos
        fold_of[g] = f + 1
        load[f] += int(sizes[g])
        count[f] += 1
    df["cv_fold"] = [fold_of.get(g, 0) if s != "test" else 0 for g, s in zip(df["group"], df["split"])]
    df["encoder"] = [int(g in encoder_groups and s == "train") for g, s in zip(df["group"], df["split"])]
    return df[FOLD_COLUMNS].reset_index(drop=True)


def fold_videos(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(train videos, validation videos) of ``fold``: 0 = official split, 1..k = CV folds."""
    if fold == 0:
        train = folds.loc[folds["split"] == "train", "video"]
        val = folds.loc[folds["split"] == "validation", "video"]
    else:
        k = int(folds["cv_fold"].max())
        if not 1 <= fold <= k:
            raise ValueError(f"fold {fold} does not exist (folds file has 0..{k})")
        pool = folds[folds["split"] != "test"]
        train = pool.loc[pool["cv_fold"] != fold, "video"]
        val = pool.loc[pool["cv_fold"] == fold, "video"]
    return list(train), list(val)


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    """Write the folds table atomically (temporary file, then rename)."""
    from mambava.io import write_csv

    write_csv(folds, path)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds table written by :func:`write_folds`; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: folds file not found (run `dvc repro folds`)")
    from mambava.checks import InputError

    try:
        df = pd.read_csv(path, dtype={"video": str, "split": str, "group": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a readable folds table ({str(exc).splitlines()[0]})") from None
    missing = set(FOLD_COLUMNS) - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)}")
    return df


def fold_summary(folds: pd.DataFrame) -> dict:
    """Videos and frames of the encoder's videos and of each CV fold, for the stage's metrics file.
    (Under the clean protocol the encoder's videos are in no CV fold: they train every fold.)"""
    pool = folds[folds["split"] != "test"]
    encoder = folds[folds["encoder"] == 1]
    out = {"n_splits": int(pool["cv_fold"].max()), "encoder_videos": int(len(encoder)),
           "encoder_frames": int(encoder["n_frames"].sum())}
    for f, part in pool[pool["cv_fold"] > 0].groupby("cv_fold"):
        out[f"fold{f}_videos"] = int(len(part))
        out[f"fold{f}_frames"] = int(part["n_frames"].sum())
    return out


def run_folds(cfg) -> pd.DataFrame:
    """The ``folds`` stage: folds of the index's videos to ``folds.file``, a summary beside it."""
    from mambava.data.affwild2 import load_index
    from mambava.io import write_json

    folds = make_folds(load_index(cfg.data.index), cfg.folds.n_splits, cfg.folds.seed, cfg.protocol,
                       cfg.folds.encoder_fraction)
    path = Path(cfg.folds.file)
    write_folds(folds, path)
    write_json(path.with_suffix(".json"), fold_summary(folds))
    return folds
