"""The training logs of one run, written with DVCLive and read back for the plots and the book.

Every training run (``<train.out>/<level>/<variant>/fold<k>/seed<s>/``) has a DVCLive folder
``dvclive/``:

- ``plots/metrics/train/{loss,lr,grad_norm}.tsv``: one row per optimizer step (``step`` counts
  the steps done, from 1; ``lr`` is the rate the step used);
- ``plots/metrics/val/{ccc_valence,ccc_arousal,p_va}.tsv``: one row per validation;
- ``metrics.json``: the summary: the last value of each metric, ``best`` (the step and CCCs of
  the checkpoint in ``best.pt``), ``steps_per_epoch`` and ``step``.

DVC reads these directly: ``dvc.yaml`` declares the primary run's summary as metrics and its
curves as plots (``dvc exp show``, ``dvc metrics diff``, ``dvc plots diff``). The files hold no
wall-clock values (no timestamps, no report, no system monitoring), DVCLive makes no experiment
of its own and writes no ``dvc.yaml``; so a rerun writes the same bytes. DVCLive appends each
step's row, which is not atomic: the loop's state in ``last.pt`` holds every row up to the last
validation, and a resumed run rebuilds the folder from it (:class:`RunLog` with ``rows``), so it
ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

LIVE_DIR = "dvclive"
STEP_METRICS = ("lr", "loss", "grad_norm")  # logged as train/<name> at every step
EVAL_METRICS = ("ccc_valence", "ccc_arousal", "p_va")  # logged as val/<name> at every validation
# the loop's rows (kept in last.pt): STEP_COLUMNS per step, EVAL_COLUMNS per validation
STEP_COLUMNS = ["step", "epoch", *STEP_METRICS]
EVAL_COLUMNS = ["step", "epoch", *EVAL_METRICS]


def live_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / LIVE_DIR


class RunLog:
    """DVCLive logger of one training run (``enabled=False``: a no-op, for ranks > 0).

    ``rows``/``evals``: the loop's rows so far (a resumed run); the folder is emptied and they
    are logged again, so the files equal those of the uninterrupted run at that point.
    """

    def __init__(self, run_dir: str | Path, steps_per_epoch: int, rows: Sequence[Sequence] = (),
                 evals: Sequence[Sequence] = (), enabled: bool = True):
        self.live = None
        if not enabled:
            return
        from dvclive import Live

        logging.getLogger("dvclive").setLevel(logging.WARNING)  # "Logging to experiment ..." per run
        self.live = Live(str(live_dir(run_dir)), resume=False, report=None, save_dvc_exp=False, dvcyaml=None,
                         monitor_system=False)
        self.live.summary["steps_per_epoch"] = int(steps_per_epoch)
        by_step = {int(r[0]): r for r in evals}
        for r in rows:
            self.log_step(*_step_values(r))
            if int(r[0]) in by_step:
                self._log_eval(by_step[int(r[0])])
        if rows:
            self._summary()

    def log_step(self, step: int, lr: float, loss: float, grad_norm: float) -> None:
        if self.live is None:
            return
        self.live.step = int(step)
        for name, v in zip(STEP_METRICS, (lr, loss, grad_norm)):
            self.live.log_metric(f"train/{name}", float(v))

    def log_validation(self, row: Sequence) -> None:
        """One validation (an ``EVAL_COLUMNS`` row) and the summary with the best so far."""
        if self.live is None:
            return
        self._log_eval(row)
        self._summary()

    def _log_eval(self, row: Sequence) -> None:
        step, _, *values = row
        self.live.step = int(step)
        for name, v in zip(EVAL_METRICS, values):
            self.live.log_metric(f"val/{name}", float(v))
        score = values[0] + values[1]
        best = self.live.summary.get("best")
        if best is None or score > best["ccc_valence"] + best["ccc_arousal"]:  # the loop's rule for best.pt
            self.live.summary["best"] = {"step": int(step), **{k: float(v) for k, v in zip(EVAL_METRICS, values)}}

    def _summary(self) -> None:
        """metrics.json, keys sorted: the same bytes however the run got there."""
        self.live.summary["step"] = self.live.step
        self.live.summary = json.loads(json.dumps(self.live.summary, sort_keys=True))
        self.live.make_summary()

    def end(self) -> None:
        if self.live is not None:
            self._summary()
            self.live.end()


def _step_values(row: Sequence) -> tuple:
    step, _, lr, loss, grad_norm = row
    return step, lr, loss, grad_norm


# --------------------------------------------------------------------------- reading
def _read_group(folder: Path, group: str, names: Sequence[str]) -> pd.DataFrame:
    frames = []
    for name in names:
        f = folder / "plots" / "metrics" / group / f"{name}.tsv"
        if not f.exists():
            raise FileNotFoundError(f"{f}: no DVCLive log (train the run: `dvc repro train`)")
        frames.append(pd.read_csv(f, sep="\t").set_index("step")[name])
    return pd.concat(frames, axis=1).reset_index()


def summary(run_dir: str | Path) -> dict:
    """The run's DVCLive summary (metrics.json)."""
    return json.loads((live_dir(run_dir) / "metrics.json").read_text())


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """One row per optimizer step: ``STEP_COLUMNS`` (epoch = step / steps per epoch)."""
    df = _read_group(live_dir(run_dir), "train", STEP_METRICS)
    df.insert(1, "epoch", (df["step"] / summary(run_dir)["steps_per_epoch"]).round(4))
    return df[STEP_COLUMNS]


def read_evals(run_dir: str | Path) -> pd.DataFrame:
    """One row per validation: ``EVAL_COLUMNS``."""
    df = _read_group(live_dir(run_dir), "val", EVAL_METRICS)
    df.insert(1, "epoch", (df["step"] / summary(run_dir)["steps_per_epoch"]).round(4))
    return df[EVAL_COLUMNS]
