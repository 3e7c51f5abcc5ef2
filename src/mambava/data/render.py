"""The synthetic twin's faces (:mod:`mambava.data.synthetic`): a person's fixed identity, the
per-frame expression track that the latent valence and arousal drive (with its noise, drifts,
blinks, head motion and talking), and the renderer that draws a frame of it. The generative
process is described in :mod:`mambava.data.synthetic`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

def _smooth_noise(rng, n, tau_frames, sd):
    """AR(1) noise with the given time constant (frames) and stationary sd."""
    phi = math.exp(-1.0 / max(tau_frames, 1e-6))
    eps = rng.normal(0, sd * math.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    x = rng.normal(0, sd)
    for t in range(n):
        x = phi * x + eps[t]
        out[t] = x
    return out


_SKIN = np.array([[255, 224, 196], [234, 192, 160], [210, 160, 120], [176, 122, 86], [130, 88, 60], [92, 60, 42]])



_HAIR = np.array([[30, 24, 20], [70, 50, 35], [120, 90, 55], [200, 170, 110], [150, 150, 150], [110, 40, 25]])



@dataclass(frozen=True)
class Identity:
    face_w: float  # half-width of the face, fraction of the image
    face_h: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int  # 0 short, 1 long, 2 none
    eye_gap: float
    eye_size: float
    mouth_w: float
    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]



def sample_identity(rng: np.random.Generator, bg: tuple | None = None) -> Identity:
    k = rng.uniform(0, len(_SKIN) - 1)
    lo = int(k)
    skin = (1 - (k - lo)) * _SKIN[lo] + (k - lo) * _SKIN[min(lo + 1, len(_SKIN) - 1)]
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3), 0, 255)
    if bg is None:
        base = rng.uniform(40, 220, 3)
        bg = (tuple(int(x) for x in base), tuple(int(x) for x in np.clip(base * rng.uniform(0.5, 0.9), 0, 255)))
    return Identity(
        face_w=float(rng.uniform(0.22, 0.29)),
        face_h=float(rng.uniform(0.30, 0.37)),
        skin=tuple(int(x) for x in skin),
        hair=tuple(int(x) for x in hair),
        hair_style=int(rng.integers(3)),
        eye_gap=float(rng.uniform(0.17, 0.23)),
        eye_size=float(rng.uniform(0.045, 0.06)),
        mouth_w=float(rng.uniform(0.16, 0.22)),
        bg_top=bg[0],
        bg_bottom=bg[1],
    )



def expression_track(rng: np.random.Generator, latent: np.ndarray, fps: float) -> dict[str, np.ndarray]:
    """Per-frame drawing parameters from the latent at face time (n, 2)."""
    n = len(latent)
    v, a = latent[:, 0], latent[:, 1]
    a01 = (a + 1) / 2
    sec = fps
    tr: dict[str, np.ndarray] = {}
    # Static evidence, noisy frame by frame and with a slow nuisance drift.
    tr["mouth_curve"] = np.clip(0.85 * v + rng.normal(0, 0.25, n) + _smooth_noise(rng, n, 2 * sec, 0.2), -1.3, 1.3)
    tr["brow_tilt"] = np.clip(-0.7 * v + rng.normal(0, 0.35, n) + _smooth_noise(rng, n, 2 * sec, 0.2), -1.3, 1.3)
    # Arousal's static cues are weak and carry a nuisance that wanders every few seconds (tau 2 s):
    # a second of frames says little; tens of seconds average the nuisance away.
    eye = 0.62 + 0.15 * a + rng.normal(0, 0.15, n) + _smooth_noise(rng, n, 2 * sec, 0.12)
    # Blinks: a Poisson process whose rate follows arousal (temporal evidence only).
    rate = 0.1 + 1.1 * a01**1.5  # blinks per second: 0.1 (calm) to 1.2 (aroused)
    onsets = rng.random(n) < rate / fps
    profile = np.array([0.55, 0.15, 0.0, 0.25, 0.65])
    blink = np.ones(n)
    for t in np.flatnonzero(onsets):
        seg = blink[t : t + len(profile)]
        np.minimum(seg, profile[: len(seg)], out=seg)
    tr["eye_open"] = np.clip(eye, 0.25, 1.1) * blink
    tr["blink_onset"] = onsets.astype(np.float32)
    # Talking bursts: mouth opening oscillates at ~4 Hz, more strongly with arousal.
    talking = (_smooth_noise(rng, n, 1.5 * sec, 1.0) > 0.3).astype(float) * np.exp(_smooth_noise(rng, n, 2 * sec, 0.5))
    phase = np.cumsum(2 * np.pi * rng.uniform(3.0, 5.0) / fps * np.ones(n))
    osc = 0.5 * (1 + np.sin(phase))
    rest = 0.05 + 0.04 * a + _smooth_noise(rng, n, 2 * sec, 0.035)  # the jaw at rest, with a nuisance
    tr["mouth_open"] = np.clip(rest + talking * (0.15 + 0.35 * a01) * osc + rng.normal(0, 0.03, n), 0, 0.8)
    # Head motion: AR(1) jitter whose innovation grows with arousal (temporal evidence only),
    # times a restlessness that wanders on its own (log-normal, sd 0.6 in log, tau 2 s): motion over a
    # second or two says little; its level over tens of seconds follows arousal.
    restless = np.exp(_smooth_noise(rng, n, 2 * sec, 0.6))
    sd = (0.0015 + 0.012 * a01**2) * restless
    jit = np.zeros((n, 3))
    for t in range(1, n):
        jit[t] = 0.85 * jit[t - 1] + sd[t] * rng.normal(0, 1, 3) * np.array([1.0, 1.0, 12.0])
    tr["motion_energy"] = np.r_[0.0, np.linalg.norm(np.diff(jit[:, :2], axis=0), axis=1)]
    # Slow pose, light, blur, occlusion.
    tr["dx"] = jit[:, 0] + _smooth_noise(rng, n, 4 * sec, 0.02)
    tr["dy"] = jit[:, 1] + _smooth_noise(rng, n, 4 * sec, 0.015)
    tr["roll"] = jit[:, 2] + _smooth_noise(rng, n, 5 * sec, 5.0)  # degrees
    tr["yaw"] = np.clip(_smooth_noise(rng, n, 5 * sec, 0.25), -0.7, 0.7)
    tr["pitch"] = np.clip(_smooth_noise(rng, n, 5 * sec, 0.2), -0.6, 0.6)
    tr["light_angle"] = rng.uniform(0, 2 * np.pi) + _smooth_noise(rng, n, 10 * sec, 0.8)
    tr["light_strength"] = np.clip(0.25 + _smooth_noise(rng, n, 8 * sec, 0.12), 0, 0.6)
    tr["brightness"] = np.clip(1.0 + _smooth_noise(rng, n, 8 * sec, 0.12), 0.6, 1.4)
    blur = rng.uniform(0, 0.6) + np.zeros(n)
    occl = np.zeros(n)
    occl_kind = np.zeros(n)
    for arr, per_s, lo, hi, peak in ((blur, 1 / 25, 0.5, 3.0, None), (occl, 1 / 30, 1.0, 4.0, 1.0)):
        for _ in range(rng.poisson(n / fps * per_s)):
            length = int(rng.uniform(lo, hi) * fps)
            start = int(rng.integers(0, max(1, n - length)))
            if peak is None:
                arr[start : start + length] += rng.uniform(1.0, 2.5)
            else:
                arr[start : start + length] = 1 + rng.integers(4)  # which region / object
                occl_kind[start : start + length] = rng.integers(2)
    tr["blur"] = blur
    tr["occlusion"] = occl
    tr["occlusion_kind"] = occl_kind
    return {k: np.asarray(x, dtype=np.float32) for k, x in tr.items()}



def _rot(points: np.ndarray, centre: np.ndarray, deg: float) -> list[float]:
    """``points`` (k, 2) rotated by ``deg`` and moved to ``centre``, as PIL's flat [x, y, x, y, ...]."""
    th = math.radians(deg)
    c, s = math.cos(th), math.sin(th)
    r = points @ np.array([[c, s], [-s, c]])
    return (r + centre).ravel().tolist()


@functools.lru_cache(maxsize=32)
def _unit_circle(k: int, start: float, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin at ``k`` angles from ``start`` to ``stop``: the same few per frame, computed once
    (read-only, since every caller shares them)."""
    t = np.linspace(start, stop, k)
    cos, sin = np.cos(t), np.sin(t)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def _ellipse(rx: float, ry: float, k: int = 36, start: float = 0.0, stop: float = 2 * np.pi) -> np.ndarray:
    cos, sin = _unit_circle(k, start, stop)
    return np.stack([rx * cos, ry * sin], axis=1)



class Renderer:
    """Draws one person's face frames. Precomputes what is fixed per video (background, grids)."""

    def __init__(self, identity: Identity, size: int, seed: int):
        self.id = identity
        self.size = size
        self.big = 2 * size  # draw at 2x then downsample: cheap antialiasing
        top, bottom = np.array(identity.bg_top, float), np.array(identity.bg_bottom, float)
        ramp = np.linspace(0, 1, self.big)[:, None, None]
        self.background = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (self.big, self.big, 3)).astype(np.uint8))
        g = np.linspace(-1, 1, size, dtype=np.float32)
        self.gx, self.gy = np.meshgrid(g, g)
        rng = np.random.default_rng(seed)
        self.noise = rng.normal(0, 4.0, (2 * size, 2 * size, 3)).astype(np.float32)
        self.rng = rng

    def render(self, p: dict[str, float]) -> Image.Image:
        ident, B = self.id, self.big
        img = self.background.copy()
        d = ImageDraw.Draw(img)
        yaw, pitch, roll = p["yaw"], p["pitch"], p["roll"]
        centre = np.array([(0.5 + p["dx"]) * B, (0.53 + p["dy"]) * B])
        rx = ident.face_w * B * (1 - 0.22 * abs(yaw))
        ry = ident.face_h * B
        fx = yaw * rx * 0.45  # features slide towards the turned side
        fy = pitch * ry * 0.25
        skin = ident.skin
        dark = tuple(int(c * 0.75) for c in skin)
        # neck and long hair behind the head
        d.polygon(_rot(np.array([[-0.45 * rx, 0.6 * ry], [0.45 * rx, 0.6 * ry], [0.55 * rx, 1.6 * ry], [-0.55 * rx, 1.6 * ry]]), centre, roll), fill=dark)
        if ident.hair_style == 1:
            d.polygon(_rot(_ellipse(1.18 * rx, 1.12 * ry) + [0, 0.25 * ry], centre, roll), fill=ident.hair)
        d.polygon(_rot(_ellipse(rx, ry), centre, roll), fill=skin)
        if ident.hair_style in (0, 1):
            cap = _ellipse(1.04 * rx, 0.62 * ry, 24, np.pi, 2 * np.pi) + [0, -0.56 * ry]  # fringe above the brows
            d.polygon(_rot(cap, centre, roll), fill=ident.hair)
        # eyes
        eye_y = -0.12 * ry + fy
        ew = ident.eye_size * B * 1.35
        for side in (-1, 1):
            ex = side * ident.eye_gap * B / 2 * (1 - 0.2 * side * yaw) + fx
            h = max(ident.eye_size * B * 0.75 * p["eye_open"], 0.4)
            almond = _ellipse(ew, h, 20) + [ex, eye_y]
            if p["eye_open"] > 0.12:
                d.polygon(_rot(almond, centre, roll), fill=(245, 245, 240), outline=(60, 40, 30))
                iris = _ellipse(0.45 * ew, min(0.45 * ew, h), 16) + [ex + 0.3 * yaw * ew, eye_y]
                d.polygon(_rot(iris, centre, roll), fill=(40, 30, 25))
            else:
                d.line(_rot(almond[:11], centre, roll), fill=(60, 40, 30), width=2)
            # brows: tilt > 0 raises the inner end (sad / worried), < 0 lowers it (angry)
            by = eye_y - 2.2 * ident.eye_size * B - 0.05 * ry * max(p["eye_open"] - 0.6, 0) * 3
            inner = np.array([ex - side * 0.9 * ew, by - p["brow_tilt"] * 0.16 * ry])
            outer = np.array([ex + side * 1.1 * ew, by + p["brow_tilt"] * 0.05 * ry])
            d.line(_rot(np.stack([inner, outer]), centre, roll), fill=tuple(int(c * 0.4) for c in ident.hair), width=max(2, B // 48))
        # nose
        d.line(_rot(np.array([[fx * 1.1, -0.02 * ry + fy], [fx * 1.25 + 0.02 * rx, 0.2 * ry + fy]]), centre, roll), fill=dark, width=2)
        # mouth: corners rise with curvature; opening shows a dark gap
        mw = ident.mouth_w * B * 0.5 * (1 - 0.2 * abs(yaw))
        my = 0.45 * ry + fy
        xs = np.linspace(-mw, mw, 17)
        u = (xs / mw) ** 2
        upper = my - p["mouth_curve"] * 0.3 * ry * u
        lower = upper + p["mouth_open"] * 0.35 * ry * (1 - u)
        lip = (150, 60, 60)
        if p["mouth_open"] > 0.04:
            poly = np.concatenate([np.stack([xs + fx, upper], 1), np.stack([xs[::-1] + fx, lower[::-1]], 1)])
            d.polygon(_rot(poly, centre, roll), fill=(70, 20, 25), outline=lip, width=max(3, B // 40))
        else:
            d.line(_rot(np.stack([xs + fx, upper], 1), centre, roll), fill=lip, width=max(3, B // 32))
        # occlusion: a hand (skin) or an object (dark) over eyes, mouth, cheek or forehead
        if p["occlusion"] > 0:
            region = int(p["occlusion"]) - 1
            oy = [-0.1, 0.45, 0.2, -0.5][region] * ry
            ox = [0.0, 0.0, 0.5, 0.0][region] * rx
            if p["occlusion_kind"] == 0:  # a hand: lighter than the face, with finger lines
                hand = tuple(min(255, int(c * 1.1 + 12)) for c in skin)
                d.polygon(_rot(_ellipse(0.75 * rx, 0.3 * ry) + [ox, oy], centre, roll * 0.3), fill=hand, outline=dark)
                for f in (-0.3, 0.0, 0.3):
                    d.line(_rot(np.array([[ox + f * rx, oy - 0.25 * ry], [ox + f * rx, oy + 0.1 * ry]]), centre, roll * 0.3), fill=dark, width=2)
            else:  # an object (a cup, a phone)
                d.polygon(_rot(_ellipse(0.7 * rx, 0.28 * ry) + [ox, oy], centre, roll * 0.3), fill=(50, 50, 60))
        img = img.reduce(2)
        # directional light and global brightness
        a = p["light_angle"]
        gain = p["brightness"] * (1 + p["light_strength"] * (math.cos(a) * self.gx + math.sin(a) * self.gy))
        arr = np.asarray(img, dtype=np.float32) * gain[:, :, None]
        oy, ox = self.rng.integers(0, self.size, 2)
        arr += self.noise[oy : oy + self.size, ox : ox + self.size]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if p["blur"] > 0.3:
            img = img.filter(ImageFilter.GaussianBlur(float(p["blur"])))
        return img



def render_face(identity: Identity, size: int = 112, seed: int = 0, **params: float) -> Image.Image:
    """Draw a single face (for the book's valence/arousal sweeps). Unset parameters are neutral."""
    neutral = dict(mouth_curve=0.0, brow_tilt=0.0, eye_open=0.7, mouth_open=0.05, dx=0.0, dy=0.0, roll=0.0, yaw=0.0,
                   pitch=0.0, light_angle=0.0, light_strength=0.0, brightness=1.0, blur=0.0, occlusion=0.0,
                   occlusion_kind=0.0)
    unknown = set(params) - set(neutral)
    if unknown:
        raise ValueError(f"render_face: unknown parameters {sorted(unknown)}")
    neutral.update(params)
    return Renderer(identity, size, seed).render(neutral)
