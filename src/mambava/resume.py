"""What a train stage needs to resume through ``dvc repro`` after a kill.

DVC deletes a stage's outputs (``best.pt``, the metrics and the logs) before it reruns the
stage. The training state ``last.pt`` is not an output, so it survives; it carries everything the
outputs are rebuilt from (the best weights so far, the logs so far), and the train stage rewrites
them from it on resume (:mod:`mambava.train`). Whether a ``last.pt`` belongs to the run is decided
by a fingerprint of the *content* of every input that changes the result: the settings, the
feature arrays, the annotation files and the folds file (:func:`content_digest`); two sets of
features of the same shape but other values are not mistaken for each other.

``MAMBAVA_TEST_PAUSE=<step>:<marker file>`` (a test hook): after that step, and after the
validation and the save that follow it, the run writes the marker and waits, so that a test can
SIGKILL ``dvc repro`` at a chosen point.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from mambava.io import file_sha256

PAUSE_ENV = "MAMBAVA_TEST_PAUSE"


def content_digest(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{file name: SHA-256}`` of each file (names, not paths: moving the project keeps it)."""
    out = {}
    for p in paths:
        p = Path(p)
        key = f"{p.parent.name}/{p.name}"
        out[key] = file_sha256(p)
    return out


def pause_point(step: int) -> None:
    """The test hook of the module doc; does nothing unless the variable names this step."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if int(at) != step:
        return
    Path(marker).write_text(f"{step}\n")
    while True:  # until killed
        time.sleep(1.0)
