"""A synthetic twin of Aff-Wild2's valence-arousal data, with known ground truth.

Aff-Wild2 is licensed and cannot be downloaded, so the default pipeline runs on this twin. It is
written in exactly the official layout (see :mod:`mambava.data.affwild2`), so every later stage
reads it as it would read the real data. Everything is drawn deterministically from
``data.synthetic.seed``; each video has its own random stream, so the result does not depend on
the number of worker processes.

Generative process
------------------
**Videos.** ``n_videos`` people; ``n_pairs`` of them are two-person videos stored as
``video<k>_left`` / ``video<k>_right`` (same length, scene and lighting; different people and
emotions). Lengths are log-uniform in ``[min_frames, max_frames]`` at ``fps`` frames per second
(default 300-8,000 frames, 10 s to 4.5 min, a factor of 27; Aff-Wild2 averages about 5,000 frames
and reaches tens of thousands: ``max_frames`` sets how far the twin goes). Videos (pairs as one unit) are split into
train / validation / test by ``split_fractions``; names imitate Aff-Wild2's (``123-30-1280x720``).

**Identity** (fixed per person): face width and height, skin tone, hair colour and style (short,
long, none), eye spacing and size, mouth width, background colours.

**Latent emotion.** Valence v(t) and arousal a(t) in (-1, 1) are
``tanh(offset + drift(t) + episodes(t))``: a per-video offset, a slow drift (three sinusoids with
periods of 40-180 s) and emotional *episodes* (Gaussian bumps of 1-4 s width, about one per 12 s;
valence of either sign, arousal mostly raised). This gives long-range structure that windows
of a few seconds cannot see whole.

**Expression** (what a single frame shows, each with frame-level noise and a slow nuisance
drift, so one frame is an unreliable witness):

- valence -> mouth curvature (smile / frown) and brow tilt (inner brows raised when negative),
  with a nuisance of time constant 2 s: valence is mostly visible in single frames;
- arousal -> eye openness and the jaw at rest, both weakly (0.12 a and 0.04 a) and each with a
  nuisance of time constant 15 s, so that a few seconds of frames cannot tell a calm moment of
  an excitable person from a calm person; tens of seconds average the nuisance away.

**Temporal-only evidence** of arousal (invisible in any single frame, and noisy over a few
seconds, so that it pays to look back over tens of seconds to minutes):

- blink *rate* rises with arousal (0.15 to 1 blink/s; a blink closes the eyes for ~5 frames):
  a 2-second window holds 0-2 blinks, a minute holds 9-60;
- head *motion energy*: the head follows an AR(1) jitter whose innovation grows with arousal,
  times a restlessness that wanders on its own (log-normal, sd 0.6 in log, time constant 20 s);
- talking bursts: the mouth opens and closes at ~4 Hz, more strongly when aroused, with a
  loudness that wanders on its own (time constant 15 s).

How much of arousal each time scale recovers is measured, not assumed: the blink count over 2 s
correlates with the mean arousal of those 2 s at about 0.34, over a minute at about 0.8
(tests/test_synthetic.py); what the temporal models make of it is the ladder's oracle rung
(mambava.ladder, the book's Ladder page).

**Nuisance** varying across and within videos: head pose (yaw, pitch, roll as slow random
walks), directional lighting (drifting angle and strength), blur episodes, occlusions (a hand or
an object over part of the face for 1-4 s), sensor noise and JPEG compression.

**Labels.** Annotators react late: the label at frame t is the latent state at frame
``t - label_lag_s * fps`` plus smoothed annotator noise (sd 0.05), clipped to [-1, 1] and written
with 4 decimals. Runs of frames are left unannotated (-5).

**Missing faces.** Isolated frames (``missing_rate``) and runs of 5-90 frames
(``missing_runs_per_1k``) have no crop on disk, as when the face detector fails; the
annotation file still has a line for each.

**Ground truth** beyond the labels (latent v/a at face time, blink onsets, motion energy, the
expression parameters and the identity) is saved per video in ``<truth_dir>/<video>.npz`` for
the book and for tests.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mambava.data.affwild2 import ANNOTATIONS, CROPS, SPLIT_DIRS, UNLABELLED, write_annotation
from mambava.io import replace_dir

SPLITS = ("train", "validation", "test")
_RESOLUTIONS = [(1280, 720), (640, 360), (1920, 1080), (480, 360), (960, 540)]
_SKIN = np.array([[255, 224, 196], [234, 192, 160], [210, 160, 120], [176, 122, 86], [130, 88, 60], [92, 60, 42]])
_HAIR = np.array([[30, 24, 20], [70, 50, 35], [120, 90, 55], [200, 170, 110], [150, 150, 150], [110, 40, 25]])


# --------------------------------------------------------------------------- plan
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


@dataclass(frozen=True)
class VideoPlan:
    index: int  # position in the plan; seeds the video's own random stream
    name: str
    split: str
    n_frames: int
    pair: str | None  # the other half of a two-person video


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


def plan_videos(cfg) -> list[VideoPlan]:
    """Names, splits and lengths of all videos (cfg: SyntheticConfig). Deterministic."""
    rng = np.random.default_rng([cfg.seed, 0])
    n_single = cfg.n_videos - 2 * cfg.n_pairs
    units: list[list[str]] = []
    ids = rng.permutation(np.arange(100, 100 + 4 * cfg.n_videos))
    for k in range(n_single):
        w, h = _RESOLUTIONS[rng.integers(len(_RESOLUTIONS))]
        units.append([f"{ids[k]}-30-{w}x{h}"])
    for k in range(cfg.n_pairs):
        base = f"video{ids[n_single + k] - 90}"
        units.append([f"{base}_left", f"{base}_right"])
    order = rng.permutation(len(units))
    # Allocate whole units to splits so each split gets about its fraction of the videos.
    targets = np.array(cfg.split_fractions) * cfg.n_videos
    counts = np.zeros(3)
    plans: list[VideoPlan] = []
    lengths = np.exp(rng.uniform(np.log(cfg.min_frames), np.log(cfg.max_frames), size=len(units)))
    for j, u in enumerate(order):
        unit = units[u]
        s = int(np.argmax(targets - counts))  # the split furthest below its target
        counts[s] += len(unit)
        n = int(round(lengths[j]))
        for name in unit:
            other = next((o for o in unit if o != name), None)
            plans.append(VideoPlan(len(plans), name, SPLITS[s], n, other))
    # Every split needs at least one video for the pipeline to run.
    for s, split in enumerate(SPLITS):
        if not any(p.split == split for p in plans) and cfg.split_fractions[s] > 0:
            raise ValueError(f"synthetic twin: no {split} video; raise n_videos or split_fractions")
    return plans


# --------------------------------------------------------------------------- latent and labels
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


def latent_trajectories(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """(n, 2) latent valence, arousal in (-1, 1): offset + slow drift + episodes, through tanh."""
    t = np.arange(n) / fps
    out = np.empty((n, 2))
    duration = n / fps
    n_ep = rng.poisson(duration / 12.0)
    centres = rng.uniform(0, duration, n_ep)
    widths = rng.uniform(1.0, 4.0, n_ep)
    bumps = np.exp(-0.5 * ((t[:, None] - centres[None]) / widths[None]) ** 2) if n_ep else np.zeros((n, 0))
    amp_v = rng.normal(0, 0.6, n_ep)
    amp_a = np.abs(rng.normal(0.6, 0.35, n_ep)) * np.where(rng.random(n_ep) < 0.85, 1, -1)
    for k, amp in enumerate((amp_v, amp_a)):
        offset = rng.uniform(-0.5, 0.5)
        drift = np.zeros(n)
        for _ in range(3):
            period = rng.uniform(40, 180)
            drift += rng.uniform(0.15, 0.45) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        out[:, k] = np.tanh(offset + drift + bumps @ amp)
    return np.clip(out, -0.98, 0.98)


def annotate(rng: np.random.Generator, latent: np.ndarray, lag: int, fps: float, unannotated_per_1k: float) -> np.ndarray:
    """Labels from the latent at face time: lagged, noisy, smoothed, clipped, with -5 runs."""
    n = len(latent)
    src = np.clip(np.arange(n) - lag, 0, n - 1)
    labels = latent[src].copy()
    k = max(1, int(0.5 * fps))
    kernel = np.ones(k) / k
    for c in range(2):
        labels[:, c] += np.convolve(rng.normal(0, 0.05 * math.sqrt(k), n + k - 1), kernel, mode="valid")
    labels = np.round(np.clip(labels, -1, 1), 4)
    for _ in range(rng.poisson(unannotated_per_1k * n / 1000)):
        length = int(rng.integers(10, 150))
        start = int(rng.integers(0, max(1, n - length)))
        labels[start : start + length] = UNLABELLED
    return labels.astype(np.float32)


def missing_frames(rng: np.random.Generator, n: int, rate: float, runs_per_1k: float, force_start: bool) -> np.ndarray:
    """Boolean (n,) mask of frames with no face crop on disk: isolated frames and runs."""
    miss = rng.random(n) < rate
    for _ in range(rng.poisson(runs_per_1k * n / 1000)):
        length = int(rng.integers(5, 91))
        start = int(rng.integers(0, max(1, n - length)))
        miss[start : start + length] = True
    if force_start:  # guarantees the layout has videos whose first frames are missing
        miss[: int(rng.integers(3, 30))] = True
    if miss.all():
        miss[n // 2] = False
    return miss


# --------------------------------------------------------------------------- expression track
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
    # Arousal's static cues are weak and carry a slow nuisance (tau 6 s): a few seconds of frames
    # cannot tell a tired moment from a calm person; tens of seconds average the nuisance away.
    eye = 0.62 + 0.12 * a + rng.normal(0, 0.15, n) + _smooth_noise(rng, n, 15 * sec, 0.12)
    # Blinks: a Poisson process whose rate follows arousal (temporal evidence only).
    rate = 0.15 + 0.85 * a01**1.5  # blinks per second
    onsets = rng.random(n) < rate / fps
    profile = np.array([0.55, 0.15, 0.0, 0.25, 0.65])
    blink = np.ones(n)
    for t in np.flatnonzero(onsets):
        seg = blink[t : t + len(profile)]
        np.minimum(seg, profile[: len(seg)], out=seg)
    tr["eye_open"] = np.clip(eye, 0.25, 1.1) * blink
    tr["blink_onset"] = onsets.astype(np.float32)
    # Talking bursts: mouth opening oscillates at ~4 Hz, more strongly with arousal.
    talking = (_smooth_noise(rng, n, 1.5 * sec, 1.0) > 0.3).astype(float) * np.exp(_smooth_noise(rng, n, 15 * sec, 0.5))
    phase = np.cumsum(2 * np.pi * rng.uniform(3.0, 5.0) / fps * np.ones(n))
    osc = 0.5 * (1 + np.sin(phase))
    rest = 0.05 + 0.04 * a + _smooth_noise(rng, n, 15 * sec, 0.035)  # the jaw at rest, slow nuisance
    tr["mouth_open"] = np.clip(rest + talking * (0.15 + 0.35 * a01) * osc + rng.normal(0, 0.03, n), 0, 0.8)
    # Head motion: AR(1) jitter whose innovation grows with arousal (temporal evidence only),
    # times a restlessness that wanders on its own (log-normal, tau 20 s): motion over a second or
    # two says little; its level over tens of seconds follows arousal.
    restless = np.exp(_smooth_noise(rng, n, 20 * sec, 0.6))
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


# --------------------------------------------------------------------------- rendering
def _rot(points: np.ndarray, centre: np.ndarray, deg: float) -> list[tuple[float, float]]:
    th = math.radians(deg)
    c, s = math.cos(th), math.sin(th)
    r = points @ np.array([[c, s], [-s, c]])
    return [tuple(p) for p in (r + centre)]


def _ellipse(rx: float, ry: float, k: int = 36, start: float = 0.0, stop: float = 2 * np.pi) -> np.ndarray:
    t = np.linspace(start, stop, k)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


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


# --------------------------------------------------------------------------- one video
def generate_video(plan: VideoPlan, cfg, root: Path, test_labels: Path, truth_dir: Path) -> dict:
    """Draw and write one video: frames, labels, ground truth. Returns a summary row."""
    rng = np.random.default_rng([cfg.seed, 1, plan.index])
    # A pair shares the scene: its background comes from the pair's own stream.
    bg = None
    if plan.pair is not None:
        prng = np.random.default_rng([cfg.seed, 2, *plan.name.rsplit("_", 1)[0].encode()])
        base = prng.uniform(40, 220, 3)
        bg = (tuple(int(x) for x in base), tuple(int(x) for x in np.clip(base * prng.uniform(0.5, 0.9), 0, 255)))
    identity = sample_identity(rng, bg)
    lag = int(round(cfg.label_lag_s * cfg.fps))
    n = plan.n_frames
    latent_all = latent_trajectories(rng, n + lag, cfg.fps)
    face_latent = latent_all[lag:]  # what the face shows at frame t
    labels = annotate(rng, latent_all[:n], 0, cfg.fps, cfg.unannotated_runs_per_1k)  # latent at t - lag
    track = expression_track(rng, face_latent, cfg.fps)
    miss = missing_frames(rng, n, cfg.missing_rate, cfg.missing_runs_per_1k, force_start=plan.index % 7 == 1)
    renderer = Renderer(identity, cfg.image_size, seed=int(rng.integers(2**31)))

    vdir = root / CROPS / plan.name
    vdir.mkdir(parents=True, exist_ok=True)
    keys = list(track)
    cols = [track[k] for k in keys]
    for t in range(n):
        if miss[t]:
            continue
        img = renderer.render({k: float(c[t]) for k, c in zip(keys, cols)})
        img.save(vdir / f"{t + 1:05d}.jpg", quality=cfg.jpeg_quality)
    if plan.split == "test":
        write_annotation(test_labels / f"{plan.name}.txt", labels)
    else:
        write_annotation(root / ANNOTATIONS / SPLIT_DIRS[plan.split] / f"{plan.name}.txt", labels)
    truth_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        truth_dir / f"{plan.name}.npz",
        latent=face_latent.astype(np.float32),
        labels=labels,
        missing=miss,
        lag_frames=np.int64(lag),
        identity=json.dumps(asdict(identity)),
        **track,
    )
    return {"video": plan.name, "split": plan.split, "n_frames": n, "n_missing": int(miss.sum()),
            "n_unannotated": int((labels[:, 0] == UNLABELLED).sum())}


def _worker(job):
    plan, cfg, root, test_labels, truth_dir = job
    return generate_video(plan, cfg, Path(root), Path(test_labels), Path(truth_dir))


def generate_twin(cfg, root: str | Path, test_labels: str | Path, truth_dir: str | Path, test_list: str) -> list[dict]:
    """Write the whole twin (cfg: SyntheticConfig). The folders are replaced atomically: the twin
    is built beside them and renamed into place only when complete."""
    import multiprocessing as mp

    from tqdm import tqdm

    plans = plan_videos(cfg)
    final = [Path(root), Path(test_labels), Path(truth_dir)]
    staging = [p.with_name(p.name + ".partial") for p in final]
    for s in staging:
        shutil.rmtree(s, ignore_errors=True)
    root_s, labels_s, truth_s = staging
    (root_s / CROPS).mkdir(parents=True)
    for sub in SPLIT_DIRS.values():
        (root_s / ANNOTATIONS / sub).mkdir(parents=True)
    labels_s.mkdir(parents=True)
    truth_s.mkdir(parents=True)
    jobs = [(p, cfg, str(root_s), str(labels_s), str(truth_s)) for p in sorted(plans, key=lambda p: -p.n_frames)]
    rows = []
    total = sum(p.n_frames for p in plans)
    with tqdm(total=total, unit="frame", desc="synthetic twin", unit_scale=True, mininterval=1.0) as bar:
        if cfg.workers > 1:
            with mp.get_context("fork").Pool(cfg.workers) as pool:
                for row in pool.imap_unordered(_worker, jobs):
                    rows.append(row)
                    bar.update(row["n_frames"])
        else:
            for job in jobs:
                row = _worker(job)
                rows.append(row)
                bar.update(row["n_frames"])
    tests = sorted(p.name for p in plans if p.split == "test")
    (root_s / test_list).write_text("".join(f"{name}\n" for name in tests))
    for s, f in zip(staging, final):
        replace_dir(s, f)
    return sorted(rows, key=lambda r: r["video"])
