"""``mambava data crop``: raw videos -> face crops in the official Aff-Wild2 layout.

For every video file of a folder (mp4, avi, mov, mkv)::

    ROOT/cropped_aligned/<video>/00001.jpg     the aligned crops (crop.size square, JPEG),
                                               numbered by the video's own 1-based frame index;
                                               no file for a frame where no face was found
    ROOT/crop_log/<video>.csv                  per frame: time_s, source (detected / tracked /
                                               none), eye midpoint x, y, eye distance, roll
                                               (degrees) and the face box, in frame pixels
    ROOT/crop_log/<video>.json                 summary (frames, detected, tracked, speed);
                                               written last: its presence means "done"

With ``faces=2`` a video gives ``<video>_left`` and ``<video>_right`` (assigned by position when
first seen, then kept by tracking). How faces are found and aligned: :mod:`mambava.video.faces`;
how they are tracked and smoothed: :mod:`mambava.video.tracking`.

Resumable per video: a video is cropped into ``ROOT/.crop_partial/<video>/`` and renamed into
``cropped_aligned/`` when complete; a rerun skips videos whose summary exists and redoes the
rest. Videos run in parallel processes (``crop.workers``, default all cores). A video that
cannot be read, or where no face is found at all, is reported in one line naming the file and
leaves nothing behind; the others are still cropped.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambava.data.affwild2 import CROPS
from mambava.io import replace_dir, write_json, write_text
from mambava.video.decode import Frame, VideoError, frames, is_camera, list_videos, probe
from mambava.video.faces import HaarFaces, crop_face
from mambava.video.tracking import FaceTracker, Observation

log = logging.getLogger("mambava.crop")

LOG_DIR = "crop_log"
PARTIAL = ".crop_partial"
LOG_COLUMNS = ["frame", "time_s", "source", "x", "y", "eye_distance", "roll_deg", "box_x", "box_y", "box_w", "box_h"]


class NoFaceError(VideoError):
    """A video in which no face was found in any frame."""


def face_names(video: str, n_faces: int) -> list[str]:
    return [video] if n_faces == 1 else [f"{video}_left", f"{video}_right"]


def make_tracker(cfg, fps: float, n_faces: int = 1) -> FaceTracker:
    """The tracker of a ``crop`` config section for a video at ``fps``."""
    det = HaarFaces(work_size=cfg.work_size, min_face=cfg.min_face)
    return FaceTracker(n_faces, fps, max_gap=int(round(cfg.max_gap_s * fps)), detector=det,
                       min_cutoff=cfg.smooth_min_cutoff, beta=cfg.smooth_beta)


def encode_jpeg(crop: np.ndarray, quality: int) -> bytes:
    """RGB crop -> JPEG bytes (OpenCV's libjpeg; what ``data crop`` writes and streaming decodes)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class CroppedFrame:
    frame: Frame
    faces: list[Observation | None]  # per face slot
    crops: list[np.ndarray | None]  # aligned RGB crops, per slot


def crop_stream(source, cfg, n_faces: int = 1, fps: float | None = None) -> Iterator[CroppedFrame]:
    """Frames of a video file or camera with their tracked faces and aligned crops, in order."""
    if fps is None:
        fps = 30.0 if is_camera(source) else probe(source).fps
    tracker = make_tracker(cfg, fps, n_faces)
    for fr in frames(source):
        obs = tracker.step(fr.image)
        crops = [None if o is None else crop_face(fr.image, o.pose, cfg.size, cfg.eye_distance, cfg.eye_y) for o in obs]
        yield CroppedFrame(fr, obs, crops)


def _log_row(fr: Frame, o: Observation | None) -> list:
    if o is None:
        return [fr.number, round(fr.time_s, 6), "none"] + [""] * 8
    p, b = o.pose, o.box
    return [fr.number, round(fr.time_s, 6), o.source, round(p.x, 2), round(p.y, 2), round(p.distance, 2),
            round(math.degrees(p.angle), 3), round(b.x, 1), round(b.y, 1), round(b.w, 1), round(b.h, 1)]


def is_done(root: Path, name: str) -> bool:
    return (root / LOG_DIR / f"{name}.json").exists() and (root / CROPS / name).is_dir()


def crop_video(path: str | Path, root: str | Path, cfg, n_faces: int = 1, progress=None) -> dict:
    """Crop one video into ``root`` (module doc). ``progress(n)`` is called with frame counts.

    Returns the summary; raises VideoError (unreadable) or NoFaceError, leaving nothing behind.
    """
    path, root = Path(path), Path(root)
    names = face_names(path.stem, n_faces)
    staging = [root / PARTIAL / n for n in names]
    for s in staging:
        shutil.rmtree(s, ignore_errors=True)
        s.mkdir(parents=True)
    rows: list[list[list]] = [[] for _ in names]
    counts = [{"detected": 0, "tracked": 0, "none": 0} for _ in names]
    t0 = time.perf_counter()
    n = 0
    pending = 0
    try:
        for cf in crop_stream(path, cfg, n_faces):
            n += 1
            for k, (o, crop) in enumerate(zip(cf.faces, cf.crops)):
                rows[k].append(_log_row(cf.frame, o))
                counts[k][o.source if o is not None else "none"] += 1
                if crop is not None:
                    (staging[k] / f"{cf.frame.number:05d}.jpg").write_bytes(encode_jpeg(crop, cfg.jpeg_quality))
            pending += 1
            if progress is not None and pending >= 10:
                progress(pending)
                pending = 0
        if progress is not None and pending:
            progress(pending)
        if all(c["none"] == n for c in counts):
            raise NoFaceError(f"{path}: no face found in any of its {n} frames")
    except BaseException:
        for s in staging:
            shutil.rmtree(s, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    info = probe(path)
    summaries = []
    for k, name in enumerate(names):
        final = root / CROPS / name
        if counts[k]["none"] == n:  # this person was never seen: no folder
            shutil.rmtree(staging[k], ignore_errors=True)
        else:
            replace_dir(staging[k], final)
        csv = ",".join(LOG_COLUMNS) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows[k])
        write_text(root / LOG_DIR / f"{name}.csv", csv)
        summary = {
            "video": name, "source": str(path), "frames": n, "fps": info.fps, "width": info.width, "height": info.height,
            "frames_with_face": n - counts[k]["none"], **{f"frames_{s}": c for s, c in counts[k].items()},
            "detection_rate": round(counts[k]["detected"] / n, 4) if n else 0.0,
            "face_rate": round((n - counts[k]["none"]) / n, 4) if n else 0.0,
            "seconds": round(seconds, 3), "frames_per_second": round(n / seconds, 2) if seconds > 0 else None,
            "faces": n_faces, "size": cfg.size, "eye_distance": cfg.eye_distance, "eye_y": cfg.eye_y,
        }
        write_json(root / LOG_DIR / f"{name}.json", summary)
        summaries.append(summary)
    try:
        (root / PARTIAL).rmdir()
    except OSError:
        pass
    return {"video": path.stem, "frames": n, "seconds": round(seconds, 3), "faces": summaries}


# --------------------------------------------------------------------------- many videos
def _worker(args):
    path, root, cfg, n_faces, queue = args
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    try:
        return crop_video(path, root, cfg, n_faces, progress=queue.put), None
    except VideoError as exc:
        return None, str(exc)


def run(videos: str | Path, root: str | Path, cfg, n_faces: int = 1, workers: int | None = None,
        progress: bool = True) -> tuple[list[dict], list[str]]:
    """Crop every video of a folder (or one video file) into ``root``; skip finished ones.

    Returns (summaries of the videos cropped now, one error line per video that failed).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    videos, root = Path(videos), Path(root)
    paths = [videos] if videos.is_file() else list_videos(videos)
    if not paths:
        raise VideoError(f"{videos}: no video files (mp4, avi, mov, mkv)")
    todo = [p for p in paths if not all(is_done(root, n) for n in face_names(p.stem, n_faces))]
    skipped = len(paths) - len(todo)
    if skipped:
        log.info("%d of %d videos already cropped in %s; skipping them", skipped, len(paths), root)
    errors: list[str] = []
    total = 0
    for p in todo:
        try:
            total += probe(p).n_frames
        except VideoError:
            pass
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    summaries: list[dict] = []
    bar = tqdm(total=total or None, unit="frame", desc="crop", disable=not progress, smoothing=0.1)
    try:
        if workers == 1:
            for p in todo:
                try:
                    summaries.append(crop_video(p, root, cfg, n_faces, progress=bar.update))
                except VideoError as exc:
                    errors.append(str(exc))
        else:
            ctx = mp.get_context("fork")
            with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                queue = manager.Queue()
                futures = [pool.submit(_worker, (p, root, cfg, n_faces, queue)) for p in todo]
                while True:
                    done = all(f.done() for f in futures)
                    while not queue.empty():
                        bar.update(queue.get())
                    if done:
                        break
                    time.sleep(0.1)
                for f in futures:
                    summary, err = f.result()
                    if err:
                        errors.append(err)
                    else:
                        summaries.append(summary)
    finally:
        bar.close()
    frames_done = sum(s["frames"] for s in summaries)
    secs = bar.format_dict.get("elapsed") or 0
    if summaries:
        log.info("cropped %d videos, %d frames in %.1f s (%.1f frames/s) into %s",
                 len(summaries), frames_done, secs, frames_done / secs if secs else 0, root / CROPS)
    return summaries, errors
