"""Streaming prediction on CPU: frames per second and real-time factor, default and paper models.

    python benchmarks/bench_stream.py                 # both profiles, 1 and 2 threads
    python benchmarks/bench_stream.py --profiles paper --frames 12   # rerun some; the others are kept

What ``mambava predict --stream`` does per frame, on a rendered twin clip (480x360, 30 fps, one
face; tests/_twin_video.py): decode (PyAV) -> detect, track, align and crop (OpenCV) -> JPEG
round trip -> encoder (batch of one) -> one step of the temporal model (recurrent Mamba state,
rolling TCN buffers). The weights are random with each profile's sizes (the time does not depend
on their values): ``default`` = ViT 112 px dim 192 depth 6 + TCN 32x4 + 2 Mamba layers;
``paper`` = ViT-L/16 at 224 + TCN 1024-768-512-256 + 4 Mamba layers at 256.

Each (profile, threads) runs in a fresh process with torch and OpenCV limited to that many
threads. Reported: the whole stream (``predict.stream`` over the clip after a 5-frame warm-up)
and its parts measured alone (crop per frame over the clip; encoder on one crop; temporal step).
Real-time factor = frames per second / 30 (the clip's rate): >= 1 keeps up with a live camera.
Writes benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import machine, print_table, run_worker, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FPS = 30.0


def worker(profile: str, threads: int, frames: int) -> dict:
    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from _twin_video import make_twin_video

    from mambava.config import load_config
    from mambava.features.mae import EncoderSpec, build_encoder
    from mambava.models import variant_config
    from mambava.models.mamba_va import MambaVA
    from mambava.predict import Predictor, StreamingVA, encode_crop, stream
    from mambava.video.crop import crop_stream

    cfg = load_config(ROOT / "params.yaml", profile=profile)
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec.from_config(cfg.mae_pretrain.encoder)).eval()
    model = MambaVA(variant_config(cfg.model, "mamba_va")).eval()
    pred = Predictor(enc, model, cfg.mae_pretrain.encoder, cfg.crop, device=torch.device("cpu"), source="random")
    out: dict = {"profile": profile, "threads": threads,
                 "encoder_params_m": round(sum(p.numel() for p in enc.parameters()) / 1e6, 2),
                 "temporal_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_twin_video(clip, n_frames=frames, seed=1)
        # the whole stream
        t0, n = None, 0
        for i, row in enumerate(stream(pred, clip)):
            if i == 5:
                t0 = time.perf_counter()
            n += i >= 5
        whole = time.perf_counter() - t0
        out["stream_fps"] = round(n / whole, 2)
        # its parts alone
        t0 = time.perf_counter()
        crops = [c.crops[0] for c in crop_stream(clip, cfg.crop)]
        out["crop_fps"] = round(len(crops) / (time.perf_counter() - t0), 2)
    crop = next(c for c in crops if c is not None)
    encode_crop(pred, crop)
    k = max(3, min(30, frames // 2))
    t0 = time.perf_counter()
    for _ in range(k):
        f = encode_crop(pred, crop)
    out["encoder_fps"] = round(k / (time.perf_counter() - t0), 2)
    net = StreamingVA(model)
    x = torch.from_numpy(f.astype(np.float32))
    for _ in range(10):
        net.step(x)
    t0 = time.perf_counter()
    for _ in range(200):
        net.step(x)
    out["temporal_step_ms"] = round((time.perf_counter() - t0) / 200 * 1000, 3)
    out["temporal_fps"] = round(1000 / out["temporal_step_ms"], 1)
    for key in ("stream", "crop", "encoder", "temporal"):
        out[f"{key}_rtf"] = round(out[f"{key}_fps"] / FPS, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["default", "paper"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--frames", type=int, default=60, help="clip length (frames at 30 fps)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))))
        return
    env = machine()
    # keep the results of (profile, threads) pairs not rerun now, from the previous file
    old = _common.RESULTS / "stream.json"
    kept = []
    if old.exists():
        prev = json.loads(old.read_text())
        kept = [r for r in prev.get("results", []) if not (r.get("profile") in a.profiles and r.get("threads") in a.threads)]
    results = []
    for profile in a.profiles:
        for n in a.threads:
            r = run_worker(__file__, [profile, str(n), str(a.frames)], a.timeout,
                           env={"OMP_NUM_THREADS": str(n), "NUMBA_NUM_THREADS": str(n)})
            r.setdefault("profile", profile)
            r.setdefault("threads", n)
            r["frames"] = a.frames
            r["load_average_before"] = os.getloadavg()
            results.append(r)
            print(json.dumps(r), flush=True)
    results = sorted(kept + results, key=lambda r: (r["profile"] != "default", r["threads"]))
    rows = [[r["profile"], str(r["threads"]), *(
        [f"{r['stream_fps']} ({r['stream_rtf']}x)", f"{r['crop_fps']}", f"{r['encoder_fps']}",
         f"{r['temporal_step_ms']} ms ({r['temporal_rtf']}x)"] if "error" not in r else [r["error"], "", "", ""])]
        for r in results]
    print_table(["profile", "threads", "stream frames/s (RTF)", "crop frames/s", "encoder frames/s",
                 "temporal step (RTF)"], rows)
    path = write_json("stream.json", {"machine": env, "video_fps": FPS, "results": results,
                                      "date": time.strftime("%Y-%m-%d")})
    print(path)


if __name__ == "__main__":
    main()
