"""Training of one (variant, fold): the loop of the ``train`` stage (:func:`fit`); the stage itself
(fingerprints, finished runs kept, every fold and seed) is :mod:`mambava.train_runs`.

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
step, best so far, the logged rows so far) is written atomically to ``last.pt`` in the run folder. A run
that finds a ``last.pt`` with the same fingerprint (settings, videos, features) continues from it;
the data order of an epoch is a permutation drawn from (seed, epoch), so the continued run sees
the same batches as an uninterrupted one and, on CPU, ends with bitwise the same weights; its
DVCLive folder is rebuilt from the rows in ``last.pt``, so it ends with the same bytes too.
``last.pt`` is deleted when the run completes (it is not a stage output).

Files in ``<train.out>/<level>/<variant>/fold<k>/seed<s>/`` (:func:`mambava.runtime.train_dir`; the ``train``
stage runs every fold and seed of one (level, variant), :func:`mambava.train_runs.run_all`):

- ``best.pt``: ``{"model": state_dict, "model_cfg": dict, "variant", "fold", "step", ...}``,
  loadable with ``torch.load(..., weights_only=True)``;
- ``train_metrics.json``: best validation CCCs and step, device, scan backend, versions, seed;
- ``train.timing.json``: seconds, seconds per epoch, peak memory (not hashed by DVC: .dvcignore);
- ``dvclive/``: the DVCLive logs (:mod:`mambava.runlog`): per step ``train/{lr,loss,grad_norm}``,
  per validation ``val/{ccc_valence,ccc_arousal,p_va}``, the summary ``metrics.json`` (last values,
  the best checkpoint's step and CCCs); no timestamps, so byte-stable. ``dvc.yaml`` declares the
  primary run's summary as metrics and its curves as plots (``dvc exp show``, ``dvc plots diff``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mambava import distributed
from mambava.checks import NonFiniteError, check_training_step
from mambava.data.sharding import window_share
from mambava.data.windows import UNLABELLED, Video, Windows, pad_to
from mambava.io import write_torch as atomic_torch_save
from mambava.metrics import ccc_loss, ccc_va
from mambava.resume import pause_point
from mambava.runlog import RunLog
from mambava.schedules import warmup_cosine

log = logging.getLogger("mambava.train")

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


@dataclass
class _Run:
    """What a run carries from step to step, and what ``last.pt`` saves of it."""

    step: int = 0
    elapsed: float = 0.0
    best: dict = field(default_factory=lambda: {"score": -math.inf, "step": 0, "ccc_valence": math.nan,
                                                "ccc_arousal": math.nan, "p_va": math.nan})
    step_rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)
    best_ck: dict | None = None  # the best.pt content so far, also kept in last.pt (DVC deletes best.pt on rerun)


def _resume(out: Path, model: nn.Module, opt, sched, fingerprint: str, d: distributed.Dist, total: int) -> _Run:
    """The run so far from ``out/last.pt`` when its fingerprint matches, else a fresh one (a stale
    ``last.pt`` and ``best.pt`` are deleted by rank 0)."""
    last_path, best_path = out / "last.pt", out / "best.pt"
    run = _Run()
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
            run = _Run(int(ck["step"]), float(ck["elapsed"]), dict(ck["best"]), [list(r) for r in ck["steps"]],
                       [list(r) for r in ck["evals"]], ck.get("best_checkpoint"))
            if d.is_main:  # rank 0 writes the run folder
                _restore_outputs(out, run.best_ck)
            log.info("%s: resuming at step %d of %d", last_path, run.step, total)
        elif d.is_main:
            log.warning("%s: from other settings or data; starting afresh", last_path)
            last_path.unlink()
    if run.step == 0 and best_path.exists() and d.is_main:
        best_path.unlink()
    return run


def _train_step(net: nn.Module, model: nn.Module, opt, sched, train_set: Windows, batch: np.ndarray, step: int,
                tc, device: torch.device, d: distributed.Dist) -> tuple[float, float, float]:
    """One optimiser step on a global batch of window indices; returns (lr, loss, gradient norm)."""
    x, y, shares = _local_batch(train_set, batch, d)
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
    return lr, loss.item(), grad_norm


def _validate_and_save(run: _Run, model: nn.Module, opt, sched, val_videos, device, eval_cfg, out: Path,
                       epoch: int, spe: int, rng: list, fingerprint: str, extra_best: dict | None,
                       live: RunLog, t0: float, d: distributed.Dist) -> None:
    """Rank 0's validation: score the validation videos, keep ``best.pt`` when the score is the
    best so far, log the row, and write the whole state to ``last.pt``."""
    try:
        r = validate(model, val_videos, device, eval_cfg)
    except NonFiniteError as exc:
        raise NonFiniteError(f"training stopped at step {run.step}: validation: {exc}") from None
    run.eval_rows.append([run.step, round(run.step / spe, 4), r["ccc_valence"], r["ccc_arousal"], r["p_va"]])
    score = r["ccc_valence"] + r["ccc_arousal"]
    if score > run.best["score"]:
        run.best = {"score": score, "step": run.step, **r}
        run.best_ck = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                       "step": run.step, **(extra_best or {}), "metrics": {k: float(v) for k, v in r.items()}}
        atomic_torch_save(run.best_ck, out / "best.pt")
    run.elapsed = time.perf_counter() - t0
    live.log_validation(run.eval_rows[-1])
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": run.step,
            "epoch": epoch, "elapsed": run.elapsed, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng[0],
            **({"rng_ranks": rng} if d.enabled else {}),
            "best": run.best, "steps": run.step_rows, "evals": run.eval_rows, "best_checkpoint": run.best_ck,
        },
        out / "last.pt",
    )


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

    tc, d, out = train_cfg, ddp, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ValueError("no training windows (videos shorter than a window with last_window: drop?)")
    model.to(device)
    spe = math.ceil(len(train_set) / tc.batch_size)
    total = tc.epochs * spe
    points = eval_points(spe, tc.evals_per_epoch)
    opt = torch.optim.AdamW(optimizer_groups(model, tc.weight_decay), lr=tc.lr)
    sched = warmup_cosine(opt, tc.warmup_epochs * spe, tc.restart_epochs * spe, tc.restart_mult, eta_min=tc.min_lr)
    _seed_rank(tc.seed, d)
    run = _resume(out, model, opt, sched, fingerprint, d, total)
    live = RunLog(out, spe, run.step_rows, run.eval_rows, enabled=d.is_main)  # DVCLive: afresh, or the rows so far
    distributed.barrier(d)  # nobody reads or writes the run folder before rank 0 has cleaned it
    net = distributed.wrap_ddp(model, d, device)

    model.train()
    bar = tqdm(total=total, initial=run.step, desc=out.as_posix(), unit="step",
               disable=not (progress and d.is_main), leave=False)
    t0 = time.perf_counter() - run.elapsed
    while run.step < total:
        epoch, k = divmod(run.step, spe)
        batch = epoch_order(tc.seed, epoch, len(train_set))[k * tc.batch_size : (k + 1) * tc.batch_size]
        lr, loss, grad_norm = _train_step(net, model, opt, sched, train_set, batch, run.step, tc, device, d)
        run.step += 1
        run.step_rows.append([run.step, round(run.step / spe, 4), lr, loss, grad_norm])
        live.log_step(run.step, lr, loss, grad_norm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", best=f"{run.best['score']:.3f}")
        if (k + 1) in points:
            rng = distributed.gather(d, _rng_state())  # every rank's, for a resume on as many ranks
            if d.is_main:
                _validate_and_save(run, model, opt, sched, val_videos, device, eval_cfg, out, epoch, spe, rng,
                                   fingerprint, extra_best, live, t0, d)
            distributed.barrier(d)  # the others wait for rank 0's validation and checkpoint
        pause_point(run.step)  # test hook (MAMBAVA_TEST_PAUSE): wait here to be killed
        if interrupt_at is not None and run.step == interrupt_at:
            bar.close()
            raise Interrupted(f"interrupted after step {run.step}")
    bar.close()
    best, elapsed = distributed.broadcast(d, (run.best, time.perf_counter() - t0))  # rank 0 validated
    live.end()
    if d.is_main:
        (out / "last.pt").unlink(missing_ok=True)
    return _summary(best, elapsed, tc.epochs, total, spe, run.step_rows)


def _summary(best: dict, elapsed: float, epochs: int, total: int, spe: int, step_rows: list) -> dict:
    return {
        "best_step": int(best["step"]),
        "best_epoch": round(best["step"] / spe, 4),
        "ccc_valence": float(best["ccc_valence"]),
        "ccc_arousal": float(best["ccc_arousal"]),
        "p_va": float(best["p_va"]),
        "epochs": epochs,
        "steps": total,
        "steps_per_epoch": spe,
        "seconds": round(elapsed, 2),
        "seconds_per_epoch": round(elapsed / epochs, 3),
        "final_loss": float(step_rows[-1][3]),
    }


def _restore_outputs(out: Path, best_ck: dict | None) -> None:
    """Rewrite best.pt from a resumed state: DVC deleted it before the rerun (the DVCLive logs
    are rebuilt by :class:`~mambava.runlog.RunLog`)."""
    if best_ck is not None:
        atomic_torch_save(best_ck, out / "best.pt")
