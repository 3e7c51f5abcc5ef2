"""Face frames as tensors: the image datasets that pretraining, fine-tuning and extraction share.

A frame is addressed by its video folder and its 1-based number (``00001.jpg`` is frame 1, the
annotation file's line 2). Images are read as RGB, resized to the encoder's input size when it
differs (bicubic; the Aff-Wild2 crops are 112x112, the paper's ViT-L/16 takes 224) and
normalised with the mean/std of the parameters (the paper's face statistics by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mambava.data import affwild2
from mambava.data.affwild2 import frame_path, load_index, read_annotation  # noqa: F401  (re-exported)


def frames_on_disk(video_dir: str | Path) -> np.ndarray:
    """Sorted 1-based numbers of a video's frame images; empty if the folder does not exist
    (a video where no face was ever found may have no folder at all)."""
    if not Path(video_dir).is_dir():
        return np.zeros(0, dtype=np.int64)
    return np.asarray(affwild2.frames_on_disk(video_dir), dtype=np.int64)


def read_image(path: str | Path, img_size: int) -> np.ndarray:
    """One frame as (img_size, img_size, 3) uint8 RGB, resized (bicubic) when its size differs."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.BICUBIC)
            return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
    except OSError as exc:
        raise OSError(f"{path}: cannot read the frame image ({exc})") from exc


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 ``(x / 255 - mean) / std``, on the images' device.

    The feature extraction runs this on the GPU: the loader workers then ship uint8 images
    (a quarter of the bytes of float32), which is what keeps ViT-L/16 fed at 224 px.
    """
    x = images.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return x.sub_(m).div_(s)


def load_image(path: str | Path, img_size: int, mean: Sequence[float], std: Sequence[float],
               colour: np.random.Generator | None = None) -> torch.Tensor:
    """One frame as a normalised (3, img_size, img_size) float tensor.

    ``colour``, if given, draws a colour augmentation before normalisation: the channels in a
    random order and with random gains (0.6-1.4), grey with probability 0.2. Skin, hair and
    background colours identify a person; this makes the fine-tuned encoder rely on shapes
    (mouth, brows, eyes) instead of memorising who is in the training videos.
    """
    arr = read_image(path, img_size)
    if colour is None:
        return normalise(torch.from_numpy(arr).permute(2, 0, 1), mean, std)
    arr = arr.astype(np.float32) / 255.0
    if colour.random() < 0.2:
        arr = np.repeat(arr.mean(axis=2, keepdims=True), 3, axis=2)
    else:
        arr = arr[:, :, colour.permutation(3)] * colour.uniform(0.6, 1.4, 3).astype(np.float32)
    arr = np.clip(arr, 0.0, 1.0)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


class FrameDataset(Dataset):
    """Frames given as (video_dir, frame_number) pairs; item i -> (image, i).

    ``labels`` (N, 2) float32, if given, is returned instead of the position. ``hflip`` flips
    each image with probability 1/2 (augmentation for pretraining and fine-tuning);
    ``colour_seed``, if not None, turns on the colour augmentation of :func:`load_image`, drawn
    from a stream seeded by (colour_seed, item, torch's per-item draw) so runs are repeatable.
    ``raw`` returns the (3, img_size, img_size) uint8 image instead, to be normalised with
    :func:`normalise` where the batch lands (no colour augmentation then).
    """

    def __init__(self, dirs: Sequence[str], frames: np.ndarray, video_of: np.ndarray, img_size: int,
                 mean: Sequence[float], std: Sequence[float], labels: np.ndarray | None = None,
                 hflip: bool = False, colour_seed: int | None = None, raw: bool = False):
        if raw and colour_seed is not None:
            raise ValueError("the colour augmentation needs float images: raw=True excludes colour_seed")
        self.dirs = [str(d) for d in dirs]
        self.frames = np.asarray(frames, dtype=np.int64)
        self.video_of = np.asarray(video_of, dtype=np.int64)
        self.img_size, self.mean, self.std = img_size, tuple(mean), tuple(std)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.hflip = hflip
        self.colour_seed = colour_seed
        self.raw = raw

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        path = frame_path(self.dirs[self.video_of[i]], int(self.frames[i]))
        colour = None
        if self.colour_seed is not None:
            colour = np.random.default_rng([self.colour_seed, i, int(torch.randint(2**31, ()))])
        if self.raw:
            x = torch.from_numpy(read_image(path, self.img_size)).permute(2, 0, 1).contiguous()
        else:
            x = load_image(path, self.img_size, self.mean, self.std, colour)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.labels is not None:
            return x, torch.from_numpy(self.labels[i])
        return x, i


def split_frames(index, split: str, labelled: bool = False, videos=None):
    """All on-disk frames (within each video's n_frames) of the videos of one split (and, when
    ``videos`` is given, only of those videos).

    Returns (dirs, frames, video_of, labels or None). With ``labelled`` only frames with both
    valence and arousal annotated (not -5) are kept and their labels returned.
    """
    rows = index[index["split"] == split]
    if videos is not None:
        rows = rows[rows["video"].isin(set(videos))]
    dirs, frames, video_of, labels = [], [], [], []
    for _, row in rows.iterrows():
        on_disk = frames_on_disk(row["path"])
        on_disk = on_disk[on_disk <= int(row["n_frames"])]
        if labelled:
            ann = row.get("annotation")
            if not isinstance(ann, str) or not ann:
                continue
            lab = read_annotation(ann)
            on_disk = on_disk[on_disk <= len(lab)]
            lab = lab[on_disk - 1]
            keep = (lab != -5).all(axis=1)
            on_disk, lab = on_disk[keep], lab[keep]
            labels.append(lab)
        video_of.append(np.full(len(on_disk), len(dirs), dtype=np.int64))
        frames.append(on_disk)
        dirs.append(row["path"])
    if not dirs:
        raise ValueError(f"no videos of split {split!r} in the index" + (" with labels" if labelled else ""))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return (
        dirs,
        cat(frames, np.int64),
        cat(video_of, np.int64),
        np.concatenate(labels).astype(np.float32) if labelled else None,
    )
