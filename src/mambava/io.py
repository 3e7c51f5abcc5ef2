"""Atomic writes: every output goes to a temporary file beside its target, then is renamed over
it, so a reader (or a rerun after a crash) never sees a half-written file."""

from __future__ import annotations

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


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
