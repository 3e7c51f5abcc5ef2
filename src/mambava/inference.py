"""What training and evaluation share: runs, devices, videos in memory, the model, prediction.

A *run* is one (level, variant, fold, seed): :func:`mambava.runtime.train_dir` and
:func:`mambava.runtime.eval_dir` say where its files live. Videos
are read as :class:`mambava.data.windows.Video` (features memory-mapped from the ``features``
stage, labels from the index's annotation files, ``-5`` where not annotated or not available).

Prediction (:func:`predict_video`) is the one path used by the in-training validation, the
``evaluate`` stage and the test submission, so the checkpoint is chosen with the same inference
as it is scored with:

- ``whole``: the video in one pass (the models take any length);
- ``windows``: windows of ``w`` frames with stride ``s`` (the authors: 500/500), the last one
  padded; each window starts from an empty state, and a frame covered by several windows takes
  the prediction of the first (the one that saw the most context before it).

Outputs are clipped to [-1, 1], the range of the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mambava.checks import InputError, require_finite
from mambava.data.windows import UNLABELLED, Video, pad_to, window_starts

__all__ = ["load_videos", "predict_video", "predict_videos", "scan_backend"]

log = logging.getLogger("mambava.inference")


def scan_backend(model_cfg, device: torch.device) -> str:
    """The selective-scan backend the model uses on ``device`` ("none" without a Mamba)."""
    if getattr(model_cfg, "temporal", "mamba") != "mamba":
        return "none"
    from mambava.models.ssm import backend_description

    return backend_description(model_cfg.scan_backend, device)


# --------------------------------------------------------------------------- videos
def load_videos(index: pd.DataFrame, names: Sequence[str], features_dir: str | Path) -> list[Video]:
    """Features (memory-mapped float16) and labels of ``names``, in that order.

    Videos without an annotation file (real Aff-Wild2 test videos) get all-``-5`` labels.
    Errors name the files that disagree.
    """
    from mambava.data.affwild2 import read_annotation
    from mambava.features.store import feature_path, load_features

    rows = index.set_index("video")
    missing = [v for v in names if v not in rows.index]
    if missing:
        raise InputError(f"videos not in the index: {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         "(folds or features from another index? rerun `dvc repro`)")
    videos = []
    for name in names:
        fp = feature_path(features_dir, name)
        if not Path(fp).exists():
            raise FileNotFoundError(f"{fp}: features missing for video {name} (run `dvc repro features`)")
        feats, _mask = load_features(features_dir, name)
        require_finite(feats, f"{fp} (row i = frame i+1; re-extract with `dvc repro -f features`)")
        ann = rows.at[name, "annotation"]
        if isinstance(ann, str) and ann:
            labels = read_annotation(ann)
            if len(labels) != len(feats):
                raise InputError(f"{fp}: {len(feats)} frames but {ann} has {len(labels)} label lines (video {name})")
        else:
            labels = np.full((len(feats), 2), UNLABELLED, dtype=np.float32)
        videos.append(Video(name, feats, labels))
    return videos


# --------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_video(
    model: nn.Module,
    features: np.ndarray,
    device: torch.device,
    inference: str = "whole",
    w: int = 500,
    s: int = 500,
    batch_size: int = 16,
) -> np.ndarray:
    """Valence/arousal of every frame: features (n, dim) -> (n, 2) float32 in [-1, 1].

    The caller puts the model in eval mode.
    """
    n = len(features)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if inference == "whole":
        x = torch.from_numpy(np.asarray(features, dtype=np.float32))[None].to(device)
        out = model(x)[0].float().cpu().numpy()
    elif inference == "windows":
        starts = window_starts(n, w, s, "pad")
        out = np.full((n, 2), np.nan, dtype=np.float32)
        for b in range(0, len(starts), batch_size):
            chunk = starts[b : b + batch_size]
            x = np.stack([pad_to(np.asarray(features[t : t + w], dtype=np.float32), w, 0.0) for t in chunk])
            y = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
            for t, yy in zip(chunk, y):
                seg = out[t : t + w]
                fresh = np.isnan(seg[:, 0])  # first window covering a frame wins
                seg[fresh] = yy[: len(seg)][fresh]
    else:
        raise ValueError(f"unknown inference {inference!r}; choose whole or windows")
    require_finite(out, "model predictions")  # before the clip, which would turn inf into +-1
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def predict_videos(model: nn.Module, videos: Sequence[Video], device: torch.device, eval_cfg) -> list[np.ndarray]:
    """:func:`predict_video` for each video with the ``evaluate`` section's inference settings."""
    was_training = model.training
    model.eval()
    try:
        return [
            predict_video(model, v.features, device, eval_cfg.inference, eval_cfg.window, eval_cfg.stride)
            for v in videos
        ]
    finally:
        model.train(was_training)
