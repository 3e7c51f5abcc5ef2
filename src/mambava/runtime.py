"""The run-time layer that training, evaluation, prediction and the book's stages stand on.

Device choice, CPU threads, peak memory, the environment record written beside every result,
checkpoint I/O (atomic save, ``weights_only`` load), the fork pool that runs independent runs
side by side, and where a run's files live. It imports none of the stages (``train``,
``evaluate``, ``predict``, ...); they import it.

A *run* is one (level, variant, fold, seed): :func:`train_dir` holds what ``train`` wrote
(``best.pt``, ``train_metrics.json``, ``dvclive/``), :func:`eval_dir` what ``evaluate`` wrote.
"""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mambava.io import write_torch
from mambava.workers import cpu_count, resolve_workers  # noqa: F401 (re-exported)

LEVELS = ("mae", "oracle")  # the signal ladder's trained rungs: the frame encoder's features (pixel path), the twin's rendered parameters


# --------------------------------------------------------------------------- devices and threads
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from mambava.errors import DeviceError

        raise DeviceError("device: cuda was asked for but torch sees no CUDA device (use auto or cpu)")
    return torch.device(name)


def check_device(cfg) -> torch.device:
    """The device of ``cfg.device``, after checking that this machine can run the settings that
    need CUDA (``device: cuda``, ``model.scan_backend: cuda``); raises
    :class:`mambava.errors.DeviceError` (one line) otherwise."""
    device = resolve_device(cfg.device)
    if cfg.model.scan_backend == "cuda":
        from mambava.models.ssm import resolve_backend

        resolve_backend("cuda", device)
    return device


def set_threads(n: int | None) -> None:
    """CPU threads of torch and of the numba scan (``train.threads``; None = leave the defaults).

    On a small shared machine one thread each avoids two OpenMP pools spinning against each
    other, which costs far more than it gains for a model this small.

    numba first, torch last: the first ``numba.set_num_threads`` of a process starts numba's
    OpenMP threading layer, which sets the OpenMP thread count back to all cores, and torch's
    CPU kernels read that count. Set the other way round, the first run of each process (each
    of ``train``'s forked workers) ran torch on every core; a LayerNorm backward sums its rows in
    one partial per thread, so those runs had other bytes than the same run later in a process.
    """
    if not n:
        return
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency, but only the scan needs it
        pass
    torch.set_num_threads(n)
    if torch.get_num_threads() != n:  # pragma: no cover - a threading layer that overrides it
        raise RuntimeError(f"torch runs {torch.get_num_threads()} threads after set_num_threads({n})")


def peak_memory() -> dict:
    """Peak resident memory of this process (and of the GPU allocator when there is one), MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if sys.platform == "darwin":
        rss /= 1024
    out = {"peak_memory_mb": round(rss, 1)}  # MiB, process resident set
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def environment(device: torch.device, backend: str, seed: int) -> dict:
    """Where a result was computed: device, scan backend, versions, threads, seed."""
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "scan_backend": backend,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }


def parallel_map(fn, items: list, workers: int | None) -> list:
    """``[fn(x) for x in items]`` in up to ``workers`` forked processes (1 or None: in this one).

    Each run is independent and seeded, and pins its own threads (``train.threads``), so the
    results do not depend on the number of workers (up to float32 rounding, ~1e-8 in our tests);
    on a 2-core machine two single-threaded runs at once use both cores. Forked workers share the
    parent's imports (no second start-up)."""
    if not workers or workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(fn, items))


def inputs_key(cfg, level: str) -> tuple:
    """What a process-wide cache of loaded videos (train's and evaluate's workers) is valid for:
    the level and the absolute paths of the index, folds and feature folders, so that two projects
    run in one process (tests, notebooks) never share videos."""
    return (level, *(str(Path(p).resolve()) for p in (cfg.data.index, cfg.folds.file, cfg.features.dir,
                                                      cfg.ladder.oracle_dir)))


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(obj, path: str | Path) -> None:
    """``torch.save`` atomically (:func:`mambava.io.write_torch`)."""
    write_torch(obj, Path(path))


def load_best(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a ``best.pt`` (weights_only load) and the checkpoint's other entries."""
    from mambava.config import ModelConfig
    from mambava.models import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (run `dvc repro train`)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig.model_validate(ck["model_cfg"]))
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, {k: v for k, v in ck.items() if k != "model"}


# --------------------------------------------------------------------------- where runs live
def seeds_of(tc) -> list[int]:
    """The seeds of every (variant, fold): ``train.seed``, ``train.seed + 1``, ... (``train.seeds`` of them).
    The first is the primary seed: its evaluation is the one Tables 1 and 2 report."""
    return [tc.seed + i for i in range(tc.seeds)]


def level_features(cfg, level: str) -> str:
    """The feature store a ladder level trains on."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    return cfg.features.dir if level == "mae" else cfg.ladder.oracle_dir


def level_skipped(cfg, level: str) -> str | None:
    """Why a level does not run (the oracle needs the twin's ground truth), or None."""
    if level == "oracle" and cfg.data.source != "synthetic":
        return f"the oracle level needs the twin's ground truth; data.source is {cfg.data.source}"
    return None


def train_dir(cfg, level: str, variant: str, fold: int, seed: int) -> Path:
    """``<train.out>/<level>/<variant>/fold<k>/seed<s>/``: best.pt, train_metrics.json, dvclive/."""
    return Path(cfg.train.out) / level / variant / f"fold{fold}" / f"seed{seed}"


def eval_dir(cfg, level: str, variant: str, fold: int, seed: int | None = None) -> Path:
    """``<evaluate.out>/<level>/<variant>/fold<k>/``: the primary seed's files; another seed's
    in its ``seed<s>/`` subfolder (same files, no submission or sweep)."""
    d = Path(cfg.evaluate.out) / level / variant / f"fold{fold}"
    return d if seed is None or seed == cfg.train.seed else d / f"seed{seed}"
