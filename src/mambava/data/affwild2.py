"""Aff-Wild2 valence-arousal data in its official layout: read and index (validation:
:mod:`mambava.data.validate`).

The layout (8th ABAW release), relative to a root folder::

    cropped_aligned/<video>/00001.jpg          5-digit, 1-based face crops; frames with no face
                                               found are absent
    annotations/VA_Estimation_Challenge/
        Train_Set/<video>.txt                  first line `valence,arousal`, then one line per
        Validation_Set/<video>.txt             video frame, values in [-1, 1]; -5 = not annotated
    <test list>                                names of the test videos, one per line

Test labels are not public for the real data; the synthetic twin writes them to a separate
folder (``data.test_labels``), in the same format, so its test table can be scored.

Every later stage reads the *index*: one table of videos with columns
``video, split, n_frames, n_frames_on_disk, n_annotated, path, annotation``. ``n_frames`` is the
length of the video: the number of annotation lines where labels exist, otherwise the highest
frame number on disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.checks import InputError, is_hidden, read_text_lines

CROPS = "cropped_aligned"
ANNOTATIONS = Path("annotations") / "VA_Estimation_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
HEADER = "valence,arousal"
UNLABELLED = -5.0  # the official files' value of a frame without a label (the one definition)
FRAME_RE = re.compile(r"^(\d{5})\.jpg$")
OFFICIAL_TEST_LIST = "test_set_release.txt"  # the organisers' list of test videos, at the root
INDEX_COLUMNS = ["video", "split", "n_frames", "n_frames_on_disk", "n_annotated", "path", "annotation"]


class AnnotationError(InputError):
    """An annotation file that cannot be read; the message names file and line."""


def frame_path(video_dir: str | Path, i: int) -> Path:
    """Path of frame ``i`` (1-based) of a video folder: ``00001.jpg`` for i = 1."""
    return Path(video_dir) / f"{i:05d}.jpg"


def frames_on_disk(video_dir: str | Path, strict: bool = True) -> np.ndarray:
    """Sorted 1-based frame numbers of the correctly named JPEGs in a video folder.

    Other files are ignored (``mambava data validate`` reports them); a frame numbered 00000
    raises :class:`InputError`, since frame numbers are 1-based and 0 would be read as the last
    frame of the video (``strict=False``: it is left out instead).
    """
    numbers = []
    with os.scandir(video_dir) as it:
        for entry in it:
            m = FRAME_RE.match(entry.name)
            if m:
                numbers.append(int(m.group(1)))
    if 0 in numbers and not strict:
        numbers.remove(0)
    if 0 in numbers:
        raise InputError(f"{frame_path(video_dir, 0)}: frame number 0 (frame names are 1-based: 00001.jpg is the first)")
    return np.array(sorted(numbers), dtype=np.int64)


def check_annotation_lines(path: Path) -> tuple[np.ndarray | None, list[str]]:
    """Parse an annotation file line by line; return (labels or None, problems with file:line)."""
    problems: list[str] = []
    try:
        lines = read_text_lines(path)  # byte-order mark, CRLF and blank last lines accepted
    except InputError as exc:
        return None, [str(exc)]
    except OSError as exc:
        return None, [f"{path}: cannot read: {exc.strerror or exc}"]
    if not lines:
        return None, [f"{path}:1: empty file (expected the header '{HEADER}')"]
    if lines[0].strip().replace(" ", "") != HEADER:
        problems.append(f"{path}:1: wrong or missing header {lines[0][:40]!r} (expected '{HEADER}')")
        body_start = 0 if _looks_numeric(lines[0]) else 1
    else:
        body_start = 1
    values = np.full((len(lines) - body_start, 2), np.nan, dtype=np.float32)
    for k, line in enumerate(lines[body_start:]):
        lineno = k + body_start + 1
        parts = line.strip().split(",")
        if len(parts) != 2:
            problems.append(f"{path}:{lineno}: expected 2 comma-separated values, got {line.strip()[:40]!r}")
            continue
        try:
            v, a = float(parts[0]), float(parts[1])
        except ValueError:
            problems.append(f"{path}:{lineno}: non-numeric value in {line.strip()[:40]!r}")
            continue
        for name, x in (("valence", v), ("arousal", a)):
            if not np.isfinite(x) or (x != UNLABELLED and not -1.0 <= x <= 1.0):
                problems.append(f"{path}:{lineno}: {name} {x} outside [-1, 1] (and not -5)")
        values[k] = (v, a)
    return (None if problems else values), problems


def _looks_numeric(line: str) -> bool:
    try:
        [float(p) for p in line.split(",")]
        return True
    except ValueError:
        return False


def read_annotation(path: str | Path) -> np.ndarray:
    """Labels of one video as a (n_frames, 2) float32 array (valence, arousal); -5 kept.

    Raises AnnotationError naming the file and line of the first problems.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:  # fast path: pandas' C parser; any irregularity falls back to the line-wise check
        # (blank lines are kept as NaN rows here, so one in the middle is reported, not skipped)
        df = pd.read_csv(path, dtype=np.float32, skip_blank_lines=False)
        if list(df.columns) == ["valence", "arousal"]:
            arr = df.to_numpy(dtype=np.float32)
            ok = np.isfinite(arr).all() and ((arr == UNLABELLED) | ((arr >= -1) & (arr <= 1))).all()
            if ok:
                return arr
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        pass
    values, problems = check_annotation_lines(path)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AnnotationError("\n".join(problems[:5]) + more)
    return values


def write_annotation(path: str | Path, labels: np.ndarray) -> None:
    """Write (n, 2) labels in the official format, atomically."""
    from mambava.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(HEADER + "\n")
        for v, a in labels:
            f.write(f"{_fmt(v)},{_fmt(a)}\n")


def _fmt(x: float) -> str:
    return "-5" if x == UNLABELLED else f"{x:.4f}"


def read_test_list(path: str | Path) -> list[str]:
    """Video names from an organisers' test list (one per line; blank lines and # ignored).

    Raises :class:`InputError` naming the line of text that is not UTF-8 or of a name that
    cannot be a video folder, FileNotFoundError when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test list not found")
    names = []
    for lineno, line in enumerate(read_text_lines(path), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.removesuffix(".txt").removesuffix(".mp4").removesuffix(".avi")
            if "/" in name or "\\" in name or "," in name:
                raise InputError(f"{path}:{lineno}: {line[:60]!r} is not a video name (one name per line)")
            names.append(name)
    return names


def annotation_files(folder: Path) -> list[Path]:
    """The ``<video>.txt`` files of an annotation folder, stray hidden files left out."""
    return sorted(p for p in folder.glob("*.txt") if not is_hidden(p.name))


def default_test_list(root: Path, test_list: str | None) -> str | None:
    """``test_list`` as given, else the official list when it sits at the root, else None."""
    if test_list is None and (Path(root) / OFFICIAL_TEST_LIST).is_file():
        return OFFICIAL_TEST_LIST
    return test_list


# --------------------------------------------------------------------------- index
def build_index(root: str | Path, test_labels: str | Path | None = None, test_list: str | None = None) -> pd.DataFrame:
    """One row per video of every split, read from a copy in the official layout."""
    root = Path(root)
    rows = []
    for split, sub in SPLIT_DIRS.items():
        folder = root / ANNOTATIONS / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: annotation folder missing (is data.root = {root} right?)")
        for ann in annotation_files(folder):
            rows.append(_index_row(root, ann.stem, split, ann))
    if test_list is not None and (root / test_list).is_file():
        for name in read_test_list(root / test_list):
            ann = Path(test_labels) / f"{name}.txt" if test_labels else None
            rows.append(_index_row(root, name, "test", ann if ann is not None and ann.is_file() else None))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    dup = index["video"][index["video"].duplicated()]
    if len(dup):
        where = [f"{v} ({', '.join(index.split[index.video == v])})" for v in sorted(set(dup))[:10]]
        raise InputError(f"{root}: videos in more than one split: {'; '.join(where)}")
    return index


def _index_row(root: Path, video: str, split: str, ann: Path | None) -> dict:
    vdir = root / CROPS / video
    on_disk = frames_on_disk(vdir) if vdir.is_dir() else np.array([], dtype=np.int64)
    if ann is not None:
        labels = read_annotation(ann)
        n_frames = len(labels)
        n_annotated = int(((labels != UNLABELLED).all(axis=1)).sum())
    else:
        n_frames = int(on_disk.max()) if on_disk.size else 0
        n_annotated = 0
    return {
        "video": video,
        "split": split,
        "n_frames": n_frames,
        "n_frames_on_disk": int(on_disk.size),
        "n_annotated": n_annotated,
        "path": str(vdir),
        "annotation": str(ann) if ann is not None else "",
    }


def load_index(path: str | Path) -> pd.DataFrame:
    """Read the index written by the data stage (columns INDEX_COLUMNS)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: index not found (run `dvc repro data`)")
    try:
        df = pd.read_csv(path, dtype={"video": str, "split": str, "path": str, "annotation": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a readable index table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: index lacks columns {missing}")
    return df


def write_index(index: pd.DataFrame, path: str | Path) -> None:
    from mambava.io import write_csv

    write_csv(index, path)
