"""Atomic writes: every output goes to a temporary file beside its target, then is renamed over
it, so a reader (or a rerun after a crash) never sees a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


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


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
