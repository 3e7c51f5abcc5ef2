"""``mambava data validate``: every problem of a folder in Aff-Wild2's official layout
(:mod:`mambava.data.affwild2`), each naming its file and line: annotation headers and values,
annotation files against the frames on disk, unreadable or misnamed JPEGs, the test list.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambava.checks import InputError, is_hidden
from mambava.data.affwild2 import (
    ANNOTATIONS,
    CROPS,
    FRAME_RE,
    SPLIT_DIRS,
    annotation_files,
    check_annotation_lines,
    default_test_list,
    frames_on_disk,
    read_test_list,
)


@dataclass
class _VideoCheck:
    video: str
    problems: list[str]



def _check_jpegs(video_dir: Path) -> list[str]:
    """Decode every frame (at 1/8 scale: the whole entropy stream is still read, so truncated
    or corrupt files fail) and report the ones that are not readable JPEGs, and misnamed files."""
    from PIL import Image

    problems = []
    with os.scandir(video_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        p = video_dir / e.name
        if is_hidden(e.name):
            continue
        m = FRAME_RE.match(e.name)
        if not m:
            problems.append(f"{p}: unexpected file name (expected 5-digit, 1-based frame names like 00001.jpg)")
            continue
        if int(m.group(1)) == 0:
            problems.append(f"{p}: frame number 0 (frame names are 1-based: 00001.jpg is the first)")
            continue
        try:
            with Image.open(p) as im:
                if im.format != "JPEG":
                    raise OSError(f"format is {im.format}, not JPEG")
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        except Exception as exc:  # PIL raises many types for broken files
            problems.append(f"{p}: not a readable JPEG ({exc})")
    return problems



def validate_layout(root: str | Path, test_list: str | None = None, workers: int = 4) -> list[str]:
    """Check a copy in the official layout; return every problem found, with file and line.

    Checks: annotation folders present; header, numeric values, values in [-1, 1] or -5;
    annotation files shorter than the frames on disk; frames that are not readable JPEGs or are
    misnamed; empty video folders; annotation files without frames; frames without annotations
    (video folders in no split and not in the test list, when one is given); videos both in the
    test list and annotated in a split; test lists and annotations that are not UTF-8 text.
    Benign quirks are accepted: a UTF-8 byte-order mark, CRLF line ends, blank last lines,
    hidden files (.DS_Store, ._*). Without ``test_list``, the official list at the root
    (``test_set_release.txt``) is used when present.
    """
    root = Path(root)
    test_list = default_test_list(root, test_list)
    problems: list[str] = []
    crops = root / CROPS
    if not root.is_dir():
        return [f"{root}: folder does not exist"]
    if not crops.is_dir():
        problems.append(f"{crops}: missing (expected cropped_aligned/<video>/00001.jpg ...)")
    annotated: dict[str, Path] = {}
    for sub in SPLIT_DIRS.values():
        folder = root / ANNOTATIONS / sub
        if not folder.is_dir():
            problems.append(f"{folder}: missing annotation folder")
            continue
        for ann in annotation_files(folder):
            if ann.stem in annotated:
                problems.append(f"{ann}: video also annotated in {annotated[ann.stem]}")
            annotated[ann.stem] = ann
    test_videos: set[str] = set()
    if test_list is not None:
        tl = Path(test_list) if Path(test_list).is_absolute() else root / test_list
        try:
            test_videos = set(read_test_list(tl))
        except (InputError, FileNotFoundError) as exc:
            problems.append(str(exc))
        for video in sorted(test_videos & set(annotated)):
            problems.append(f"{annotated[video]}: video {video} is annotated here but also listed as a test video in {tl}")
    video_dirs = {p.name: p for p in crops.iterdir() if p.is_dir() and not is_hidden(p.name)} if crops.is_dir() else {}

    def check_video(video: str) -> _VideoCheck:
        out: list[str] = []
        vdir = video_dirs.get(video)
        ann = annotated.get(video)
        # frame 00000 is reported by _check_jpegs
        frames = frames_on_disk(vdir, strict=False) if vdir is not None else np.array([], dtype=np.int64)
        empty = vdir is not None and not any(not is_hidden(p.name) for p in vdir.iterdir())
        if empty:
            out.append(f"{vdir}: empty video folder")
        elif vdir is not None:
            out.extend(_check_jpegs(vdir))
        if ann is not None:
            labels, ann_problems = check_annotation_lines(ann)
            out.extend(ann_problems)
            if vdir is None:
                out.append(f"{ann}: annotation file without frames ({crops / video} does not exist)")
            elif frames.size:
                n_lines = len(labels) if labels is not None else _count_body_lines(ann)
                if frames.max() > n_lines:
                    out.append(
                        f"{ann}:{n_lines + 1}: annotation file shorter than the frames on disk "
                        f"({n_lines} label lines, frames up to {frames.max():05d}.jpg)"
                    )
        elif vdir is not None and not empty and video not in test_videos:
            out.append(f"{vdir}: frames without annotations (no {video}.txt in any split" + (
                " nor in the test list)" if test_list is not None else ")"))
        if video in test_videos and vdir is None:
            out.append(f"{crops / video}: listed in the test list but has no frames")
        return _VideoCheck(video, out)

    videos = sorted(set(video_dirs) | set(annotated) | test_videos)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(check_video, videos):
            problems.extend(result.problems)
    return problems



def accepted_quirks(root: str | Path, test_list: str | None = None) -> list[str]:
    """Notes on what a copy carries that is accepted, not a problem (one line each, only for what
    is there): files with a UTF-8 byte-order mark or CRLF line ends, hidden files, frames with a
    label line but no face crop, unannotated (-5) label lines."""
    from mambava.checks import BOM
    from mambava.data.affwild2 import UNLABELLED, read_annotation

    root = Path(root)
    test_list = default_test_list(root, test_list)
    anns = [p for sub in SPLIT_DIRS.values() if (root / ANNOTATIONS / sub).is_dir()
            for p in annotation_files(root / ANNOTATIONS / sub)]
    texts = anns + ([root / test_list] if test_list and (root / test_list).is_file() else [])
    heads = {p: p.read_bytes() for p in texts}
    bom = sum(b.startswith(BOM) for b in heads.values())
    crlf = sum(b"\r\n" in b for b in heads.values())
    hidden = sum(is_hidden(f) for _, _, files in os.walk(root) for f in files)
    missing = unlabelled = 0
    for p in anns:
        labels = read_annotation(p)
        unlabelled += int((labels == UNLABELLED).all(axis=1).sum())
        vdir = root / CROPS / p.stem
        if vdir.is_dir():
            missing += max(0, len(labels) - len(frames_on_disk(vdir, strict=False)))
    notes = [(bom, "text files start with a UTF-8 byte-order mark"), (crlf, "text files have CRLF line ends"),
             (hidden, "hidden files (.DS_Store, ._*, ...) are ignored"),
             (missing, "annotated frames have no face crop (no face found: their features are filled in)"),
             (unlabelled, "label lines are -5 (not annotated: left out of training and scoring)")]
    return [f"note: {n:,} {what}" for n, what in notes if n]


def _count_body_lines(path: Path) -> int:
    with open(path, errors="replace") as f:
        return max(0, sum(1 for _ in f) - 1)
