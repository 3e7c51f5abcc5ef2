"""How many worker processes a ``workers`` setting means (no torch import: the data stage uses it).

Every ``workers`` / ``num_workers`` setting of ``params.yaml`` takes a number or ``auto``: the cores
this process may use. None of them changes a result: the runs, videos and images they share out
are independent and seeded, and each keeps its own thread count.
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    """The cores this process may use (its CPU affinity: ``taskset``, a container's or Slurm's
    share), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1  # pragma: no cover - macOS and Windows have no affinity call


def resolve_workers(value: int | str | None, minimum: int = 1) -> int:
    """A ``workers`` setting as a number: ``auto`` (or None) -> :func:`cpu_count`, a number as it is,
    never below ``minimum`` (0 for a DataLoader's image workers, which may decode in-process)."""
    if value is None or value == "auto":
        return max(minimum, cpu_count())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"workers must be 'auto' or a whole number >= {minimum}, not {value!r}")
    return value
