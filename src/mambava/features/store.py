"""The feature store: one ``<video>.npy`` (float16, frames x dims, row i = frame i+1) and one
``<video>.mask.npy`` (bool: the frame had a face image) per video in a folder, with the
fingerprint of what made them (``_fingerprint.json``). Written by the ``features`` stage
(:mod:`mambava.features.extract`) and the oracle level (:mod:`mambava.data.oracle`), read by
training, evaluation, prediction and the book.

Each array is written atomically (:func:`save_array`); a folder made with another fingerprint
is emptied before new arrays go in (:func:`prepare_dir`), so stale features never mix with new.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np

from mambava.checks import InputError
from mambava.io import write_npy, write_text

log = logging.getLogger("mambava.features.extract")  # the messages of the features stage

FINGERPRINT = "_fingerprint.json"



def feature_path(out_dir: str | Path, video: str) -> Path:
    return Path(out_dir) / f"{video}.npy"



def mask_path(out_dir: str | Path, video: str) -> Path:
    return Path(out_dir) / f"{video}.mask.npy"



def load_features(out_dir: str | Path, video: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features (n_frames, dim) float16, face mask (n_frames,) bool) of one video, memory-mapped."""
    fp = feature_path(out_dir, video)
    if not fp.exists():
        raise FileNotFoundError(f"{fp}: no features for video {video!r} (run `dvc repro features`)")
    mode = "r" if mmap else None
    arrays = []
    for p in (fp, mask_path(out_dir, video)):
        try:
            arrays.append(np.load(p, mmap_mode=mode, allow_pickle=False))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: missing for video {video!r} (run `dvc repro features`)") from None
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{p}: not a readable .npy array ({exc}); rerun `dvc repro features`") from None
    feats, mask = arrays
    if feats.ndim != 2 or mask.shape != (feats.shape[0],):
        raise InputError(f"{fp}: shape {feats.shape} with a mask of shape {mask.shape} (expected (frames, dim) and (frames,))")
    return feats, mask



def fill_missing(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Forward-fill rows where ``mask`` is False, backward-fill a leading gap; all False -> zeros.

    values: (n, d), mask: (n,) bool. Returns a new array of the same dtype.
    """
    values = np.asarray(values)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(values)
    n = len(mask)
    # index of the latest face frame at or before each row; before the first: the first one
    src = np.where(mask, np.arange(n), -1)
    np.maximum.accumulate(src, out=src)
    src[src < 0] = int(np.argmax(mask))
    return values[src]



def save_array(path: Path, array: np.ndarray, kill: bool = False) -> None:
    """``np.save`` atomically (``<name>.tmp``, then rename); ``kill``: the testing hook of
    :data:`mambava.features.extract.KILL_AFTER_ENV` (SIGKILL between the write and the rename)."""
    write_npy(path, array, before_replace=(lambda: os.kill(os.getpid(), signal.SIGKILL)) if kill else None)



def is_done(out_dir: Path, video: str, n_frames: int, dim: int | None) -> bool:
    fp, mp = feature_path(out_dir, video), mask_path(out_dir, video)
    if not (fp.exists() and mp.exists()):
        return False
    try:
        f = np.load(fp, mmap_mode="r")
        m = np.load(mp, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return f.dtype == np.float16 and f.shape[0] == n_frames and (dim is None or f.shape[1] == dim) and m.shape == (n_frames,)



def prepare_dir(out_dir: Path, fingerprint: dict | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob("*.tmp"):  # partial writes of an interrupted run
        tmp.unlink()
    fp_file = out_dir / FINGERPRINT
    if fingerprint is None:
        return
    if fp_file.exists():
        try:
            old = json.loads(fp_file.read_text())
        except ValueError:
            old = None
        if old == fingerprint:
            return
        stale = list(out_dir.glob("*.npy"))
        if stale:
            log.warning("%s: features were made by another encoder or setting; removing %d old arrays", out_dir, len(stale))
            for p in stale:
                p.unlink()
    elif any(out_dir.glob("*.npy")):
        log.warning("%s: arrays without a fingerprint; removing them", out_dir)
        for p in out_dir.glob("*.npy"):
            p.unlink()
    write_text(fp_file, json.dumps(fingerprint, indent=2, sort_keys=True))
