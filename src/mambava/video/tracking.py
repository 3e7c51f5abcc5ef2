"""Faces over the frames of a video: detections matched to tracks, short misses bridged, poses
smoothed (:class:`FaceTracker`; the detector and the geometry are :mod:`mambava.video.faces`).

- **tracking**: a frame where the detector misses a face that was seen within ``max_gap``
  frames moves the last box by the median Lucas-Kanade optical flow of corner points inside it
  (OpenCV's pyramidal LK), so a short miss is bridged, not dropped;
- **smoothing**: the eye midpoint, eye distance and roll angle go through a One Euro filter
  (Casiez, Roussel and Vogel, 2012): strong smoothing when the face is still, little lag when it
  moves, causal, so a file and a live stream are cropped identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mambava.video.faces import EYE_DIST_IN_BOX, EYE_Y_IN_BOX, Box, HaarFaces, Pose


# --------------------------------------------------------------------------- smoothing
class OneEuro:
    """The One Euro filter (Casiez et al., 2012) on a vector sampled at ``rate`` Hz."""

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    def _alpha(self, cutoff) -> np.ndarray:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return self.x.copy()
        dx = (x - self.x) * self.rate
        a_d = self._alpha(self.d_cutoff)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx))
        self.x = a * x + (1 - a) * self.x
        return self.x.copy()


# --------------------------------------------------------------------------- tracking
@dataclass
class Observation:
    """One face in one frame: the smoothed pose the crop is made from, the box, and whether the
    detector found it in this frame (``detected``) or the track bridged a miss (``tracked``)."""

    pose: Pose
    box: Box
    source: str  # "detected" | "tracked"
    eyes_found: bool


@dataclass
class _Track:
    box: Box
    filt: OneEuro
    d_ref: float
    gap: int = 0
    # eye geometry relative to the box, learnt from frames where the eyes were found:
    # (midpoint dx / w, midpoint dy / h, distance / w), running mean
    rel: np.ndarray = field(default_factory=lambda: np.array([0.0, EYE_Y_IN_BOX - 0.5, EYE_DIST_IN_BOX]))
    n_rel: int = 0
    angle: float = 0.0


class FaceTracker:
    """Per-frame faces of a video: detect, match to tracks, bridge short misses, smooth.

    ``n_faces`` slots (1, or 2: left and right, assigned by position when first seen and kept by
    proximity afterwards). :meth:`step` takes RGB frames in order and returns, per slot, an
    :class:`Observation` or None (no face, or a miss longer than ``max_gap`` frames).
    """

    def __init__(self, n_faces: int = 1, fps: float = 30.0, max_gap: int = 15,
                 detector: HaarFaces | None = None, min_cutoff: float = 1.0, beta: float = 1.5):
        if n_faces not in (1, 2):
            raise ValueError(f"n_faces must be 1 or 2, got {n_faces}")
        self.n_faces, self.fps, self.max_gap = n_faces, fps, max_gap
        self.detector = detector or HaarFaces()
        self.min_cutoff, self.beta = min_cutoff, beta
        self.tracks: list[_Track | None] = [None] * n_faces
        self._prev: np.ndarray | None = None
        self._prev_scale = 1.0
        self._n = 0
        self.full_every = 10

    # -- matching
    def _match(self, dets: list[Box]) -> list[Box | None]:
        out: list[Box | None] = [None] * self.n_faces
        free = list(dets)
        # live tracks take the detection they overlap most
        for k, t in enumerate(self.tracks):
            if t is None or not free:
                continue
            cx, cy = t.box.centre
            best = max(free, key=lambda b: b.iou(t.box))
            near = math.hypot(best.centre[0] - cx, best.centre[1] - cy) < 0.5 * t.box.w
            if best.iou(t.box) > 0.2 or near:
                out[k] = best
                free.remove(best)
        # empty slots take the largest remaining faces, by position
        empty = [k for k, t in enumerate(self.tracks) if t is None]
        if empty and free:
            new = sorted(free[: len(empty)], key=lambda b: b.centre[0])
            if self.n_faces == 2 and len(empty) == 1:
                other = self.tracks[1 - empty[0]]
                b = new[0]
                k = empty[0]
                # a newcomer on the wrong side of the live face does not take its slot
                if other is not None and ((k == 0) != (b.centre[0] < other.box.centre[0])):
                    return out
                out[k] = b
            else:
                for k, b in zip(empty, new):
                    out[k] = b
        return out

    def _flow(self, grey: np.ndarray, scale: float, box: Box) -> Box:
        """The box moved by the median LK optical flow of corners inside it (held if too few)."""
        import cv2

        if self._prev is None or self._prev.shape != grey.shape:
            return box
        mask = np.zeros_like(self._prev)
        x0, y0 = int(max(0, box.x * scale)), int(max(0, box.y * scale))
        x1, y1 = int(box.x * scale + box.w * scale), int(box.y * scale + box.h * scale)
        mask[y0:y1, x0:x1] = 255
        pts = cv2.goodFeaturesToTrack(self._prev, 50, 0.01, 3, mask=mask)
        if pts is None or len(pts) < 4:
            return box
        new, st, _ = cv2.calcOpticalFlowPyrLK(self._prev, grey, pts, None, winSize=(15, 15), maxLevel=2)
        ok = st.reshape(-1) == 1
        if ok.sum() < 4:
            return box
        d = np.median((new - pts).reshape(-1, 2)[ok], axis=0) / scale
        return box.shifted(float(d[0]), float(d[1]))

    def step(self, image: np.ndarray) -> list[Observation | None]:
        grey, scale = self.detector.grey(image)
        live = [t for t in self.tracks if t is not None]
        self._n += 1
        if len(live) == self.n_faces and self._n % self.full_every:
            # every slot has a track: search near each (a full scan every full_every frames)
            dets = [b for t in live for b in self.detector.faces(grey, scale, near=t.box)]
        else:
            dets = self.detector.faces(grey, scale)
        matched = self._match(dets)
        out: list[Observation | None] = []
        for k in range(self.n_faces):
            t, det = self.tracks[k], matched[k]
            if det is None and t is None:
                out.append(None)
                continue
            if det is None:
                t.gap += 1
                if t.gap > self.max_gap:
                    self.tracks[k] = None
                    out.append(None)
                    continue
                t.box = self._flow(grey, scale, t.box)
                source = "tracked"
            else:
                if t is None:
                    t = _Track(box=det, filt=OneEuro(self.fps, self.min_cutoff, self.beta), d_ref=EYE_DIST_IN_BOX * det.w)
                    self.tracks[k] = t
                t.box, t.gap = det, 0
                source = "detected"
            b = t.box
            eyes = self.detector.eyes(grey, scale, b)
            if eyes is not None and t.n_rel >= 3:
                # an eye pair far from what this track has shown (a brow or a nostril taken for an
                # eye) is an outlier: the box-relative estimate stands in for it
                d_exp = t.rel[2] * b.w
                if abs(eyes.distance / d_exp - 1) > 0.2 or abs(eyes.angle - t.angle) > math.radians(12):
                    eyes = None
            if eyes is not None:
                mx, my = eyes.midpoint
                rel = np.array([(mx - b.centre[0]) / b.w, (my - b.centre[1]) / b.h, eyes.distance / b.w])
                t.n_rel += 1
                t.rel += (rel - t.rel) / min(t.n_rel, 30)
                raw = (mx, my, eyes.distance, eyes.angle)
                t.angle = eyes.angle
            else:  # eyes where this track's eyes usually are in its box, last roll
                raw = (b.centre[0] + t.rel[0] * b.w, b.centre[1] + t.rel[1] * b.h, t.rel[2] * b.w, t.angle)
            v = t.filt([raw[0] / t.d_ref, raw[1] / t.d_ref, math.log(raw[2] / t.d_ref), raw[3]])
            pose = Pose(float(v[0] * t.d_ref), float(v[1] * t.d_ref), float(math.exp(v[2]) * t.d_ref), float(v[3]))
            out.append(Observation(pose, b, source, eyes is not None))
        self._prev, self._prev_scale = grey, scale
        return out
