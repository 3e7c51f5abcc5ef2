"""Benchmarks of the MAE feature store: extraction speed, and loading training windows.

1. CPU extraction: frames/s of the default (params.yaml) ViT, encoder alone on random tensors
   and `extract_features` end to end (JPEG decode + normalise + encode + fill + write) on a few
   videos of the twin (data/index.csv; skipped if the data stage has not run).
2. Loading one epoch of training windows (w=300, s=200, last partial window dropped, shuffled,
   batches of 16), the authors' way (one .npz per window holding float32 features and labels,
   as their preprocessing writes, read per batch) against ours: the library's training loader,
   i.e. `load_videos` (memory-mapped float16 .npy per video + annotation .txt, as `train.py`)
   and `Windows(...)` (one contiguous copy of the split), each timed apart as once per run,
   then per step `Windows.batch` (one gather per batch) and `torch.from_numpy`, as
   `train.fit` does. Ours in three forms: float16 batches (the device casts them), float16
   batches cast to float32 on the CPU by torch (what `fit` does when the device is the CPU),
   and `Windows(..., dtype=float32)` (cast once at load, float32 batches). For the paper's
   1024-d features and our default 192-d ones; page cache warm for both (one untimed epoch
   first); minimum and median over the epochs.
3. GPU: ViT-L/16 at 224 encoder frames/s in bf16 (skipped without CUDA).

    .venv/bin/python benchmarks/bench_features.py [--quick] [--only extraction|loading|gpu]

Prints a table and writes benchmarks/results/bench_features.json (with --only, updates that part
of an existing file and keeps the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_features.json"
W, S, BATCH = 300, 200, 16


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------- 1. CPU extraction
def bench_encoder(spec, batch: int, n_batches: int, device: str = "cpu", bf16: bool = False) -> dict:
    from mambava.features.mae import build_encoder

    enc = build_encoder(spec).to(device).eval()
    if device == "cuda":
        enc = enc.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)

    def step():
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            enc(x)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = _time(step, n_batches)
    best = min(times)
    return {"batch": batch, "frames_per_second": round(batch / best, 1),
            "frames_per_second_median": round(batch / float(np.median(times)), 1)}


def bench_extract(cfg, n_videos: int) -> dict | None:
    from mambava.data.affwild2 import load_index
    from mambava.features.extract import extract_features
    from mambava.features.mae import EncoderSpec, build_encoder
    from mambava.workers import resolve_workers

    index_path = ROOT / cfg.data.index
    if not index_path.exists():
        return None
    index = load_index(index_path)
    index = index[index["path"].map(lambda p: (ROOT / p).is_dir())].head(n_videos).copy()
    if index.empty:
        return None
    index["path"] = index["path"].map(lambda p: str(ROOT / p))
    spec = EncoderSpec.from_config(cfg.mae_pretrain.encoder)
    enc = cfg.mae_pretrain.encoder
    with tempfile.TemporaryDirectory() as tmp:
        s = extract_features(index, build_encoder(spec), tmp, spec.img_size, enc.mean, enc.std,
                             batch_size=cfg.features.batch_size, num_workers=resolve_workers(cfg.features.num_workers, 0), progress=False)
    return {"videos": len(index), "frames": s["frames_encoded"], "seconds": s["seconds"],
            "frames_per_second": s["frames_per_second"], "batch_size": cfg.features.batch_size,
            "num_workers": cfg.features.num_workers}


# --------------------------------------------------------------------------- 2. loading windows
def windows(n: int) -> list[tuple[int, int]]:
    """Training windows of a video of n frames: starts 0, S, 2S, ... with a full window of W."""
    return [(s, s + W) for s in range(0, n - W + 1, S)]


def write_layouts(lengths: list[int], dim: int, tmp: Path, seed: int = 0):
    """Random features and labels written both ways. Returns (theirs items, theirs dir, ours index, ours dir)."""
    import pandas as pd

    from mambava.data.affwild2 import write_annotation
    from mambava.features.store import feature_path, mask_path

    rng = np.random.default_rng(seed)
    ours_dir, theirs_dir = tmp / f"ours{dim}", tmp / f"theirs{dim}"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    items, rows = [], []  # theirs: (video, window number); ours: the index rows load_videos reads
    for v, n in enumerate(lengths):
        feats = rng.standard_normal((n, dim), dtype=np.float32)
        lab = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        # ours: what the features stage writes (float16 features, face mask) and the annotation
        np.save(feature_path(ours_dir, f"v{v}"), feats.astype(np.float16))
        np.save(mask_path(ours_dir, f"v{v}"), np.ones(n, dtype=bool))
        write_annotation(ours_dir / f"v{v}.txt", lab)
        rows.append((f"v{v}", str(ours_dir / f"v{v}.txt")))
        for k, (s, e) in enumerate(windows(n)):
            # the authors' preprocessing: one .npz per window with float32 features and labels
            np.savez(theirs_dir / f"v{v}_{k}.npz", select_mae_features=feats[s:e], select_labels=lab[s:e])
            items.append((v, k))
    return items, theirs_dir, pd.DataFrame(rows, columns=["video", "annotation"]), ours_dir


def _stats(key: str, times: list[float]) -> dict:
    """``key``: the minimum, ``key_median``: the median of ``times`` (seconds)."""
    return {key: round(min(times), 5), f"{key}_median": round(float(np.median(times)), 5)}


def bench_loading(lengths: list[int], dim: int, tmp: Path, epochs: int, seed: int = 0) -> dict:
    from mambava.data.windows import Windows
    from mambava.inference import load_videos

    items, theirs_dir, index, ours_dir = write_layouts(lengths, dim, tmp, seed)
    names = list(index["video"])
    order_rng = np.random.default_rng(seed + 1)

    def epoch_theirs():
        order = order_rng.permutation(len(items))
        for b in range(0, len(order), BATCH):
            xs, ys = [], []
            for i in order[b:b + BATCH]:
                v, k = items[i]
                data = np.load(theirs_dir / f"v{v}_{k}.npz", allow_pickle=True)
                xs.append(data["select_mae_features"])
                ys.append(data["select_labels"])
            torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def read_ours():  # as train.run: memory-mapped features and parsed annotations
        return load_videos(index, names, ours_dir)

    videos = read_ours()

    def build_ours(dtype=None) -> Windows:  # then the windows (the contiguous copy)
        return Windows(videos, W, S, "drop", dtype=dtype)

    def epoch_ours(ws: Windows, cast_on_cpu: bool):
        order = order_rng.permutation(len(ws))
        for b in range(0, len(order), BATCH):
            x, y = ws.batch(order[b:b + BATCH])  # as train.fit, with the device the CPU
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            if cast_on_cpu:
                x = x.float()

    def timed(fn) -> list[float]:
        fn()  # warm: page cache, allocator
        return _time(fn, epochs)

    ws16, ws32 = build_ours(), build_ours(np.float32)
    assert len(ws16) == len(items), (len(ws16), len(items))
    theirs = timed(epoch_theirs)
    read = timed(read_ours)
    build16 = timed(build_ours)
    build32 = timed(lambda: build_ours(np.float32))
    ours = timed(lambda: epoch_ours(ws16, False))
    ours_cast = timed(lambda: epoch_ours(ws16, True))
    ours32 = timed(lambda: epoch_ours(ws32, False))
    t, size = min(theirs), lambda d, pat: sum(p.stat().st_size for p in d.glob(pat))  # noqa: E731
    return {
        "dim": dim, "windows": len(items), "videos": len(lengths), "frames": int(sum(lengths)), "epochs": epochs,
        **_stats("theirs_seconds", theirs),
        **_stats("ours_seconds", ours),
        **_stats("ours_cast_on_cpu_seconds", ours_cast),
        **_stats("ours_float32_store_seconds", ours32),
        **_stats("ours_read_seconds", read),
        **_stats("ours_build_seconds", build16),
        **_stats("ours_float32_store_build_seconds", build32),
        "speedup": round(t / min(ours), 1),
        "speedup_median": round(float(np.median(theirs) / np.median(ours)), 1),
        "speedup_cast_on_cpu": round(t / min(ours_cast), 1),
        "speedup_float32_store": round(t / min(ours32), 1),
        "speedup_with_load": round(t / (min(ours) + min(read) + min(build16)), 1),
        "theirs_windows_per_second": round(len(items) / t, 1),
        "ours_windows_per_second": round(len(items) / min(ours), 1),
        # files and bytes read: theirs every epoch; ours (features, face masks, annotations) once per run
        "theirs_files": len(list(theirs_dir.iterdir())), "ours_files": len(list(ours_dir.iterdir())),
        "theirs_mb": round(size(theirs_dir, "*") / 2**20, 1), "ours_mb": round(size(ours_dir, "*") / 2**20, 1),
        "ours_in_memory_mb": round((ws16.features.nbytes + ws16.labels.nbytes) / 2**20, 1),
    }


def train_lengths(cfg) -> tuple[list[int], str]:
    from mambava.data.affwild2 import load_index

    index_path = ROOT / cfg.data.index
    if index_path.exists():
        index = load_index(index_path)
        return [int(n) for n in index.loc[index["split"] == "train", "n_frames"]], "twin train split (data/index.csv)"
    rng = np.random.default_rng(0)
    return [int(n) for n in rng.integers(300, 3000, 29)], "29 random lengths in [300, 3000)"


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and videos")
    ap.add_argument("--only", choices=["extraction", "loading", "gpu"],
                    help="run only this part (and keep the other parts of an existing results file)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from mambava.config import load_config
    from mambava.features.mae import EncoderSpec

    os.chdir(ROOT)
    cfg = load_config(ROOT / "params.yaml", profile="default")
    spec = EncoderSpec.from_config(cfg.mae_pretrain.encoder)
    reps = 2 if args.quick else 5
    epochs = 5 if args.quick else 10  # loading: cheap, so more repeats
    result = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    result.update({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "default_encoder": spec.describe(),
    })
    rows = []
    if args.only in (None, "extraction"):
        enc = bench_encoder(spec, batch=256, n_batches=reps)
        result["cpu_encoder"] = enc
        rows.append(("CPU encoder only (default ViT, batch 256)", f"{enc['frames_per_second']:.0f} frames/s"))
        ext = bench_extract(cfg, n_videos=2 if args.quick else 4)
        result["cpu_extract"] = ext
        if ext:
            rows.append((f"CPU features end to end ({ext['videos']} twin videos, {ext['frames']} frames)",
                         f"{ext['frames_per_second']:.0f} frames/s"))
        else:
            rows.append(("CPU features end to end", "skipped (no data/index.csv: run `dvc repro data`)"))

    if args.only in (None, "loading"):
        lengths, source = train_lengths(cfg)
        result["loading"] = {"lengths_from": source, "window": W, "stride": S, "batch": BATCH,
                             "timed": "seconds per epoch; ours_read (load_videos) and ours_build (Windows) once per run; "
                                      "minimum and median over the epochs",
                             "runs": []}
        ms = lambda r, key: f"{r[key] * 1e3:.1f} ms (median {r[key + '_median'] * 1e3:.1f})"  # noqa: E731
        with tempfile.TemporaryDirectory() as tmp:
            for dim in (1024, 192):
                r = bench_loading(lengths, dim, Path(tmp), epochs=epochs)
                result["loading"]["runs"].append(r)
                head = f"{dim}-d, {r['windows']} windows:"
                rows.append((f"{head} authors' epoch, .npz per window",
                             f"{ms(r, 'theirs_seconds')}, {r['theirs_files']} files, {r['theirs_mb']} MB"))
                rows.append((f"{head} ours, once per run: load_videos",
                             f"{ms(r, 'ours_read_seconds')}, {r['ours_files']} files, {r['ours_mb']} MB"))
                rows.append((f"{head} ours, once per run: Windows (contiguous copy)",
                             f"{ms(r, 'ours_build_seconds')}, {r['ours_in_memory_mb']} MB in memory"))
                rows.append((f"{head} ours epoch, float16 batches", f"{ms(r, 'ours_seconds')}, {r['speedup']}x faster "
                             f"(median {r['speedup_median']}x; {r['speedup_with_load']}x with the load)"))
                rows.append((f"{head} ours epoch, cast to float32 on the CPU per batch",
                             f"{ms(r, 'ours_cast_on_cpu_seconds')}, {r['speedup_cast_on_cpu']}x faster"))
                rows.append((f"{head} ours epoch, Windows(dtype=float32)",
                             f"{ms(r, 'ours_float32_store_seconds')}, {r['speedup_float32_store']}x faster "
                             f"(Windows {ms(r, 'ours_float32_store_build_seconds')})"))

    if args.only in (None, "gpu"):
        if torch.cuda.is_available():
            large = EncoderSpec(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)
            torch.backends.cuda.matmul.allow_tf32 = True
            gpu = bench_encoder(large, batch=512, n_batches=10, device="cuda", bf16=True)
            gpu["device"] = torch.cuda.get_device_name()
            result["gpu_vit_large_bf16"] = gpu
            rows.append((f"GPU ViT-L/16 224 bf16 encoder ({gpu['device']}, batch 512)", f"{gpu['frames_per_second']:.0f} frames/s"))
        else:
            result["gpu_vit_large_bf16"] = None
            rows.append(("GPU ViT-L/16 224 bf16", "skipped (no CUDA here)"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
