"""``mambava predict --stream``: rows as frames arrive from a file or a camera, written and
flushed one by one, then plotted; with ``--overlay`` the MP4 drawn as they come."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.errors import UserError
from mambava.io import publish, temporary
from mambava.predict.predictor import Predictor
from mambava.predict.stream_state import FaceStream, encode_crop
from mambava.predict.tables import COLUMNS, DECIMALS, plot
from mambava.video.overlay import VideoWriter, draw

log = logging.getLogger("mambava.predict")


def stream(pred: Predictor, source: str | Path, n_faces: int = 1) -> Iterator[tuple]:
    """Rows ``(frame, time_s, face, valence, arousal, frame, observations)`` as each frame
    arrives from a file or camera (valence/arousal NaN where no face)."""
    from mambava.video.crop import crop_stream

    slots = [FaceStream(pred.model, pred.device) for _ in range(n_faces)]
    for cf in crop_stream(source, pred.crop, n_faces):
        for k, crop in enumerate(cf.crops):
            feats = None if crop is None else encode_crop(pred, crop)
            v = slots[k].step(feats)
            va = (np.nan, np.nan) if v is None else v
            yield cf.frame.number, cf.frame.time_s, k + 1, va[0], va[1], cf


def run_stream(pred: Predictor, source: str | Path, out: str | Path, n_faces: int = 1, overlay: bool = False,
               echo: bool = True) -> Path:
    """Stream ``source`` into ``out/<name>.csv`` row by row (flushed each frame; on Ctrl-C what was
    done is kept), then plot it; with ``overlay`` also ``<name>.mp4`` drawn as frames arrive."""
    from mambava.video.decode import is_camera, probe

    out = Path(out)
    name = f"camera{str(source).split('video')[-1].split(':')[-1]}" if is_camera(source) else Path(source).stem
    path = out / f"{name}.csv"
    out.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    writer = None
    if overlay:
        writer = VideoWriter(out / f"{name}.mp4", 30.0 if is_camera(source) else probe(source).fps)
    rows = []
    t0 = time.perf_counter()
    interrupted = False
    try:
        with open(tmp, "w") as f:
            f.write(",".join(COLUMNS) + "\n")
            pending = []
            for frame, t, face, v, a, cf in stream(pred, source, n_faces):
                vals = "," if np.isnan(v) else f"{v:.{DECIMALS}f},{a:.{DECIMALS}f}"
                f.write(f"{frame},{t:.{DECIMALS}f},{face},{vals}\n")
                f.flush()
                rows.append((frame, t, face, v, a))
                pending.append((face, v, a))
                if echo:
                    print(f"frame {frame} t {t:.3f}s face {face}: " + ("no face" if np.isnan(v) else f"V {v:+.3f} A {a:+.3f}"))
                if len(pending) == n_faces:
                    if writer is not None:
                        img = cf.frame.image
                        for (k, vv, aa), o in zip(pending, cf.faces):
                            img = draw(img, None if o is None else o.pose, (vv, aa), pred.crop,
                                       "" if n_faces == 1 else f"{k}: ")
                        writer.write(img)
                    pending = []
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        tmp.unlink(missing_ok=True)
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    if not rows:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{source}: no frame was read")
    publish(tmp, path)
    df = pd.DataFrame(rows, columns=COLUMNS)
    plot(df, out / f"{name}.png", title=f"{name}: valence and arousal, streamed ({pred.source})")
    secs = time.perf_counter() - t0
    log.info("%s: %d frames streamed in %.1f s (%.1f frames/s)%s -> %s", source, df["frame"].nunique(), secs,
             df["frame"].nunique() / secs, " (interrupted)" if interrupted else "", path)
    return path
