"""Frames from a video file (PyAV, i.e. FFmpeg) or a camera (OpenCV), one at a time.

A frame is :class:`Frame`: its 1-based number in decoding order (the video's own frame index, as
``ffmpeg -i video %05d.jpg`` numbers them, which is how Aff-Wild2's frames are numbered), its
time in seconds (the presentation time stamp; ``(number - 1) / fps`` where the container has
none) and the RGB image (H, W, 3) uint8.

Every failure to read is a :class:`VideoError` whose message starts with the file (or camera)
name and says what is wrong in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambava.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
CAMERA_RE = re.compile(r"^(?:/dev/video(\d+)|camera:(\d+))$")


class VideoError(UserError):
    """A video (or camera) that cannot be read; the message names it."""


@dataclass(frozen=True)
class Frame:
    number: int  # 1-based, decoding order
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    n_frames: int  # from the container header; 0 when it does not say
    width: int
    height: int


def is_camera(source: str | Path) -> bool:
    return bool(CAMERA_RE.match(str(source)))


def list_videos(folder: str | Path) -> list[Path]:
    """Video files (VIDEO_EXTENSIONS, any case) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"{folder}: not a folder of videos")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _open(path: Path):
    import av

    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.InvalidDataError and friends
        why = getattr(exc, "strerror", None) or str(exc)
        raise VideoError(f"{path}: cannot be read as a video ({why})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Frame rate, frame count (header; 0 if unknown) and size of a video file."""
    path = Path(path)
    with _open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 30.0
        return VideoInfo(str(path), fps, int(s.frames or 0), int(s.codec_context.width), int(s.codec_context.height))


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Decode every frame of the first video stream, in order. Raises VideoError for a file that
    cannot be opened or decoded, or that holds no frame."""
    path = Path(path)
    container = _open(path)
    n = 0
    try:
        s = container.streams.video[0]
        s.thread_type = "AUTO"
        fps = float(s.average_rate or s.guessed_rate or 0) or 30.0
        try:
            for frame in container.decode(s):
                n += 1
                t = float(frame.time) if frame.time is not None else (n - 1) / fps
                yield Frame(n, t, frame.to_ndarray(format="rgb24"))
        except VideoError:
            raise
        except Exception as exc:
            if n == 0:
                raise VideoError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})") from None
            raise VideoError(f"{path}: decoding stopped after frame {n} ({type(exc).__name__}: {exc})") from None
    finally:
        container.close()
    if n == 0:
        raise VideoError(f"{path}: holds no video frame")


def read_camera(source: str, fps: float = 30.0) -> Iterator[Frame]:
    """Frames from a camera (``/dev/videoN`` or ``camera:N``) until it stops or the caller does."""
    import time

    import cv2

    m = CAMERA_RE.match(str(source))
    if not m:
        raise VideoError(f"{source}: not a camera name (use /dev/videoN or camera:N)")
    idx = int(m.group(1) or m.group(2))
    if str(source).startswith("/dev/") and not Path(source).exists():
        raise VideoError(f"{source}: no such camera")
    cap = cv2.VideoCapture(idx)
    if not cap.isOpened():
        raise VideoError(f"{source}: camera cannot be opened (is one attached?)")
    t0 = time.perf_counter()
    n = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                if n == 0:
                    raise VideoError(f"{source}: camera gave no frame")
                return
            n += 1
            yield Frame(n, time.perf_counter() - t0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()


def frames(source: str | Path) -> Iterator[Frame]:
    """:func:`read_camera` for a camera name, else :func:`read_frames`."""
    return read_camera(str(source)) if is_camera(source) else read_frames(source)
