"""``mambava predict`` without ``--stream``: each input whole, into ``<out>/<name>.csv``, ``.png``
[, ``.mp4``]."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from mambava.predict.predictor import Predictor
from mambava.predict.tables import plot, predict_folder_table, predict_video_table, write_table
from mambava.video.overlay import write_overlay

log = logging.getLogger("mambava.predict")


def run(pred: Predictor, inputs: Iterable[str | Path], out: str | Path, n_faces: int = 1, overlay: bool = False,
        progress: bool = True) -> list[Path]:
    """Predict each input (video file or cropped folder) into ``out``; returns the CSV paths."""
    from mambava.video.decode import VideoError

    out = Path(out)
    written = []
    for item in inputs:
        item = Path(item)
        t0 = time.perf_counter()
        if item.is_dir():
            if overlay:
                log.warning("%s: a cropped folder has no video to draw on; no overlay", item)
            df = predict_folder_table(pred, item)
            name = item.name
        elif item.is_file() or not item.exists():
            if not item.exists():
                raise VideoError(f"{item}: no such file")
            work = out / "crops"
            df = predict_video_table(pred, item, work, n_faces, progress)
            name = item.stem
            if overlay:
                write_overlay(item, df, work, pred.crop, out / f"{name}.mp4", n_faces)
        write_table(df, out / f"{name}.csv")
        plot(df, out / f"{name}.png", title=f"{name}: valence and arousal ({pred.source})")
        n_face = int(df["valence"].notna().sum())
        log.info("%s: %d frames, %d with a face, in %.1f s -> %s", item, df["frame"].nunique(), n_face,
                 time.perf_counter() - t0, out / f"{name}.csv")
        written.append(out / f"{name}.csv")
    return written
