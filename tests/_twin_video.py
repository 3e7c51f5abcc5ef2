"""A short MP4 of a twin face (mambava.data.synthetic's renderer) at a known place, with the true
eye centres and roll of every frame computed from the renderer's own geometry, for the tests of
``data crop`` and ``predict`` on raw video.

    python tests/_twin_video.py OUT.mp4 [--frames N] [--faces 1|2]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from mambava.data.render import Renderer, expression_track, sample_identity
from mambava.data.synthetic import latent_trajectories


def true_eyes(ident, p: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Iris centres (left, right on the image) in the rendered ``size`` image (Renderer.render)."""
    B = 2 * size
    centre = np.array([(0.5 + p["dx"]) * B, (0.53 + p["dy"]) * B])
    rx = ident.face_w * B * (1 - 0.22 * abs(p["yaw"]))
    ry = ident.face_h * B
    fx, fy = p["yaw"] * rx * 0.45, p["pitch"] * ry * 0.25
    ew = ident.eye_size * B * 1.35
    pts = []
    for side in (-1, 1):
        ex = side * ident.eye_gap * B / 2 * (1 - 0.2 * side * p["yaw"]) + fx + 0.3 * p["yaw"] * ew
        pts.append([ex, -0.12 * ry + fy])
    th = math.radians(p["roll"])
    c, s = math.cos(th), math.sin(th)
    r = np.array(pts) @ np.array([[c, s], [-s, c]]) + centre
    return r[0] / 2, r[1] / 2  # the renderer draws at 2x and halves


def render_clip(n_frames: int = 60, size: int = 200, canvas=(480, 360), seed: int = 0, fps: float = 30.0,
                faces: int = 1) -> tuple[list[np.ndarray], dict]:
    """Frames (RGB) and truth: per face, eyes (n, 2, 2) in canvas pixels and roll (n,) degrees."""
    rng = np.random.default_rng(seed)
    W, H = canvas
    frames = [np.full((H, W, 3), (70, 90, 110), np.uint8) for _ in range(n_frames)]
    truth = {"eyes": [], "roll": [], "fps": fps}
    for f in range(faces):
        ident = sample_identity(rng)
        latent = latent_trajectories(rng, n_frames, fps)
        tr = expression_track(rng, latent, fps)
        ren = Renderer(ident, size, seed=int(rng.integers(2**31)))
        eyes, rolls = [], []
        for t in range(n_frames):
            p = {k: float(v[t]) for k, v in tr.items()}
            p.update(yaw=0.0, pitch=0.0, occlusion=0.0, blur=0.0, dx=0.0, dy=0.0,
                     roll=8.0 * math.sin(2 * math.pi * t / max(n_frames, 1)))
            img = np.asarray(ren.render(p))
            if faces == 1:
                ox = int((W - size) / 2 + 40 * math.sin(2 * math.pi * t / n_frames))
            else:
                ox = 10 + f * (W - size - 20)
            oy = int((H - size) / 2 + 10 * math.cos(2 * math.pi * t / n_frames))
            frames[t][oy:oy + size, ox:ox + size] = img
            le, re = true_eyes(ident, p, size)
            eyes.append([le + (ox, oy), re + (ox, oy)])
            rolls.append(p["roll"])
        truth["eyes"].append(np.array(eyes))
        truth["roll"].append(np.array(rolls))
    return frames, truth


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: float = 30.0) -> None:
    """H.264 (yuv420p, crf 18) with PyAV."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast"}
        for img in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def make_twin_video(path: str | Path, **kw) -> dict:
    frames, truth = render_clip(**kw)
    write_mp4(path, frames, truth["fps"])
    return truth


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--faces", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make_twin_video(a.out, n_frames=a.frames, faces=a.faces, seed=a.seed)
