"""A rehearsal copy of Aff-Wild2: the synthetic twin written as a licensed copy looks
(``mambava data user-copy --out DIR``).

What a user receives from the organisers, in the official layout (:mod:`mambava.data.affwild2`)::

    cropped_aligned/<video>/00001.jpg ...
    annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
    test_set_release.txt

and nothing else: no test labels, no ground truth (the twin's ``test_labels`` and ``truth``
folders are not written into the copy). It also carries what real copies carry on their way from
the organisers' server through a user's machines, so that the whole path from a copy to the book
(`dvc repro` with ``data.source: affwild2``) is rehearsed on the quirks a user will meet:

- a UTF-8 byte-order mark at the start of some annotation files (every third, sorted by name);
- CRLF line ends in some others (every third, the next ones), and in the test list;
- ``.DS_Store`` files at the root, in ``cropped_aligned/``, in one video folder and in each
  annotation folder, and an AppleDouble ``._<video>.txt`` beside one annotation file;
- frames missing where no face was found: the twin's own (isolated frames, runs, the first frames
  of some videos), plus a run of frames in the middle of the first validation video and the last
  frames of the first training video (its annotation file is then longer than its frames);
- unannotated stretches (``-5`` rows): the twin's own, plus one in the first training video and
  one in the first validation video.

Everything is deterministic (the twin's seed; the quirks are placed by rule, not drawn).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mambava.checks import BOM
from mambava.data.affwild2 import (
    ANNOTATIONS,
    CROPS,
    OFFICIAL_TEST_LIST,
    SPLIT_DIRS,
    UNLABELLED,
    annotation_files,
    frames_on_disk,
    read_annotation,
    write_annotation,
)
from mambava.io import replace_dir

DS_STORE = b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00"  # the first bytes of a Finder .DS_Store


def write_user_copy(cfg, out: str | Path, test_list: str = OFFICIAL_TEST_LIST) -> dict:
    """Write the twin of ``cfg`` (a SyntheticConfig) as a licensed copy at ``out`` (module doc);
    ``out`` is replaced only when the copy is complete. Returns what was written and which quirks
    the copy carries (counts and file names)."""
    from mambava.data.synthetic import generate_twin

    out = Path(out)
    work = out.with_name(f".{out.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    try:
        rows = generate_twin(cfg, work / "copy", work / "test_labels", work / "truth", test_list)
        copy = work / "copy"
        summary = {
            "videos": {s: sum(r["split"] == s for r in rows) for s in ("train", "validation", "test")},
            **_extra_gaps(copy),
            **_encodings(copy, test_list),
            "hidden_files": _hidden_files(copy),
        }
        replace_dir(copy, out)  # the test labels and the truth stay behind, and are deleted
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["frames_on_disk"] = sum(len(frames_on_disk(d)) for d in (out / CROPS).iterdir() if d.is_dir())
    summary["unannotated_rows"] = _unannotated_rows(out)
    return summary


def _first(copy: Path, split: str) -> Path:
    return annotation_files(copy / ANNOTATIONS / SPLIT_DIRS[split])[0]


def _extra_gaps(copy: Path) -> dict:
    """Missing frames and unannotated stretches beyond the twin's own draws (module doc)."""
    removed = []
    train, val = _first(copy, "train"), _first(copy, "validation")
    for ann, where in ((train, "end"), (val, "middle")):
        frames = frames_on_disk(copy / CROPS / ann.stem)
        k = max(1, len(frames) // 10)
        gone = frames[-k:] if where == "end" else frames[len(frames) // 2: len(frames) // 2 + k]
        if len(gone) == len(frames):  # never the last frame of a video
            gone = gone[1:]
        for i in gone:
            (copy / CROPS / ann.stem / f"{i:05d}.jpg").unlink()
        removed.append(f"{ann.stem}: {len(gone)} frames ({where})")
    stretches = []
    for ann in (train, val):
        labels = read_annotation(ann)
        n = len(labels)
        a, b = n // 4, n // 4 + max(2, n // 8)
        labels[a:b] = UNLABELLED
        write_annotation(ann, labels)
        stretches.append(f"{ann.stem}: lines {a + 2}-{b + 1}")
    return {"frames_removed": removed, "unannotated_stretches": stretches}


def _encodings(copy: Path, test_list: str) -> dict:
    """A byte-order mark on every third annotation file, CRLF line ends on the next ones and on
    the test list."""
    files = sorted((p for sub in SPLIT_DIRS.values() for p in annotation_files(copy / ANNOTATIONS / sub)),
                   key=lambda p: p.name)
    bom, crlf = [], []
    for i, p in enumerate(files):
        data = p.read_bytes()
        if i % 3 == 0:
            p.write_bytes(BOM + data)
            bom.append(p.name)
        elif i % 3 == 1:
            p.write_bytes(data.replace(b"\n", b"\r\n"))
            crlf.append(p.name)
    tl = copy / test_list
    tl.write_bytes(tl.read_bytes().replace(b"\n", b"\r\n"))
    crlf.append(test_list)
    return {"byte_order_mark": bom, "crlf": crlf}


def _hidden_files(copy: Path) -> list[str]:
    """.DS_Store files where a Mac leaves them, and one AppleDouble file."""
    places = [copy, copy / CROPS, *(copy / ANNOTATIONS / s for s in SPLIT_DIRS.values())]
    places.append(sorted(d for d in (copy / CROPS).iterdir() if d.is_dir())[0])
    written = []
    for d in places:
        (d / ".DS_Store").write_bytes(DS_STORE)
        written.append(str((d / ".DS_Store").relative_to(copy)))
    train = _first(copy, "train")
    apple = train.with_name(f"._{train.name}")
    apple.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    written.append(str(apple.relative_to(copy)))
    return written


def _unannotated_rows(root: Path) -> int:
    total = 0
    for sub in SPLIT_DIRS.values():
        for p in annotation_files(root / ANNOTATIONS / sub):
            total += int((read_annotation(p) == UNLABELLED).all(axis=1).sum())
    return total


def missing_frames(root: str | Path) -> int:
    """Frames of the copy's annotated videos that have a label line but no crop on disk."""
    root = Path(root)
    total = 0
    for sub in SPLIT_DIRS.values():
        for p in annotation_files(root / ANNOTATIONS / sub):
            total += len(read_annotation(p)) - len(frames_on_disk(root / CROPS / p.stem))
    return int(total)

