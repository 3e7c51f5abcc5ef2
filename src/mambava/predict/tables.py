"""The CSV table of a video or cropped folder (one row per frame and face) and its plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mambava.io import write_figure
from mambava.predict.predictor import Predictor

COLUMNS = ["frame", "time_s", "face", "valence", "arousal"]
DECIMALS = 6


def _table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat(parts, ignore_index=True)[COLUMNS]
    return df.sort_values(["frame", "face"], kind="stable").reset_index(drop=True)


def predict_folder_table(pred: Predictor, folder: str | Path, fps: float | None = None) -> pd.DataFrame:
    """The CSV table of an already cropped folder (time_s = (frame - 1) / fps, crop.fps by default)."""
    fps = fps or pred.crop.fps
    df = pred.predict_folder(folder)
    df.insert(1, "time_s", (df["frame"] - 1) / fps)
    df.insert(2, "face", 1)
    return df[COLUMNS]


def predict_video_table(pred: Predictor, video: str | Path, work: str | Path, n_faces: int = 1,
                        progress: bool = True) -> pd.DataFrame:
    """The CSV table of a raw video: crops into ``work`` (kept; reused when there), then features
    and the temporal model per face."""
    from mambava.video.crop import LOG_DIR, crop_video, face_names, is_done

    video, work = Path(video), Path(work)
    names = face_names(video.stem, n_faces)
    if not all(is_done(work, n) for n in names):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            from mambava.video.decode import probe

            bar = tqdm(total=probe(video).n_frames or None, unit="frame", desc=f"crop {video.name}")
        try:
            crop_video(video, work, pred.crop, n_faces, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
    parts = []
    for k, name in enumerate(names):
        log_df = pd.read_csv(work / LOG_DIR / f"{name}.csv")
        n = len(log_df)
        folder = work / "cropped_aligned" / name
        if folder.is_dir():
            vals = pred.predict_folder(folder, n_frames=n)
        else:  # this face was never seen
            vals = pd.DataFrame({"frame": np.arange(1, n + 1), "valence": np.nan, "arousal": np.nan})
        vals.insert(1, "time_s", log_df["time_s"].to_numpy())
        vals.insert(2, "face", k + 1)
        parts.append(vals[COLUMNS])
    return _table(parts)


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    from mambava.evaluate import write_csv

    write_csv(df, path, float_format=f"%.{DECIMALS}f")


def plot(df: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Valence and arousal over time (one panel per face), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = sorted(df["face"].unique())
    fig, axes = plt.subplots(len(faces), 1, figsize=(10, 3.2 * len(faces)), squeeze=False, sharex=True)
    for ax, face in zip(axes[:, 0], faces):
        d = df[df["face"] == face]
        ax.plot(d["time_s"], d["valence"], color="tab:blue", lw=1.2, label="valence")
        ax.plot(d["time_s"], d["arousal"], color="tab:red", lw=1.2, label="arousal")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("value" if len(faces) == 1 else f"face {face} ({'left' if face == 1 else 'right'})")
        no_face = d["valence"].isna().to_numpy()
        if no_face.any():
            t = d["time_s"].to_numpy()
            ax.fill_between(t, -1.05, 1.05, where=no_face, color="0.9", step="mid", label="no face")
        ax.legend(loc="upper right", ncol=3, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    write_figure(fig, Path(path), format="png", dpi=110)
    plt.close(fig)
