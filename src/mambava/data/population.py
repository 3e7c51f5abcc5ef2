"""The face-pretraining population: people who are not in the study, drawn by the twin's own
generative process, with frame-level valence/arousal labels like AffectNet's.

The paper's encoder starts from an MAE pretrained on millions of faces of *other* people and only
fine-tunes on Aff-Wild2. On the twin, this module stands in for that external face data: it draws
as many people as asked from the twin's identity distribution (:func:`~mambava.data.render.sample_identity`),
gives each a latent valence/arousal trajectory and an expression track of their own
(:func:`~mambava.data.synthetic.latent_trajectories`, :func:`~mambava.data.render.expression_track`:
expression, pose, light, blur, occlusion and blinks as in the study), and renders a short clip of
frames in the crops' format (``image_size`` RGB, JPEG at ``jpeg_quality``, decoded back).

* **Separation from the study.** Every random draw comes from ``np.random.default_rng([seed,
  POPULATION_STREAM, person])``; the study draws from streams tagged 0, 1 and 2 under
  ``data.synthetic.seed`` (:mod:`mambava.data.synthetic`), so no stream is shared even when the two
  seeds are equal (``tests/test_population.py`` checks the identities and the streams). No study
  video, person or label enters it.
* **Labels** are what an annotator of a single image gives: the latent valence and arousal at that
  frame, plus annotation noise (sd 0.05), clipped to [-1, 1] and rounded to 4 decimals. There is no
  annotation lag (one image, one judgement), unlike the study's continuous labels.
* **The drawn parameters** (``DRAWN``: mouth curve, brow tilt, eye opening) are kept for the
  probes only (:mod:`mambava.features.probe`): they are never a training target, since an encoder
  taught them would be the oracle rung in disguise.

A clip is ``clip_frames`` frames at random moments (sorted) of a ``clip_seconds`` track, so that
one person is seen with several expressions, poses and lights.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mambava.data.render import Renderer, expression_track, sample_identity
from mambava.data.synthetic import latent_trajectories

POPULATION_STREAM = 1_000_003  # seed-sequence tag of the population; the study's are 0, 1, 2
DRAWN = ("mouth_curve", "brow_tilt", "eye_open")  # probe targets: valence's two cues, arousal's one


@dataclass(frozen=True)
class PopulationSpec:
    """How the population is drawn (mirrors ``mambava.config.FacePretrainConfig.population``)."""

    seed: int = 777
    n_people: int = 3000
    clip_frames: int = 12
    clip_seconds: float = 60.0
    image_size: int = 112
    fps: float = 30.0
    jpeg_quality: int = 90

    def describe(self) -> str:
        return (f"{self.n_people} people x {self.clip_frames} frames ({self.image_size} px, seed {self.seed}, "
                f"clips from {self.clip_seconds:g}-s tracks)")


@dataclass
class Population:
    """The rendered population: images (N, S, S, 3) uint8, labels (N, 2) float32, the person of each
    frame (N,) int64, the drawn parameters (N, len(DRAWN)) float32 and each person's identity (JSON)."""

    images: np.ndarray
    labels: np.ndarray
    person: np.ndarray
    drawn: np.ndarray
    identities: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def people(self, keep) -> "Population":
        """The frames of the people in ``keep`` (a set or array of person numbers)."""
        sel = np.isin(self.person, np.asarray(sorted(keep)))
        return Population(self.images[sel], self.labels[sel], self.person[sel], self.drawn[sel],
                          self.identities)


def person_rng(seed: int, person: int) -> np.random.Generator:
    """The one random stream of a population person (see the module doc)."""
    return np.random.default_rng([seed, POPULATION_STREAM, person])


def jpeg_roundtrip(img: Image.Image, quality: int) -> np.ndarray:
    """Encode as JPEG and decode back, as the crops on disk are: (S, S, 3) uint8."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def draw_person(spec: PopulationSpec, person: int) -> dict:
    """One person's clip: images (k, S, S, 3), labels (k, 2), drawn (k, 3), identity (JSON)."""
    rng = person_rng(spec.seed, person)
    identity = sample_identity(rng)
    n = max(spec.clip_frames, int(round(spec.clip_seconds * spec.fps)))
    latent = latent_trajectories(rng, n, spec.fps)
    track = expression_track(rng, latent, spec.fps)
    renderer = Renderer(identity, spec.image_size, seed=int(rng.integers(2**31)))
    times = np.sort(rng.choice(n, size=spec.clip_frames, replace=False))
    keys = list(track)
    images = np.empty((spec.clip_frames, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    for j, t in enumerate(times):
        images[j] = jpeg_roundtrip(renderer.render({k: float(track[k][t]) for k in keys}), spec.jpeg_quality)
    labels = latent[times] + rng.normal(0, 0.05, (len(times), 2))
    labels = np.round(np.clip(labels, -1, 1), 4).astype(np.float32)
    drawn = np.stack([track[k][times] for k in DRAWN], axis=1).astype(np.float32)
    return {"images": images, "labels": labels, "drawn": drawn, "identity": json.dumps(asdict(identity))}


def _draw(job):
    spec, person = job
    return person, draw_person(spec, person)


def build_population(spec: PopulationSpec, workers: int = 1, progress: bool = True, people=None) -> Population:
    """Render every person of ``spec`` (or only those in ``people``), in ``workers`` processes: the
    same arrays for any number, since each person has a stream of its own."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    people = np.arange(spec.n_people) if people is None else np.asarray(people, dtype=np.int64)
    if len(people) and (people.min() < 0 or people.max() >= spec.n_people):
        raise ValueError(f"people outside 0..{spec.n_people - 1}")
    slot = {int(p): j for j, p in enumerate(people)}
    k, s = spec.clip_frames, spec.image_size
    images = np.empty((len(people) * k, s, s, 3), dtype=np.uint8)
    labels = np.empty((len(people) * k, 2), dtype=np.float32)
    drawn = np.empty((len(people) * k, len(DRAWN)), dtype=np.float32)
    identities = [""] * len(people)
    jobs = [(spec, int(p)) for p in people]
    bar = tqdm(total=len(people), unit="person", desc="face population", disable=not progress, mininterval=1.0)

    def put(person, out):
        j = slot[person]
        rows = slice(j * k, (j + 1) * k)
        images[rows], labels[rows], drawn[rows] = out["images"], out["labels"], out["drawn"]
        identities[j] = out["identity"]
        bar.update(1)

    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for person, out in pool.imap_unordered(_draw, jobs, chunksize=8):
                put(person, out)
    else:
        for job in jobs:
            put(*_draw(job))
    bar.close()
    person = np.repeat(people, k)
    return Population(images, labels, person, drawn, identities)


def save_population(pop: Population, path: str | Path, spec: PopulationSpec) -> None:
    """Cache the rendered population as one .npz (written atomically), with its spec."""
    from mambava.io import atomic_path

    with atomic_path(Path(path), ".tmp.npz") as tmp:
        np.savez(tmp, images=pop.images, labels=pop.labels, person=pop.person, drawn=pop.drawn,
                 identities=np.array(pop.identities), spec=json.dumps(asdict(spec)))


def load_population(path: str | Path, spec: PopulationSpec) -> Population | None:
    """The cached population at ``path`` if it was drawn with ``spec``, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        if json.loads(str(z["spec"])) != json.loads(json.dumps(asdict(spec))):
            return None
        return Population(z["images"], z["labels"], z["person"], z["drawn"], [str(x) for x in z["identities"]])


def population(spec: PopulationSpec, cache: str | Path | None = None, workers: int = 1,
               progress: bool = True) -> Population:
    """The population of ``spec``: from ``cache`` when it holds this spec, else rendered (and cached)."""
    if cache is not None:
        pop = load_population(cache, spec)
        if pop is not None:
            return pop
    pop = build_population(spec, workers, progress)
    if cache is not None:
        save_population(pop, cache, spec)
    return pop


def split_people(n_people: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of the population's people into (train, held out) for probes and checks."""
    rng = np.random.default_rng([seed, POPULATION_STREAM, 0xC0FFEE])
    order = rng.permutation(n_people)
    n_out = int(math.ceil(held_out * n_people))
    return np.sort(order[n_out:]), np.sort(order[:n_out])
