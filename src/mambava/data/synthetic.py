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
(default 200 videos of 300-4,000 frames, 10 s to 2.2 min, a factor of 13; Aff-Wild2 averages about
5,000 frames and reaches tens of thousands: ``max_frames`` sets how far the twin goes). The default
trades length for people: arousal is mostly a person's level, and a model learns how the level shows
only from many people (with 40 videos of up to 4.5 min, a fold trained on 13 of them and a linear
reading of the arousal evidence scored 0.5 on the test split; with 100 videos, 0.7; Mamba-VA on the
oracle features, primary seed, mean of the 6 folds' validation CCC_a: 0.64 with 100 videos, 0.79
with 200 at the same 400 optimiser steps). Videos (pairs
as one unit) are split into train / validation / test by ``split_fractions``; names imitate Aff-Wild2's (``123-30-1280x720``).

**Identity** (fixed per person): face width and height, skin tone, hair colour and style (short,
long, none), eye spacing and size, mouth width, background colours.

**Latent emotion.** Valence v(t) and arousal a(t) in (-1, 1) are
``tanh(offset + drift(t) + episodes(t))``: a per-video offset, a slow drift (three sinusoids) and
emotional *episodes* (Gaussian bumps of 1-4 s width, about one per 12 s; valence of either sign,
arousal mostly raised). The two differ in time scale (``LATENT_SHAPE``): valence has an offset in
[-0.5, 0.5], drift periods of 40-180 s and full episodes; arousal is mostly a person's level (offset
in [-1, 1]) and a slower drift (periods of 2-9 min), with episodes at 0.3 of valence's size. This
gives long-range structure that windows of a few seconds cannot see whole.

**Expression** (what a single frame shows, each with frame-level noise and a nuisance, so one
frame is an unreliable witness):

- valence -> mouth curvature (smile / frown) and brow tilt (inner brows raised when negative),
  with a nuisance of time constant 2 s: valence is mostly visible in single frames;
- arousal -> eye openness and the jaw at rest, both weakly (0.15 a and 0.04 a) and each with a
  nuisance that wanders every few seconds (time constant 2 s), which tens of seconds average away.

**Temporal-only evidence** of arousal (invisible in any single frame, and noisy over a few
seconds, so that it pays to look back over tens of seconds to minutes):

- blink *rate* rises with arousal (0.1 to 1.2 blinks/s; a blink closes the eyes for ~5 frames):
  a 2-second window holds 0-3 blinks, a minute holds 6-70;
- head *motion energy*: the head follows an AR(1) jitter whose innovation grows with arousal,
  times a restlessness that wanders on its own (log-normal, sd 0.6 in log, time constant 2 s);
- talking bursts: the mouth opens and closes at ~4 Hz, more strongly when aroused, with a
  loudness that wanders on its own (time constant 2 s).

How much of arousal each time scale recovers is measured, not assumed (tests/test_synthetic.py,
one 17-minute video): the blink count over 2 s correlates with the mean arousal of those 2 s at
about 0.3, over a minute at about 0.8; the log motion energy at about 0.5 over 2 s and 0.8 over a
minute. What the temporal models make of it is the ladder's oracle rung (mambava.ladder, the
book's Ladder page).

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

from mambava.data.affwild2 import ANNOTATIONS, CROPS, SPLIT_DIRS, UNLABELLED, write_annotation
from mambava.data.render import Renderer, expression_track, sample_identity
from mambava.io import replace_dir
from mambava.workers import resolve_workers

SPLITS = ("train", "validation", "test")
_RESOLUTIONS = [(1280, 720), (640, 360), (1920, 1080), (480, 360), (960, 540)]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class VideoPlan:
    index: int  # position in the plan; seeds the video's own random stream
    name: str
    split: str
    n_frames: int
    pair: str | None  # the other half of a two-person video


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


# How valence and arousal move (module doc). Valence changes quickly and shows in single frames;
# arousal is mostly a person's level (a wide offset) and slow drift (periods of 2-9 min), with small
# episodes, because its evidence (blink rate, head-motion energy) is itself only readable over
# tens of seconds. Each entry: offset half-range, drift period range (s), episode amplitude scale.
LATENT_SHAPE = {"valence": (0.5, (40.0, 180.0), 1.0), "arousal": (1.0, (120.0, 540.0), 0.3)}


def latent_trajectories(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """(n, 2) latent valence, arousal in (-1, 1): offset + slow drift + episodes, through tanh
    (shapes in ``LATENT_SHAPE``)."""
    t = np.arange(n) / fps
    out = np.empty((n, 2))
    duration = n / fps
    n_ep = rng.poisson(duration / 12.0)
    centres = rng.uniform(0, duration, n_ep)
    widths = rng.uniform(1.0, 4.0, n_ep)
    bumps = np.exp(-0.5 * ((t[:, None] - centres[None]) / widths[None]) ** 2) if n_ep else np.zeros((n, 0))
    amp_v = rng.normal(0, 0.6, n_ep)
    amp_a = np.abs(rng.normal(0.6, 0.35, n_ep)) * np.where(rng.random(n_ep) < 0.85, 1, -1)
    for k, (amp, name) in enumerate(((amp_v, "valence"), (amp_a, "arousal"))):
        half, (p_lo, p_hi), ep_scale = LATENT_SHAPE[name]
        offset = half * rng.uniform(-1.0, 1.0)
        drift = np.zeros(n)
        for _ in range(3):
            period = p_lo + (p_hi - p_lo) * rng.uniform(0.0, 1.0)
            drift += rng.uniform(0.15, 0.45) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        out[:, k] = np.tanh(offset + drift + bumps @ (ep_scale * amp))
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
        workers = min(resolve_workers(cfg.workers), len(jobs) or 1)
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
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
