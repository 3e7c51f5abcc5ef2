"""Drawing on video: a frame with the face's crop square and its values (:func:`draw`), an MP4
writer that publishes atomically (:class:`VideoWriter`), and the overlay of a whole video from
the poses ``data crop`` logged (:func:`write_overlay`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mambava.io import publish, temporary


def draw(image: np.ndarray, pose, values: tuple[float, float] | None, crop_cfg, label: str = "") -> np.ndarray:
    """The frame with the face's crop square (where the crop came from) and V/A written on it."""
    import cv2

    from mambava.video.faces import alignment_matrix

    out = np.ascontiguousarray(image.copy())
    if pose is None:
        return out
    m = np.vstack([alignment_matrix(pose, crop_cfg.size, crop_cfg.eye_distance, crop_cfg.eye_y), [0, 0, 1]])
    inv = np.linalg.inv(m)
    s = crop_cfg.size
    sq = np.array([[0, 0, 1], [s, 0, 1], [s, s, 1], [0, s, 1]], float) @ inv.T
    pts = sq[:, :2].round().astype(np.int32)
    thick = max(1, round(min(image.shape[:2]) / 240))
    cv2.polylines(out, [pts], True, (0, 255, 0), thick, cv2.LINE_AA)
    text = "no face" if values is None or np.isnan(values[0]) else f"{label}V {values[0]:+.2f}  A {values[1]:+.2f}"
    scale = max(0.35, min(image.shape[:2]) / 600)
    org = (int(pts[:, 0].min()), max(12, int(pts[:, 1].min()) - 6))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


class VideoWriter:
    """H.264 MP4 (PyAV; MPEG-4 part 2 where libx264 is missing), written to a temporary file and
    renamed into place by :meth:`close`."""

    def __init__(self, path: str | Path, fps: float):
        import av
        from fractions import Fraction

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary(self.path, ".tmp.mp4")
        self.c = av.open(str(self.tmp), "w")
        try:
            self.s = self.c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.s.options = {"crf": "20", "preset": "veryfast"}
        except Exception:  # pragma: no cover - a PyAV without libx264
            self.s = self.c.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        self.s.pix_fmt = "yuv420p"
        self.started = False

    def write(self, image: np.ndarray) -> None:
        import av

        if not self.started:
            h, w = image.shape[:2]
            self.s.height, self.s.width = h - h % 2, w - w % 2
            self.started = True
        image = image[: self.s.height, : self.s.width]
        for pkt in self.s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            self.c.mux(pkt)

    def close(self) -> None:
        for pkt in self.s.encode():
            self.c.mux(pkt)
        self.c.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.c.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def poses_from_log(work: Path, name: str):
    """Per frame the smoothed pose that ``data crop`` logged (None where no face)."""
    import math

    from mambava.video.crop import LOG_DIR
    from mambava.video.faces import Pose

    df = pd.read_csv(work / LOG_DIR / f"{name}.csv")
    return [None if s == "none" else Pose(x, y, d, math.radians(r))
            for s, x, y, d, r in zip(df["source"], df["x"], df["y"], df["eye_distance"], df["roll_deg"])]


def write_overlay(video: str | Path, df: pd.DataFrame, work: Path, crop_cfg, out: str | Path, n_faces: int = 1) -> None:
    """``out`` (MP4): every frame of ``video`` with each face's crop square and values."""
    from mambava.video.crop import face_names
    from mambava.video.decode import probe, read_frames

    video = Path(video)
    names = face_names(video.stem, n_faces)
    poses = [poses_from_log(work, n) for n in names]
    values = {(int(f), int(k)): (v, a) for f, k, v, a in zip(df["frame"], df["face"], df["valence"], df["arousal"])}
    w = VideoWriter(out, probe(video).fps)
    try:
        for fr in read_frames(video):
            img = fr.image
            for k in range(n_faces):
                p = poses[k][fr.number - 1] if fr.number - 1 < len(poses[k]) else None
                img = draw(img, p, values.get((fr.number, k + 1)), crop_cfg, "" if n_faces == 1 else f"{k + 1}: ")
            w.write(img)
    except BaseException:
        w.abort()
        raise
    w.close()
