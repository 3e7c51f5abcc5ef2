"""A tiny Aff-Wild2 layout for the feature tests, whose pixels and labels encode frame numbers.

Frame ``f`` of video ``v`` is a uniform image of colour ``(4 * (f % 64), 4 * (f // 64), 16 * v)``
so a feature that is the mean colour tells which frame it came from, independently of the code
under test; its label line is ``valence = f / 1000, arousal = -f / 1000`` (or -5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from mambava.data.affwild2 import write_annotation, write_index

COLUMNS = ["video", "split", "n_frames", "n_frames_on_disk", "n_annotated", "path", "annotation"]


def colour(f: int, v: int) -> tuple[int, int, int]:
    return (4 * (f % 64), 4 * (f // 64), 16 * v)


def decode_frame(rgb: np.ndarray) -> np.ndarray:
    """Frame numbers from mean colours (..., 3) in 0-255."""
    return np.rint(rgb[..., 0] / 4).astype(int) + 64 * np.rint(rgb[..., 1] / 4).astype(int)


def make_layout(root: Path, videos: dict[str, dict], size: int = 32) -> Path:
    """videos: name -> {split, n_frames, missing (frame numbers without an image), beyond (extra
    images past n_frames), unlabelled (frames labelled -5), labels (bool, default True)}.
    Writes cropped_aligned/, label files and index.csv under ``root``; returns the index path."""
    rows = []
    for v, (name, spec) in enumerate(videos.items()):
        n = spec["n_frames"]
        missing = set(spec.get("missing", ()))
        vdir = root / "cropped_aligned" / name
        vdir.mkdir(parents=True, exist_ok=True)
        on_disk = 0
        for f in range(1, n + 1 + spec.get("beyond", 0)):
            if f in missing:
                continue
            Image.new("RGB", (size, size), colour(f, v)).save(vdir / f"{f:05d}.jpg", quality=95)
            on_disk += 1
        ann = ""
        n_annotated = 0
        if spec.get("labels", True):
            f = np.arange(1, n + 1)
            lab = np.stack([f / 1000, -f / 1000], axis=1).astype(np.float32)
            for u in spec.get("unlabelled", ()):
                lab[u - 1] = -5
            folder = {"train": "Train_Set", "validation": "Validation_Set", "test": "test_labels"}[spec["split"]]
            ann = str(root / "annotations" / folder / f"{name}.txt")
            write_annotation(ann, lab)
            n_annotated = int((lab != -5).all(1).sum())
        rows.append({
            "video": name, "split": spec["split"], "n_frames": n, "n_frames_on_disk": on_disk,
            "n_annotated": n_annotated, "path": str(vdir), "annotation": ann,
        })
    index = root / "index.csv"
    write_index(pd.DataFrame(rows, columns=COLUMNS), index)
    return index


class MeanColour(nn.Module):
    """A stand-in encoder: the mean colour of the image in 0-255 (undoing the normalisation)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean)[:, None, None])
        self.register_buffer("std", torch.tensor(std)[:, None, None])

    def forward(self, x):
        return ((x * self.std + self.mean) * 255).mean(dim=(2, 3))
