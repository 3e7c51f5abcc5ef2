"""Face detection, eye localisation and alignment for raw video (tracking and smoothing over
frames: :mod:`mambava.video.tracking`).

Detector: OpenCV's Viola-Jones Haar cascades (``haarcascade_frontalface_default.xml`` with
``..._alt2`` as a second opinion, ``haarcascade_eye.xml`` for the eyes). Their weights ship
inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so nothing is fetched
at run time, and they run on any CPU at video rate. The alternatives considered (docs/video.md):
facenet-pytorch's MTCNN ships its weights and five landmarks but pins torch < 2.3 and numpy < 2,
which the pinned torch 2.14 excludes; OpenCV's YuNet and LBF landmarks need model files that
are not in any wheel. What Haar cascades lack (landmarks) is made up below:

- **eyes**: the eye cascade inside the upper face box; where it finds no plausible pair, the
  eye centre is located in each eye window by the gradient method of Timm and Barth (2011): the
  point that most image gradients point away from, weighted by darkness (the iris);
- **alignment**: a similarity transform puts the eye midpoint at ``(size / 2, eye_y * size)``
  with the eyes ``eye_distance * size`` apart on a level line (roll removed, scale from the eye
  distance), as the crops the encoder was trained on (``crop`` section of params.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Where the eyes sit in a Haar frontal-face box, as fractions of its width/height (measured on
# the twin and on the carphone clip; used until a track has measured its own, and where no eye
# is found).
EYE_Y_IN_BOX = 0.40
EYE_DIST_IN_BOX = 0.38


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    def shifted(self, dx: float, dy: float) -> "Box":
        return Box(self.x + dx, self.y + dy, self.w, self.h)

    def iou(self, other: "Box") -> float:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x + self.w, other.x + other.w), min(self.y + self.h, other.y + other.h)
        inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
        return inter / (self.w * self.h + other.w * other.h - inter + 1e-9)


@dataclass(frozen=True)
class Eyes:
    """Eye centres in image pixels: ``left`` is the one at the smaller x (the person's right)."""

    left: tuple[float, float]
    right: tuple[float, float]

    @property
    def midpoint(self) -> tuple[float, float]:
        return (self.left[0] + self.right[0]) / 2, (self.left[1] + self.right[1]) / 2

    @property
    def distance(self) -> float:
        return math.hypot(self.right[0] - self.left[0], self.right[1] - self.left[1])

    @property
    def angle(self) -> float:
        """Roll in radians: the angle of the line from the left to the right eye (y down)."""
        return math.atan2(self.right[1] - self.left[1], self.right[0] - self.left[0])


@dataclass(frozen=True)
class Pose:
    """What the crop is made from: eye midpoint (x, y), eye distance (px), roll (radians)."""

    x: float
    y: float
    distance: float
    angle: float


def alignment_matrix(pose: Pose, size: int, eye_distance: float, eye_y: float) -> np.ndarray:
    """2x3 affine (image -> crop) putting the eye midpoint at (size/2, eye_y*size), the eyes
    ``eye_distance * size`` apart on a horizontal line."""
    s = eye_distance * size / max(pose.distance, 1e-6)
    c, si = math.cos(pose.angle) * s, math.sin(pose.angle) * s
    # rotate by -angle about the midpoint, scale, translate
    return np.array([
        [c, si, size / 2 - (c * pose.x + si * pose.y)],
        [-si, c, eye_y * size - (-si * pose.x + c * pose.y)],
    ], dtype=np.float64)


def crop_face(image: np.ndarray, pose: Pose, size: int, eye_distance: float, eye_y: float) -> np.ndarray:
    """The aligned (size, size, 3) crop of ``image`` (RGB uint8); borders replicate the edge."""
    import cv2

    m = alignment_matrix(pose, size, eye_distance, eye_y)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------- eye centres
def eye_centre_gradients(patch: np.ndarray) -> tuple[float, float] | None:
    """Timm and Barth (2011): the centre of a dark disc in a grey patch (x, y in patch pixels).

    The patch is resized to at most 28 px wide; every pixel c scores the mean of
    ``max(0, d_i . g_i)^2`` over the strong gradients g_i (d_i: unit vector from c to gradient
    i), weighted by the darkness of c. Returns None for a flat patch.
    """
    import cv2

    h, w = patch.shape
    if h < 4 or w < 4:
        return None
    scale = min(1.0, 28.0 / w)
    p = cv2.resize(patch, (max(4, round(w * scale)), max(4, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else patch
    p = p.astype(np.float32)
    gx = cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    thr = mag.mean() + 0.3 * mag.std()
    ys, xs = np.nonzero(mag > max(thr, 1e-3))
    if len(xs) < 4:
        return None
    gxn, gyn = gx[ys, xs] / mag[ys, xs], gy[ys, xs] / mag[ys, xs]
    ph, pw = p.shape
    cy, cx = np.mgrid[0:ph, 0:pw]
    dx = xs[None, :] - cx.reshape(-1, 1)
    dy = ys[None, :] - cy.reshape(-1, 1)
    norm = np.hypot(dx, dy)
    norm[norm == 0] = 1.0
    dot = np.maximum(0.0, (dx * gxn[None, :] + dy * gyn[None, :]) / norm)
    score = (dot**2).mean(axis=1)
    dark = 255.0 - cv2.GaussianBlur(p, (5, 5), 0).reshape(-1)
    score = score * dark
    k = int(np.argmax(score))
    return (k % pw + 0.5) / scale - 0.5, (k // pw + 0.5) / scale - 0.5


# --------------------------------------------------------------------------- detector
@dataclass
class HaarFaces:
    """Faces and eyes with OpenCV's Haar cascades (module doc).

    Frames are converted to grey and scaled so their shorter side is ``work_size`` pixels
    (small videos are enlarged, large ones reduced) before detection; boxes come back in the
    frame's pixels. ``min_face`` is the smallest face as a fraction of the shorter side.
    """

    work_size: int = 360
    min_face: float = 0.12
    scale_factor: float = 1.05
    min_neighbors: int = 2
    _cascades: dict = field(default_factory=dict, repr=False)

    def _cascade(self, name: str):
        import cv2

        if name not in self._cascades:
            path = cv2.data.haarcascades + name
            c = cv2.CascadeClassifier(path)
            if c.empty():
                raise RuntimeError(f"{path}: cannot load the Haar cascade shipped with opencv-python-headless")
            self._cascades[name] = c
        return self._cascades[name]

    def grey(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(grey image at the working size, its scale relative to the frame)."""
        import cv2

        h, w = image.shape[:2]
        scale = self.work_size / min(h, w)
        g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        if abs(scale - 1) > 1e-3:
            g = cv2.resize(g, (round(w * scale), round(h * scale)),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        return g, scale

    def faces(self, grey: np.ndarray, scale: float, near: Box | None = None) -> list[Box]:
        """Face boxes (frame pixels), largest first: the two frontal cascades on the grey image,
        then on its histogram-equalised version, until one finds a face. With ``near`` (a live
        track's box) only a region twice its size is searched, for faces of 0.6-1.6 its width."""
        import cv2

        H, W = grey.shape
        x0 = y0 = 0
        m, big = max(24, int(self.min_face * min(grey.shape))), None
        if near is not None:
            bx, by, bw, bh = (v * scale for v in (near.x, near.y, near.w, near.h))
            x0, y0 = int(max(0, bx - 0.5 * bw)), int(max(0, by - 0.5 * bh))
            x1, y1 = int(min(W, bx + 1.5 * bw)), int(min(H, by + 1.5 * bh))
            grey = grey[y0:y1, x0:x1]
            m, big = max(24, int(0.6 * bw)), int(1.6 * bw)
            if min(grey.shape) < m:
                return []
        found = []
        for img in (grey, cv2.equalizeHist(grey)):
            for name in ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml"):
                kw = {"maxSize": (big, big)} if big else {}
                r = self._cascade(name).detectMultiScale(img, self.scale_factor, self.min_neighbors, minSize=(m, m), **kw)
                found = [Box((b[0] + x0) / scale, (b[1] + y0) / scale, b[2] / scale, b[3] / scale) for b in r]
                if found:
                    break
            if found:
                break
        # merge boxes of one face found twice
        found.sort(key=lambda b: -b.w * b.h)
        out: list[Box] = []
        for b in found:
            if all(b.iou(o) < 0.3 for o in out):
                out.append(b)
        return out

    def eyes(self, grey: np.ndarray, scale: float, box: Box) -> Eyes | None:
        """The two eye centres (frame pixels) inside a face box, or None."""
        bx, by, bw, bh = (v * scale for v in (box.x, box.y, box.w, box.h))
        H, W = grey.shape
        x0, x1 = int(max(0, bx)), int(min(W, bx + bw))
        y0, y1 = int(max(0, by + 0.15 * bh)), int(min(H, by + 0.6 * bh))
        if x1 - x0 < 16 or y1 - y0 < 8:
            return None
        region = grey[y0:y1, x0:x1]
        found = self._cascade("haarcascade_eye.xml").detectMultiScale(
            region, 1.1, 3, minSize=(max(6, int(0.12 * bw)),) * 2, maxSize=(int(0.45 * bw),) * 2)
        mid = x0 + bw / 2 - x0
        lefts = [e for e in found if e[0] + e[2] / 2 < mid]
        rights = [e for e in found if e[0] + e[2] / 2 >= mid]
        best, best_score = None, -1.0
        for a in lefts:
            for b in rights:
                ca = (a[0] + a[2] / 2, a[1] + a[3] / 2)
                cb = (b[0] + b[2] / 2, b[1] + b[3] / 2)
                dist = math.hypot(cb[0] - ca[0], cb[1] - ca[1])
                if not (0.25 * bw < dist < 0.65 * bw) or abs(cb[1] - ca[1]) > 0.3 * dist:
                    continue
                if max(a[2], b[2]) > 1.6 * min(a[2], b[2]):
                    continue
                score = a[2] + b[2]
                if score > best_score:
                    best, best_score = (ca, cb), score
        if best is None:  # the gradient method in the two expected eye windows
            ey = by + EYE_Y_IN_BOX * bh
            half = 0.5 * EYE_DIST_IN_BOX * bw
            pts = []
            for cx in (bx + bw / 2 - half, bx + bw / 2 + half):
                wx0, wx1 = int(max(0, cx - 0.16 * bw)), int(min(W, cx + 0.16 * bw))
                wy0, wy1 = int(max(0, ey - 0.1 * bh)), int(min(H, ey + 0.1 * bh))
                c = eye_centre_gradients(grey[wy0:wy1, wx0:wx1]) if wx1 - wx0 >= 6 and wy1 - wy0 >= 4 else None
                if c is None:
                    return None
                pts.append((wx0 + c[0], wy0 + c[1]))
            dist = math.hypot(pts[1][0] - pts[0][0], pts[1][1] - pts[0][1])
            if not (0.2 * bw < dist < 0.65 * bw) or abs(pts[1][1] - pts[0][1]) > 0.35 * dist:
                return None
            best = ((pts[0][0] - x0, pts[0][1] - y0), (pts[1][0] - x0, pts[1][1] - y0))
        (lx, ly), (rx, ry) = best
        return Eyes(((x0 + lx) / scale, (y0 + ly) / scale), ((x0 + rx) / scale, (y0 + ry) / scale))
