"""Training of one (variant, fold): the ``train`` stage.

Windows of ``train.window`` frames with stride ``train.stride`` (``window_fold0``/``stride_fold0``
on fold 0) of the fold's training videos, in batches of ``train.batch_size``; loss
``(1 - CCC_v) + (1 - CCC_a)`` over the batch with frames labelled -5 (and window padding) masked;
AdamW; the learning rate rises linearly for ``warmup_epochs`` and then follows cosine annealing
with warm restarts, stepped per batch (:func:`mambava.schedules.warmup_cosine`: PyTorch's
``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingWarmRestarts``); gradients clipped to
``grad_clip``. The fold's validation
videos are predicted ``evals_per_epoch`` times per epoch with the ``evaluate`` section's
inference; the weights with the best CCC_v + CCC_a are kept in ``best.pt``.

**Resuming.** At every validation the whole state (weights, optimizer, scheduler, RNG states,
step, best so far, logs so far) is written atomically to ``last.pt`` in the run folder. A run
that finds a ``last.pt`` with the same fingerprint (settings, videos, features) continues from it;
the data order of an epoch is a permutation drawn from (seed, epoch), so the continued run sees
the same batches as an uninterrupted one and, on CPU, ends with bitwise the same weights.
``last.pt`` is deleted when the run completes (it is not a stage output).

Files in ``<train.out>/<level>/<variant>/fold<k>/seed<s>/`` (:func:`train_dir`; the ``train`` stage runs every
fold and seed of one (level, variant), :func:`run_all`):

- ``best.pt``: ``{"model": state_dict, "model_cfg": dict, "variant", "fold", "step", ...}``,
  loadable with ``torch.load(..., weights_only=True)``;
- ``train_metrics.json``: best validation CCCs and step, device, scan backend, versions, seed;
- ``train.timing.json``: seconds, seconds per epoch, peak memory (not hashed by DVC: .dvcignore);
- ``logs/steps.csv`` (step, epoch, lr, loss, grad_norm) and ``logs/evals.csv`` (step, epoch,
  ccc_valence, ccc_arousal, p_va): DVC plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mambava import distributed
from mambava.checks import NonFiniteError, check_training_step
from mambava.data.sharding import window_share
from mambava.data.windows import UNLABELLED, Video, Windows, pad_to
from mambava.io import write_text as atomic_write_text
from mambava.io import write_timing
from mambava.metrics import ccc_loss, ccc_va
from mambava.resume import content_digest, pause_point
from mambava.schedules import warmup_cosine

log = logging.getLogger("mambava.train")

STEP_COLUMNS = ["step", "epoch", "lr", "loss", "grad_norm"]
EVAL_COLUMNS = ["step", "epoch", "ccc_valence", "ccc_arousal", "p_va"]
CHECKPOINT_FORMAT = 1


class Interrupted(RuntimeError):
    """Raised by the ``interrupt_at`` test hook, as if the process had been killed there."""


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as mamba-ssm makes them: tensors flagged ``_no_weight_decay`` (the
    Mamba block's ``A_log`` and ``D``) get no weight decay, every other tensor gets ``weight_decay``.
    Decaying ``A_log`` would pull every state's decay rate towards exp(0) = 1, i.e. shorten the
    memory the scan was initialised with."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training windows in ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def eval_points(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """In-epoch step counts (1..steps_per_epoch) after which to validate; always the last."""
    k = min(evals_per_epoch, steps_per_epoch)
    return {round(i * steps_per_epoch / k) for i in range(1, k + 1)}


# --------------------------------------------------------------------------- files
def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)




def write_rows(path: Path, columns: Sequence[str], rows: Sequence[Sequence[float]]) -> None:
    lines = [",".join(columns)] + [",".join(_fmt(v) for v in r) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "nan"
    return str(v)


def peak_memory() -> dict:
    """Peak resident memory of this process (and of the GPU allocator when there is one), MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if sys.platform == "darwin":
        rss /= 1024
    out = {"peak_memory_mb": round(rss, 1)}  # MiB, process resident set
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def set_threads(n: int | None) -> None:
    """CPU threads of torch and of the numba scan (``train.threads``; None = leave the defaults).

    On a small shared machine one thread each avoids two OpenMP pools spinning against each
    other, which costs far more than it gains for a model this small.
    """
    if not n:
        return
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency, but only the scan needs it
        pass


def environment(device: torch.device, backend: str, seed: int) -> dict:
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "scan_backend": backend,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }


# --------------------------------------------------------------------------- several processes
# Under torchrun (mambava.distributed): every rank trains on its share of each global batch
# (mambava.data.sharding), the ranks gather their predictions into the one-process batch order
# so that the CCC loss is the global batch's, and DDP averages the gradients; rank 0 validates
# and writes the checkpoints while the others wait. In one process all of this is a no-op.
def _local_batch(train_set: Windows, batch: np.ndarray, d: distributed.Dist):
    """This rank's share of a global batch (all of it in one process), padded to the largest
    share with windows the loss ignores, and every share's size."""
    items, padded, sizes = window_share(batch, d.rank, d.world_size)
    x, y = train_set.batch(items)
    if d.enabled:
        x, y = pad_to(x, padded, 0.0), pad_to(y, padded, UNLABELLED)
    return x, y, sizes


def _seed_rank(seed: int, d: distributed.Dist) -> None:
    """Rank 0 keeps the one-process random stream; rank r > 0 draws its dropout from (seed, r)."""
    if d.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, d.rank]).generate_state(1)[0]))


# --------------------------------------------------------------------------- the loop
def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def validate(model: nn.Module, videos: Sequence[Video], device: torch.device, eval_cfg) -> dict[str, float]:
    """CCC_v, CCC_a and P_VA over the videos concatenated (the official way)."""
    from mambava.inference import predict_videos

    preds = predict_videos(model, videos, device, eval_cfg)
    return ccc_va(np.concatenate(preds), np.concatenate([np.asarray(v.labels) for v in videos]))


def fit(
    model: nn.Module,
    train_set: Windows,
    val_videos: Sequence[Video],
    train_cfg,
    eval_cfg,
    device: torch.device,
    out_dir: str | Path,
    fingerprint: str = "",
    extra_best: dict | None = None,
    progress: bool = True,
    interrupt_at: int | None = None,
    ddp: distributed.Dist = distributed.SINGLE,
) -> dict:
    """Train ``model`` (initialised by the caller) and write the run's files to ``out_dir``.

    ``ddp``: this process's place among torchrun's (:func:`mambava.distributed.setup`); the
    model must be initialised identically on every rank.

    Resumes from ``out_dir/last.pt`` when its fingerprint matches. ``extra_best`` is stored in
    ``best.pt`` beside the weights (e.g. the model config). ``interrupt_at``: raise
    :class:`Interrupted` right after that step (a test hook standing for a kill). Returns the
    summary written to ``train_metrics.json`` minus the environment.
    """
    from tqdm.auto import tqdm

    tc = train_cfg
    out = Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ValueError("no training windows (videos shorter than a window with last_window: drop?)")
    model.to(device)
    spe = math.ceil(len(train_set) / tc.batch_size)
    total = tc.epochs * spe
    points = eval_points(spe, tc.evals_per_epoch)
    opt = torch.optim.AdamW(optimizer_groups(model, tc.weight_decay), lr=tc.lr)
    warm, period = tc.warmup_epochs * spe, tc.restart_epochs * spe
    sched = warmup_cosine(opt, warm, period, tc.restart_mult, eta_min=tc.min_lr)

    step, elapsed = 0, 0.0
    best = {"score": -math.inf, "step": 0, "ccc_valence": math.nan, "ccc_arousal": math.nan, "p_va": math.nan}
    step_rows: list[list] = []
    eval_rows: list[list] = []
    last_path, best_path = out / "last.pt", out / "best.pt"
    best_ck = None  # the best.pt content so far, also kept in last.pt (DVC deletes best.pt on rerun)
    d = ddp
    _seed_rank(tc.seed, d)
    ck = torch.load(last_path, map_location="cpu", weights_only=True) if last_path.exists() else None
    distributed.barrier(d)  # every rank has read last.pt before rank 0 may delete it
    if ck is not None:
        if ck.get("format") == CHECKPOINT_FORMAT and ck.get("fingerprint") == fingerprint:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            ranks = ck.get("rng_ranks") or [ck["rng"]]
            if len(ranks) == d.world_size:
                _set_rng_state(ranks[d.rank])
            elif d.rank == 0:
                _set_rng_state(ck["rng"])
            step, elapsed, best = int(ck["step"]), float(ck["elapsed"]), dict(ck["best"])
            step_rows, eval_rows = [list(r) for r in ck["steps"]], [list(r) for r in ck["evals"]]
            best_ck = ck.get("best_checkpoint")
            if d.is_main:  # rank 0 writes the run folder
                _restore_outputs(out, best_ck, step_rows, eval_rows)
            log.info("%s: resuming at step %d of %d", last_path, step, total)
        elif d.is_main:
            log.warning("%s: from other settings or data; starting afresh", last_path)
            last_path.unlink()
    if step == 0 and best_path.exists() and d.is_main:
        best_path.unlink()
    distributed.barrier(d)  # nobody reads or writes the run folder before rank 0 has cleaned it
    net = distributed.wrap_ddp(model, d, device)

    model.train()
    bar = tqdm(total=total, initial=step, desc=out.as_posix(), unit="step", disable=not (progress and d.is_main),
               leave=False)
    t0 = time.perf_counter() - elapsed
    while step < total:
        epoch, k = divmod(step, spe)
        order = epoch_order(tc.seed, epoch, len(train_set))
        x, y, shares = _local_batch(train_set, order[k * tc.batch_size : (k + 1) * tc.batch_size], d)
        # features move in their stored dtype (float16 from the feature files) and are cast there
        x = torch.from_numpy(x).to(device, non_blocking=True).float()
        y = torch.from_numpy(y).to(device, non_blocking=True)
        pred = net(x)
        if d.enabled:  # the global batch's loss: every rank's rows, in one-process order
            pred, y = distributed.gather_rows(d, pred, shares), distributed.gather_rows(d, y, shares)
        loss = ccc_loss(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        check_training_step(step + 1, loss.item(), grad_norm, x, pred)  # NaN/inf: stop, name the cause
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        loss_value = loss.item()
        step_rows.append([step, round(step / spe, 4), lr, loss_value, grad_norm])
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", best=f"{best['score']:.3f}")
        if (k + 1) in points:
            rng = distributed.gather(d, _rng_state())  # every rank's, for a resume on as many ranks
        if (k + 1) in points and d.is_main:
            try:
                r = validate(model, val_videos, device, eval_cfg)
            except NonFiniteError as exc:
                raise NonFiniteError(f"training stopped at step {step}: validation: {exc}") from None
            eval_rows.append([step, round(step / spe, 4), r["ccc_valence"], r["ccc_arousal"], r["p_va"]])
            score = r["ccc_valence"] + r["ccc_arousal"]
            if score > best["score"]:
                best = {"score": score, "step": step, **r}
                best_ck = {"model": {k2: v.detach().clone() for k2, v in model.state_dict().items()},
                           "step": step, **(extra_best or {}), "metrics": {k2: float(v) for k2, v in r.items()}}
                atomic_torch_save(best_ck, best_path)
            elapsed = time.perf_counter() - t0
            write_rows(out / "logs" / "steps.csv", STEP_COLUMNS, step_rows)
            write_rows(out / "logs" / "evals.csv", EVAL_COLUMNS, eval_rows)
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step,
                    "epoch": epoch, "elapsed": elapsed, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng[0],
                    **({"rng_ranks": rng} if d.enabled else {}),
                    "best": best, "steps": step_rows, "evals": eval_rows, "best_checkpoint": best_ck,
                },
                last_path,
            )
        if (k + 1) in points:
            distributed.barrier(d)  # the others wait for rank 0's validation and checkpoint
        pause_point(step)  # test hook (MAMBAVA_TEST_PAUSE): wait here to be killed
        if interrupt_at is not None and step == interrupt_at:
            bar.close()
            raise Interrupted(f"interrupted after step {step}")
    bar.close()
    elapsed = time.perf_counter() - t0
    best, elapsed = distributed.broadcast(d, (best, elapsed))  # rank 0 validated
    if d.is_main:
        last_path.unlink(missing_ok=True)
    return {
        "best_step": int(best["step"]),
        "best_epoch": round(best["step"] / spe, 4),
        "ccc_valence": float(best["ccc_valence"]),
        "ccc_arousal": float(best["ccc_arousal"]),
        "p_va": float(best["p_va"]),
        "epochs": tc.epochs,
        "steps": total,
        "steps_per_epoch": spe,
        "seconds": round(elapsed, 2),
        "seconds_per_epoch": round(elapsed / tc.epochs, 3),
        "final_loss": float(step_rows[-1][3]),
    }


def _restore_outputs(out: Path, best_ck: dict | None, step_rows: list, eval_rows: list) -> None:
    """Rewrite best.pt and the logs from a resumed state: DVC deleted them before the rerun."""
    if best_ck is not None:
        atomic_torch_save(best_ck, out / "best.pt")
    write_rows(out / "logs" / "steps.csv", STEP_COLUMNS, step_rows)
    write_rows(out / "logs" / "evals.csv", EVAL_COLUMNS, eval_rows)


# --------------------------------------------------------------------------- the stage
LEVELS = ("mae", "oracle")  # the signal ladder's trained rungs: MAE features, the twin's rendered parameters


def fingerprint_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_digest() -> dict[str, str]:
    """SHA-256 of the code a run's numbers depend on (training loop, models, windows, metrics,
    inference): a finished run is kept only if this code is unchanged too."""
    import mambava.data.windows
    import mambava.inference
    import mambava.metrics
    import mambava.models
    import mambava.schedules

    files = [Path(__file__), Path(mambava.data.windows.__file__), Path(mambava.inference.__file__),
             Path(mambava.metrics.__file__), Path(mambava.schedules.__file__), *sorted(Path(mambava.models.__file__).parent.glob("*.py"))]
    return content_digest(files)


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
    """``<train.out>/<level>/<variant>/fold<k>/seed<s>/``: best.pt, train_metrics.json, logs/."""
    return Path(cfg.train.out) / level / variant / f"fold{fold}" / f"seed{seed}"


def run(cfg, variant: str, fold: int, level: str = "mae", seed: int | None = None, progress: bool = True,
        interrupt_at: int | None = None, cache: dict | None = None) -> dict:
    """Train one (level, variant, fold, seed) (``seed`` None: the primary seed) and write its folder.

    A folder whose ``train_metrics.json`` carries the same fingerprint (settings, videos and the
    content of their features and labels) is finished: it is not trained again. ``cache`` lets a
    caller that trains several runs share the loaded videos and their hashes.
    """
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import fold_videos, read_folds
    from mambava.features.extract import feature_path
    from mambava.inference import build_model, load_videos, resolve_device, scan_backend, variant_model_config

    tc = cfg.train
    seed = tc.seed if seed is None else seed
    tc = tc.model_copy(update={"seed": seed})
    set_threads(tc.threads)
    ddp, device = distributed.setup(resolve_device(cfg.device))  # torchrun: this rank's place and device
    feats_dir = level_features(cfg, level)
    cache = {} if cache is None else cache
    key = ("fold", fold)
    if key not in cache:
        index = load_index(cfg.data.index)
        train_names, val_names = fold_videos(read_folds(cfg.folds.file), fold)
        if not train_names or not val_names:
            raise ValueError(f"{cfg.folds.file}: fold {fold} has {len(train_names)} train and {len(val_names)} validation videos")
        rows = index.set_index("video")
        # the content of every input file (re-extracted features of the same shape are other data)
        data_hash = {
            "features": content_digest(feature_path(feats_dir, v) for v in train_names + val_names),
            "annotations": content_digest(a for a in rows.loc[train_names + val_names, "annotation"]
                                          if isinstance(a, str) and a),
            "folds": content_digest([cfg.folds.file]),
            "code": code_digest(),
        }
        cache[key] = (train_names, val_names, load_videos(index, train_names, feats_dir),
                      load_videos(index, val_names, feats_dir), data_hash)
    train_names, val_names, train_videos, val_videos, data_hash = cache[key]
    dim = train_videos[0].features.shape[1]
    mcfg = variant_model_config(cfg.model, variant)
    if level != "mae":  # the oracle store has its own width
        mcfg = mcfg.model_copy(update={"input_dim": dim})
    if dim != mcfg.input_dim:
        raise ValueError(
            f"{feature_path(feats_dir, train_names[0])}: features are {dim}-d but model.input_dim is "
            f"{mcfg.input_dim} (set model.input_dim to the encoder's embed_dim)"
        )
    w, s = (tc.window_fold0, tc.stride_fold0) if fold == 0 else (tc.window, tc.stride)
    out = train_dir(cfg, level, variant, fold, seed)
    parts = {
        "train": tc.model_dump(exclude={"threads", "out", "seeds", "workers"}), "model": mcfg.model_dump(),
        "evaluate": cfg.evaluate.model_dump(include={"inference", "window", "stride"}),
        "level": level, "variant": variant, "fold": fold, "train_videos": train_names, "val_videos": val_names,
        "data": data_hash,
    }
    fingerprint = fingerprint_of(parts)
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
        model, train_set, val_videos, tc, cfg.evaluate, device, out,
        fingerprint=fingerprint,
        extra_best={"model_cfg": mcfg.model_dump(), "variant": variant, "fold": fold, "level": level, "seed": seed},
        progress=progress, interrupt_at=interrupt_at, ddp=ddp,
    )
    metrics = {
        **summary,
        "level": level,
        "variant": variant,
        "fold": fold,
        "n_params": n_params,
        "n_train_videos": len(train_names),
        "n_val_videos": len(val_names),
        "n_train_windows": len(train_set),
        "window": w,
        "stride": s,
        "fingerprint": fingerprint,
        **environment(device, backend, seed),
        **({"world_size": ddp.world_size, "dist_backend": ddp.backend} if ddp.enabled else {}),
    }
    # measured, not computed: beside the metrics in a file DVC does not hash (mambava.io)
    timing = {**{k: metrics.pop(k) for k in ("seconds", "seconds_per_epoch")}, **peak_memory()}
    if ddp.is_main:
        atomic_write_text(done, json.dumps(metrics, indent=2) + "\n")
        write_timing(out, "train", timing)
        log.info(
            "%s: best CCC_v %.4f CCC_a %.4f at step %d; %.1f s", out, metrics["ccc_valence"],
            metrics["ccc_arousal"], metrics["best_step"], timing["seconds"],
        )
    return {**metrics, **timing}


_JOB_CACHE: dict = {}  # per worker process: the loaded videos of the folds it has trained


def _train_job(args) -> dict:
    cfg, variant, level, fold, seed, progress = args
    cache = _JOB_CACHE.setdefault((level, fold), {})
    return run(cfg, variant, fold, level, seed, progress=progress, cache=cache)


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


def run_all(cfg, variant: str, level: str = "mae", folds: Sequence[int] | None = None, progress: bool = True) -> dict:
    """The ``train`` stage of one (level, variant): every fold and seed in this process (one start-up
    instead of one per run; finished runs are kept, see :func:`run`). Writes the summary
    ``<train.out>/<level>/<variant>.json`` (best validation CCCs per fold and seed) and returns it."""
    from mambava.data.windows import read_folds

    root = Path(cfg.train.out) / level
    summary_path = root / f"{variant}.json"
    why = level_skipped(cfg, level)
    if why:
        log.warning("train %s/%s skipped: %s", level, variant, why)
        (root / variant).mkdir(parents=True, exist_ok=True)
        atomic_write_text(summary_path, json.dumps({"skipped": why}, indent=2) + "\n")
        return {"skipped": why}
    if folds is None:
        k = int(read_folds(cfg.folds.file)["cv_fold"].max())
        folds = range(0, k + 1)
    jobs = [(fold, seed) for fold in folds for seed in seeds_of(cfg.train)]
    # under torchrun the ranks share each run (DDP); forked workers would split them again
    workers = 1 if distributed.from_env()[1] > 1 else cfg.train.workers
    results = parallel_map(_train_job, [(cfg, variant, level, f, s, progress) for f, s in jobs], workers)
    runs = {f"fold{f}/seed{s}": {k: m[k] for k in ("ccc_valence", "ccc_arousal", "p_va", "best_step")}
            for (f, s), m in zip(jobs, results)}
    results = {"level": level, "variant": variant, "runs": runs}
    if distributed.from_env()[0] == 0:
        atomic_write_text(summary_path, json.dumps(results, indent=2) + "\n")
    return results


def load_best(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a ``best.pt`` (weights_only load) and the checkpoint's other entries."""
    from mambava.config import ModelConfig
    from mambava.inference import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (run `dvc repro train`)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig.model_validate(ck["model_cfg"]))
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, {k: v for k, v in ck.items() if k != "model"}
