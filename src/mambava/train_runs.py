"""The ``train`` stage: every fold and seed of one (level, variant), each run trained by
:func:`mambava.train.fit` in its folder :func:`mambava.runtime.train_dir`.

A run's fingerprint covers its settings (of the model only those its variant reads,
:func:`mambava.models.settings_read`), its videos, the content of their features, labels and the
folds file, and the code its numbers depend on (:func:`code_digest`: of the model files only those
its variant runs); a folder whose
``train_metrics.json`` carries the same fingerprint is finished and kept. ``run_all`` writes the
stage's summary ``<train.out>/<level>/<variant>.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from mambava import distributed
from mambava.data.windows import Windows
from mambava.io import write_json, write_timing
from mambava.resume import content_digest
from mambava.runtime import (
    check_device,
    environment,
    inputs_key,
    level_features,
    level_skipped,
    parallel_map,
    peak_memory,
    resolve_device,
    resolve_workers,
    seeds_of,
    set_threads,
    train_dir,
)
from mambava.train import fit

log = logging.getLogger("mambava.train")


def fingerprint_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_digest(mcfg) -> dict[str, str]:
    """SHA-256 of the code a run's numbers depend on (training loop and stage, run-time layer, schedules,
    DVCLive logging, windows, metrics, inference, and the model files that ``mcfg``'s model runs,
    :func:`mambava.models.code_read`): a finished run is kept only if this code is unchanged too.
    An edit of one variant's model code (the Transformer's, say) retrains that variant's runs only."""
    import mambava.data.windows
    import mambava.inference
    import mambava.metrics
    import mambava.models
    import mambava.runlog
    import mambava.runtime
    import mambava.schedules
    import mambava.train

    models = Path(mambava.models.__file__).parent
    files = [Path(mambava.train.__file__), Path(__file__), Path(mambava.runtime.__file__),
             Path(mambava.data.windows.__file__), Path(mambava.inference.__file__),
             Path(mambava.metrics.__file__), Path(mambava.schedules.__file__), Path(mambava.runlog.__file__),
             *(models / f"{name}.py" for name in sorted(mambava.models.code_read(mcfg)))]
    return content_digest(files)


def _fold_data(cfg, fold: int, feats_dir: Path, cache: dict) -> tuple:
    """(train names, validation names, train videos, validation videos, data hash) of a fold,
    loaded once per ``cache``; the hash covers the content of every input file (re-extracted
    features of the same shape are other data)."""
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import fold_videos, read_folds
    from mambava.features.store import feature_path
    from mambava.inference import load_videos

    key = ("fold", fold)
    if key not in cache:
        index = load_index(cfg.data.index)
        train_names, val_names = fold_videos(read_folds(cfg.folds.file), fold)
        if not train_names or not val_names:
            raise ValueError(f"{cfg.folds.file}: fold {fold} has {len(train_names)} train and {len(val_names)} validation videos")
        rows = index.set_index("video")
        data_hash = {
            "features": content_digest(feature_path(feats_dir, v) for v in train_names + val_names),
            "annotations": content_digest(a for a in rows.loc[train_names + val_names, "annotation"]
                                          if isinstance(a, str) and a),
            "folds": content_digest([cfg.folds.file]),
        }
        cache[key] = (train_names, val_names, load_videos(index, train_names, feats_dir),
                      load_videos(index, val_names, feats_dir), data_hash)
    return cache[key]


def _model_config(cfg, variant: str, level: str, dim: int, first_file: Path):
    """The variant's model settings for features of width ``dim`` (the oracle store has its own)."""
    from mambava.models import variant_config

    mcfg = variant_config(cfg.model, variant)
    if level != "mae":
        mcfg = mcfg.model_copy(update={"input_dim": dim})
    if dim != mcfg.input_dim:
        raise ValueError(f"{first_file}: features are {dim}-d but model.input_dim is "
                         f"{mcfg.input_dim} (set model.input_dim to the encoder's embed_dim)")
    return mcfg


def run(cfg, variant: str, fold: int, level: str = "mae", seed: int | None = None, progress: bool = True,
        interrupt_at: int | None = None, cache: dict | None = None) -> dict:
    """Train one (level, variant, fold, seed) (``seed`` None: the primary seed) and write its folder.

    A folder whose ``train_metrics.json`` carries the same fingerprint (settings, videos and the
    content of their features and labels) is finished: it is not trained again. ``cache`` lets a
    caller that trains several runs share the loaded videos and their hashes.
    """
    from mambava.features.store import feature_path
    from mambava.inference import scan_backend
    from mambava.models import build_model, settings_read

    seed = cfg.train.seed if seed is None else seed
    tc = cfg.train.model_copy(update={"seed": seed})
    set_threads(tc.threads)
    ddp, device = distributed.setup(resolve_device(cfg.device))  # torchrun: this rank's place and device
    feats_dir = level_features(cfg, level)
    train_names, val_names, train_videos, val_videos, data_hash = _fold_data(
        cfg, fold, feats_dir, {} if cache is None else cache)
    mcfg = _model_config(cfg, variant, level, train_videos[0].features.shape[1], feature_path(feats_dir, train_names[0]))
    w, s = (tc.window_fold0, tc.stride_fold0) if fold == 0 else (tc.window, tc.stride)
    out = train_dir(cfg, level, variant, fold, seed)
    fingerprint = fingerprint_of({
        "train": tc.model_dump(exclude={"threads", "out", "seeds", "workers"}), "model": settings_read(mcfg),
        "evaluate": cfg.evaluate.model_dump(include={"inference", "window", "stride"}),
        "level": level, "variant": variant, "fold": fold, "train_videos": train_names, "val_videos": val_names,
        "data": data_hash, "code": code_digest(mcfg),
    })
    done = out / "train_metrics.json"
    if done.exists() and (out / "best.pt").exists():
        prev = json.loads(done.read_text())
        if prev.get("fingerprint") == fingerprint:
            log.info("%s: finished earlier with the same settings and data; kept", out)
            return prev
    train_set = Windows(train_videos, w, s, tc.last_window)
    torch.manual_seed(seed)
    model = build_model(mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    backend = scan_backend(mcfg, device)
    log.info(
        "train %s/%s fold %d seed %d on %s (scan %s): %d videos, %d windows of %d/%d, %d validation videos, %.3fM parameters%s",
        level, variant, fold, seed, device, backend, len(train_names), len(train_set), w, s, len(val_names), n_params / 1e6,
        f"; rank {ddp.rank} of {ddp.world_size} ({ddp.backend})" if ddp.enabled else "",
    )
    done.unlink(missing_ok=True)
    summary = fit(
        model, train_set, val_videos, tc, cfg.evaluate, device, out, fingerprint=fingerprint,
        extra_best={"model_cfg": mcfg.model_dump(), "variant": variant, "fold": fold, "level": level, "seed": seed},
        progress=progress, interrupt_at=interrupt_at, ddp=ddp,
    )
    metrics = {
        **summary, "level": level, "variant": variant, "fold": fold, "n_params": n_params,
        "n_train_videos": len(train_names), "n_val_videos": len(val_names), "n_train_windows": len(train_set),
        "window": w, "stride": s, "fingerprint": fingerprint, **environment(device, backend, seed),
        **({"world_size": ddp.world_size, "dist_backend": ddp.backend} if ddp.enabled else {}),
    }
    return _write_run(out, metrics, ddp.is_main)


def _write_run(out: Path, metrics: dict, is_main: bool) -> dict:
    """Write ``train_metrics.json`` and, beside it in a file DVC does not hash (:mod:`mambava.io`),
    the measured time and memory; returns both together."""
    timing = {**{k: metrics.pop(k) for k in ("seconds", "seconds_per_epoch")}, **peak_memory()}
    if is_main:
        write_json(out / "train_metrics.json", metrics)
        write_timing(out, "train", timing)
        log.info("%s: best CCC_v %.4f CCC_a %.4f at step %d; %.1f s", out, metrics["ccc_valence"],
                 metrics["ccc_arousal"], metrics["best_step"], timing["seconds"])
    return {**metrics, **timing}


_JOB_CACHE: dict = {}  # per worker process: the loaded videos of the folds it has trained


def _train_job(args) -> dict:
    cfg, variant, level, fold, seed, progress = args
    cache = _JOB_CACHE.setdefault((*inputs_key(cfg, level), fold), {})
    return run(cfg, variant, fold, level, seed, progress=progress, cache=cache)


def run_all(cfg, variant: str, level: str = "mae", folds: Sequence[int] | None = None, progress: bool = True) -> dict:
    """The ``train`` stage of one (level, variant): every fold and seed in this process (one start-up
    instead of one per run; finished runs are kept, see :func:`run`). Writes the summary
    ``<train.out>/<level>/<variant>.json`` (best validation CCCs per fold and seed, and the DVCLive
    summary of the primary run: fold 0, primary seed) and returns it."""
    from mambava.data.windows import read_folds

    root = Path(cfg.train.out) / level
    summary_path = root / f"{variant}.json"
    why = level_skipped(cfg, level)
    if why:
        log.warning("train %s/%s skipped: %s", level, variant, why)
        (root / variant).mkdir(parents=True, exist_ok=True)
        write_json(summary_path, {"skipped": why})
        return {"skipped": why}
    check_device(cfg)  # a setting this machine cannot run fails here, before any run starts
    if folds is None:
        k = int(read_folds(cfg.folds.file)["cv_fold"].max())
        folds = range(0, k + 1)
    jobs = [(fold, seed) for fold in folds for seed in seeds_of(cfg.train)]
    # under torchrun the ranks share each run (DDP); forked workers would split them again
    workers = 1 if distributed.from_env()[1] > 1 else resolve_workers(cfg.train.workers)
    results = parallel_map(_train_job, [(cfg, variant, level, f, s, progress) for f, s in jobs], workers)
    runs = {f"fold{f}/seed{s}": {k: m[k] for k in ("ccc_valence", "ccc_arousal", "p_va", "best_step")}
            for (f, s), m in zip(jobs, results)}
    results = {"level": level, "variant": variant, "runs": runs}
    primary = train_dir(cfg, level, variant, 0, cfg.train.seed) / "dvclive" / "metrics.json"
    if primary.exists():  # the primary run's DVCLive summary, so that the committed summary carries it
        results["dvclive"] = json.loads(primary.read_text())
    if distributed.from_env()[0] == 0:
        write_json(summary_path, results)
    return results
