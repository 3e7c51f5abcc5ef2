"""Benchmarks of the MAE feature store: extraction speed, and loading training windows.

1. CPU extraction: frames/s of the default (params.yaml) ViT, encoder alone on random tensors
   and `extract_features` end to end (JPEG decode + normalise + encode + fill + write) on a few
   videos of the twin (data/index.csv; skipped if the data stage has not run).
2. Loading one epoch of training windows (w=300, s=200, last partial window dropped, shuffled,
   batches of 16, float32 out), the authors' way (one .npz per window holding float32 features
   and labels, as their preprocessing writes) against ours (one memory-mapped float16 array
   per video, windows sliced out into float16 batches that the device casts; and, apart, with
   the float16 -> float32 cast done on the CPU, which numpy/torch do at only ~0.5 G values/s
   here and which then dominates), for the paper's 1024-d features and our default 192-d ones.
3. GPU: ViT-L/16 at 224 encoder frames/s in bf16 (skipped without CUDA).

    .venv/bin/python benchmarks/bench_features.py [--quick]

Prints a table and writes benchmarks/results/bench_features.json.
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
                             batch_size=cfg.features.batch_size, num_workers=cfg.features.num_workers, progress=False)
    return {"videos": len(index), "frames": s["frames_encoded"], "seconds": s["seconds"],
            "frames_per_second": s["frames_per_second"], "batch_size": cfg.features.batch_size,
            "num_workers": cfg.features.num_workers}


# --------------------------------------------------------------------------- 2. loading windows
def windows(n: int) -> list[tuple[int, int]]:
    """Training windows of a video of n frames: starts 0, S, 2S, ... with a full window of W."""
    return [(s, s + W) for s in range(0, n - W + 1, S)]


def bench_loading(lengths: list[int], dim: int, tmp: Path, epochs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ours_dir, theirs_dir = tmp / f"ours{dim}", tmp / f"theirs{dim}"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    items = []  # (video, start)
    labels = {}
    for v, n in enumerate(lengths):
        feats = rng.standard_normal((n, dim), dtype=np.float32)
        lab = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        np.save(ours_dir / f"v{v}.npy", feats.astype(np.float16))
        labels[v] = lab
        for k, (s, e) in enumerate(windows(n)):
            # the authors' preprocessing: one .npz per window with float32 features and labels
            np.savez(theirs_dir / f"v{v}_{k}.npz", select_mae_features=feats[s:e], select_labels=lab[s:e])
            items.append((v, s, k))
    order_rng = np.random.default_rng(seed + 1)

    def epoch_theirs():
        order = order_rng.permutation(len(items))
        for b in range(0, len(order), BATCH):
            xs, ys = [], []
            for i in order[b:b + BATCH]:
                v, _, k = items[i]
                data = np.load(theirs_dir / f"v{v}_{k}.npz", allow_pickle=True)
                xs.append(data["select_mae_features"])
                ys.append(data["select_labels"])
            torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def epoch_ours(cast_on_cpu: bool):
        # np.asarray: plain ndarrays over the mapped files (slicing a np.memmap costs more)
        mm = {v: np.asarray(np.load(ours_dir / f"v{v}.npy", mmap_mode="r")) for v in labels}
        order = order_rng.permutation(len(items))
        dtype = np.float32 if cast_on_cpu else np.float16  # on a GPU the cast happens there
        for b in range(0, len(order), BATCH):
            idx = order[b:b + BATCH]
            x = np.empty((len(idx), W, dim), dtype=dtype)
            y = np.empty((len(idx), W, 2), dtype=np.float32)
            for j, i in enumerate(idx):
                v, s, _ = items[i]
                x[j] = mm[v][s:s + W]  # a copy out of the page cache (and the cast, if asked)
                y[j] = labels[v][s:s + W]
            torch.from_numpy(x), torch.from_numpy(y)

    theirs = _time(epoch_theirs, epochs)
    ours = _time(lambda: epoch_ours(False), epochs)
    ours32 = _time(lambda: epoch_ours(True), epochs)
    size = lambda d: sum(p.stat().st_size for p in d.iterdir())  # noqa: E731
    return {
        "dim": dim, "windows": len(items), "videos": len(lengths),
        "theirs_seconds": round(min(theirs), 4), "ours_seconds": round(min(ours), 4),
        "theirs_windows_per_second": round(len(items) / min(theirs), 1),
        "ours_windows_per_second": round(len(items) / min(ours), 1),
        "speedup": round(min(theirs) / min(ours), 1),
        "ours_cast_on_cpu_seconds": round(min(ours32), 4),
        "speedup_cast_on_cpu": round(min(theirs) / min(ours32), 1),
        "theirs_files": len(list(theirs_dir.iterdir())), "ours_files": len(lengths),
        "theirs_mb": round(size(theirs_dir) / 2**20, 1), "ours_mb": round(size(ours_dir) / 2**20, 1),
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
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from mambava.config import load_config
    from mambava.features.mae import EncoderSpec

    os.chdir(ROOT)
    cfg = load_config(ROOT / "params.yaml", profile="default")
    spec = EncoderSpec.from_config(cfg.mae_pretrain.encoder)
    reps = 2 if args.quick else 5
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "default_encoder": spec.describe(),
    }
    rows = []
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

    lengths, source = train_lengths(cfg)
    result["loading"] = {"lengths_from": source, "window": W, "stride": S, "batch": BATCH, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for dim in (1024, 192):
            r = bench_loading(lengths, dim, Path(tmp), epochs=reps)
            result["loading"]["runs"].append(r)
            rows.append((f"epoch of {r['windows']} windows, {dim}-d: authors' .npz per window",
                         f"{r['theirs_seconds'] * 1e3:.1f} ms ({r['theirs_files']} files, {r['theirs_mb']} MB)"))
            rows.append((f"epoch of {r['windows']} windows, {dim}-d: ours, mmap per video, float16 batches",
                         f"{r['ours_seconds'] * 1e3:.1f} ms ({r['ours_files']} files, {r['ours_mb']} MB), {r['speedup']}x faster"))
            rows.append((f"epoch of {r['windows']} windows, {dim}-d: ours, cast to float32 on the CPU",
                         f"{r['ours_cast_on_cpu_seconds'] * 1e3:.1f} ms, {r['speedup_cast_on_cpu']}x faster"))

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
