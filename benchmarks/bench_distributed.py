"""Speed-up of the two stages that run under torchrun, with 2 processes against 1, on this machine.

1. ``mambava features`` over a small Aff-Wild2-layout folder of random JPEG crops (112x112) with
   the default profile's ViT (random weights: speed does not depend on them).
2. ``mambava train`` (default profile model, variant mamba_va, numba scan) on random 192-d
   features, the same global batch in every setting.

Each setting is the real command in a fresh process: one process (torch threads = cores), one
process with one thread, and ``torchrun --standalone --nproc-per-node 2`` (torchrun gives each
process one thread). Reported: wall time of the command (start-up included) and the stage's own
time (``features.timing.json`` seconds for features = the slowest rank; ``train.timing.json``
seconds for training = the training loop with rank 0's validations), min over ``--repeats`` runs, with
the load average before and after each run: the machine may be shared, so read the speed-ups
together with the load.

    python benchmarks/bench_distributed.py [--repeats 2] [--frames 2400] [--quick]

Writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from mambava.io import read_timing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine, print_table, write_json  # noqa: E402

BIN = Path(sys.executable).parent


def _env(threads: int | None) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


SETTINGS = [  # name, processes, threads per process (None: torch's default = cores)
    ("1 process, default threads", 1, None),
    ("1 process, 1 thread", 1, 1),
    ("2 processes (torchrun), 1 thread each", 2, 1),
]


def _run(args: list[str], cwd: Path, procs: int, threads: int | None) -> tuple[float, list[float]]:
    if procs == 1:
        cmd = [sys.executable, "-m", "mambava.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "mambava.cli", *args]
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{r.stderr[-3000:]}")
    return wall, [load0, os.getloadavg()[0]]


# --------------------------------------------------------------------------- data
def make_frames(root: Path, n_videos: int, frames: int, size: int = 112) -> Path:
    """Random-noise JPEG crops in the official layout and an index (paths relative to root)."""
    from PIL import Image

    from mambava.data.affwild2 import write_index

    rng = np.random.default_rng(0)
    lengths = rng.integers(frames // n_videos // 2, 3 * frames // n_videos // 2, size=n_videos)
    rows = []
    for i, n in enumerate(lengths):
        vdir = root / "cropped_aligned" / f"v{i}"
        vdir.mkdir(parents=True)
        for f in range(1, int(n) + 1):
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(vdir / f"{f:05d}.jpg", quality=90)
        rows.append({"video": f"v{i}", "split": "test", "n_frames": int(n), "n_frames_on_disk": int(n),
                     "n_annotated": 0, "path": str(vdir.relative_to(root)), "annotation": ""})
    import pandas as pd

    write_index(pd.DataFrame(rows), root / "index.csv")
    return root / "index.csv"


def bench_features(work: Path, frames: int, repeats: int) -> dict:
    import torch

    from mambava.config import load_config
    from mambava.features.mae import EncoderSpec, build_encoder, save_checkpoint

    enc_cfg = load_config(ROOT / "params.yaml").mae_pretrain.encoder
    make_frames(work, 12, frames)
    torch.manual_seed(0)
    save_checkpoint(build_encoder(EncoderSpec.from_config(enc_cfg)).state_dict(), work / "ft" / "checkpoint.pt")
    rows = []
    for name, procs, threads in SETTINGS:
        for rep in range(repeats):
            out = work / f"features_{procs}_{threads}_{rep}"
            params = {
                "device": "cpu", "data": {"index": "index.csv"},
                "mae_pretrain": {"encoder": enc_cfg.model_dump()}, "mae_finetune": {"out": "ft"},
                "features": {"dir": out.name, "batch_size": 256, "num_workers": 0},
            }
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            wall, load = _run(["features"], work, procs, threads)
            s = {**json.loads((out / "_summary.json").read_text()), **read_timing(out, "features")}
            rows.append({"setting": name, "processes": procs, "repeat": rep, "wall_s": round(wall, 2),
                         "stage_s": s["seconds"], "frames": s["frames_encoded"],
                         "frames_per_second": s["frames_per_second"], "load_before_after": load})
            print(f"features  {name:40s} wall {wall:6.1f} s  stage {s['seconds']:6.1f} s  "
                  f"{s['frames_per_second']} frames/s  load {load[0]:.1f} -> {load[1]:.1f}", flush=True)
    return {"frames": rows[0]["frames"], "videos": 12, "encoder": EncoderSpec.from_config(enc_cfg).describe(),
            "batch_size": 256, "num_workers": 0, "runs": rows, **_speedups(rows, "stage_s")}


# --------------------------------------------------------------------------- training
def make_features(root: Path, n_videos: int, length: int, dim: int) -> None:
    from mambava.data.affwild2 import write_annotation, write_index
    from mambava.data.windows import make_folds, write_folds

    import pandas as pd

    rng = np.random.default_rng(0)
    proj = rng.normal(size=(dim, 2)) / np.sqrt(dim)
    rows = []
    for i in range(n_videos):
        split = "validation" if i % 6 == 5 else "train"
        n = int(rng.integers(length // 2, 3 * length // 2))
        f = rng.normal(size=(n, dim)).astype(np.float32)
        y = np.tanh(f @ proj).astype(np.float32)
        (root / "features").mkdir(parents=True, exist_ok=True)
        np.save(root / "features" / f"v{i}.npy", f.astype(np.float16))
        np.save(root / "features" / f"v{i}.mask.npy", np.ones(n, bool))
        write_annotation(root / "ann" / f"v{i}.txt", y)
        rows.append({"video": f"v{i}", "split": split, "n_frames": n, "n_frames_on_disk": n, "n_annotated": n,
                     "path": "", "annotation": f"ann/v{i}.txt"})
    index = pd.DataFrame(rows)
    write_index(index, root / "index.csv")
    write_folds(make_folds(index, n_splits=2, seed=0), root / "folds.csv")


def bench_training(work: Path, repeats: int, epochs: int) -> dict:
    from mambava.config import load_config

    cfg = load_config(ROOT / "params.yaml")
    make_features(work, 24, 1000, cfg.model.input_dim)
    rows = []
    for name, procs, threads in SETTINGS:
        for rep in range(repeats):
            out = f"runs_{procs}_{threads}_{rep}"
            train = cfg.train.model_dump()
            train.update(epochs=epochs, evals_per_epoch=1, threads=threads, seeds=1, workers=1, out=out)
            params = {"device": "cpu", "data": {"index": "index.csv"}, "features": {"dir": "features"},
                      "folds": {"file": "folds.csv", "n_splits": 2}, "model": cfg.model.model_dump(), "train": train}
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            wall, load = _run(["train", "--no-progress", "--variant", "mamba_va", "--fold", "0"], work, procs, threads)
            run = work / out / "mae" / "mamba_va" / "fold0" / f"seed{cfg.train.seed}"
            m = {**json.loads((run / "train_metrics.json").read_text()), **read_timing(run, "train")}
            rows.append({"setting": name, "processes": procs, "repeat": rep, "wall_s": round(wall, 2),
                         "stage_s": m["seconds"], "seconds_per_epoch": m["seconds_per_epoch"], "steps": m["steps"],
                         "p_va": m["p_va"], "load_before_after": load})
            print(f"train     {name:40s} wall {wall:6.1f} s  loop {m['seconds']:6.1f} s  "
                  f"{m['seconds_per_epoch']} s/epoch  P_VA {m['p_va']:.4f}  load {load[0]:.1f} -> {load[1]:.1f}",
                  flush=True)
    return {"variant": "mamba_va", "fold": 0, "batch_size": cfg.train.batch_size, "window": cfg.train.window_fold0,
            "epochs": epochs, "steps_per_epoch": rows[0]["steps"] // epochs,
            "runs": rows, **_speedups(rows, "stage_s")}


def _speedups(rows: list[dict], key: str) -> dict:
    best = {}
    for r in rows:
        best[r["setting"]] = min(best.get(r["setting"], float("inf")), r[key])
        best[r["setting"] + " (wall)"] = min(best.get(r["setting"] + " (wall)", float("inf")), r["wall_s"])
    base, base1, two = (best[s[0]] for s in SETTINGS)
    wb, wb1, wtwo = (best[s[0] + " (wall)"] for s in SETTINGS)
    return {"min_seconds": best, "speedup_2proc_vs_1proc_default_threads": round(base / two, 3),
            "speedup_2proc_vs_1proc_1thread": round(base1 / two, 3),
            "speedup_wall_2proc_vs_1proc_default_threads": round(wb / wtwo, 3),
            "speedup_wall_2proc_vs_1proc_1thread": round(wb1 / wtwo, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run (fewer frames, 1 repeat, 1 epoch)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.frames, args.epochs = 1, 300, 1
    result = {"machine": machine(), "nice": os.nice(0), "commit": _commit()}
    with tempfile.TemporaryDirectory() as tmp:
        result["features"] = bench_features(Path(tmp) / "f", args.frames, args.repeats)
        result["training"] = bench_training(Path(tmp) / "t", args.repeats, args.epochs)
    result["load_average_at_end"] = os.getloadavg()
    rows = [[stage, k, f"{v:.2f}"] for stage in ("features", "training")
            for k, v in result[stage]["min_seconds"].items()]
    print_table(["stage", "setting", "min seconds"], rows)
    for stage in ("features", "training"):
        print(f"{stage}: speed-up of 2 processes = {result[stage]['speedup_2proc_vs_1proc_default_threads']}x "
              f"over 1 process with default threads, {result[stage]['speedup_2proc_vs_1proc_1thread']}x over 1 thread")
    if not args.quick:
        print(write_json("distributed.json", result))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
