"""Atomic writes: every output goes to a temporary file beside its target, then is renamed over
it, so a reader (or a rerun after a crash) never sees a half-written file.

This is the one home of the atomic writers (text, JSON, CSV, bytes, ``.npy``, ``torch.save``,
figures, whole directories); the stages call them rather than renaming files themselves. The
temporary file is ``<name>.tmp`` (a ``suffix`` may add the extension a writer infers the format
from); it is removed when the write fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def _tmp(path: Path, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + suffix)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """``with atomic_path(p) as tmp: <write tmp>``: ``tmp`` replaces ``p`` when the block ends
    without an exception; on an exception ``tmp`` is deleted and ``p`` is left as it was."""
    path = Path(path)
    tmp = _tmp(path, suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def temporary(path: str | Path, suffix: str = ".tmp") -> Path:
    """The temporary file beside ``path`` for a writer that streams into it over a long time and
    decides itself when it is complete (``predict``'s row-by-row CSV and its overlay video, which
    keep what was done on Ctrl-C); it hands the file over with :func:`publish`."""
    return _tmp(Path(path), suffix)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished :func:`temporary` file over ``path`` (atomic on one filesystem)."""
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(df: pd.DataFrame, path: str | Path, **to_csv) -> None:
    """``df.to_csv(path, index=False, **to_csv)``, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **to_csv)


def write_npy(path: str | Path, array, before_replace=None) -> None:
    """``np.save`` to ``path`` (no ``.npy`` appended), atomically; ``before_replace()`` runs
    between the write and the rename (a test hook that stands for a kill at that point)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
        if before_replace is not None:
            before_replace()


def write_torch(obj, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (checkpoints load with ``weights_only=True``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_figure(fig, path: str | Path, **savefig) -> None:
    """``fig.savefig(path, **savefig)``, atomically (the format follows ``path``'s extension)."""
    path = Path(path)
    with atomic_path(path, ".tmp" + path.suffix) as tmp:
        fig.savefig(tmp, **savefig)


def replace_dir(staging: str | Path, out: str | Path) -> None:
    """Put the finished directory ``staging`` in the place of ``out`` (a rename; an existing
    ``out`` is moved aside first and deleted after, so ``out`` is never half-written)."""
    staging, out = Path(staging), Path(out)
    if out.exists():
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)


# What a run measured rather than computed (seconds, throughput, peak memory, work skipped on a
# resume) goes to `<folder>/<stage>.timing.json`. `.dvcignore` hides these files from DVC, so the
# files DVC hashes are the same bytes on every rerun and `dvc.lock` does not change.
TIMING_SUFFIX = ".timing.json"


def write_timing(folder: str | Path, stage: str, values: dict) -> None:
    write_json(Path(folder) / f"{stage}{TIMING_SUFFIX}", values)


def read_timing(folder: str | Path, stage: str) -> dict:
    """The measurements of :func:`write_timing` ({} when there are none)."""
    path = Path(folder) / f"{stage}{TIMING_SUFFIX}"
    return json.loads(path.read_text()) if path.is_file() else {}


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(root: str | Path, progress: str | None = None) -> dict:
    """The content of a folder as one SHA-256: every file's path relative to ``root``, its size
    and its bytes, in sorted path order (``files``, ``bytes`` and ``sha256``). Any file added,
    removed, renamed or changed changes the digest. ``progress``: a bar of that name over the
    sub-folders (a video's frames each, in ``cropped_aligned``)."""
    root = Path(root)
    h, files, size = hashlib.sha256(), 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(1 for _ in os.walk(root)), desc=progress, unit="folder", mininterval=2.0)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            data = p.read_bytes()
            h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
            files, size = files + 1, size + len(data)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"files": files, "bytes": size, "sha256": h.hexdigest()}
