"""Whole-video inference of the temporal encoder on CPU: Mamba vs Transformer, 1k to 100k frames.

    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --lengths 1000 10000 --methods mamba

The encoder is the paper profile's temporal part (frame norm, 4 layers at d_model 256, the output
projection; Mamba d_state 8, d_conv 4, expand 1; the Transformer with 8 heads, causal) applied to
one video (batch 1) of random 256-d frames in one pass, without gradients. Each (method, length)
runs in its own process; the time is the minimum of ``--repeats`` runs after a first untimed
call, peak memory the growth of the process's peak RSS. A run past ``--timeout`` seconds is
reported as such (the Transformer's attention grows with length squared). Prints a table and
writes benchmarks/results/encoder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, machine, measure, print_table, run_worker, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def encoder(method: str):
    from mambava.config import load_config
    from mambava.models.mamba_va import MambaVA

    cfg = load_config(ROOT / "params.yaml", profile="paper").model
    cfg = cfg.model_copy(update={"tcn": False, "temporal": method})
    return MambaVA(cfg).eval(), cfg.d_model


def worker(method: str, length: int, repeats: int) -> dict:
    import torch

    model, d = encoder(method)

    def job(l):
        x = torch.randn(1, l, d, generator=torch.Generator().manual_seed(0))

        def run():
            with torch.no_grad():
                model.encode(x)

        return run

    out = measure(job(length), repeats, warmup=job(64))
    out["parameters"] = sum(p.numel() for p in model.temporal.parameters())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--methods", nargs="+", default=["mamba", "transformer"], choices=["mamba", "transformer"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds per (method, length)")
    p.add_argument("--out", default="encoder.json")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the measuring processes ('default': leave it unset)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.repeats)))
        return

    info = machine()
    info["omp_wait_policy"] = a.omp_wait_policy
    _common.OMP_WAIT_POLICY = a.omp_wait_policy if a.omp_wait_policy != "default" else os.environ.get("OMP_WAIT_POLICY", "")
    print(f"# machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, numba {info['numba']}")
    results = []
    for method in a.methods:
        failed = False
        for length in a.lengths:
            if failed:  # longer than one that already ran out of time or memory
                r = {"error": "skipped (a shorter video already failed)"}
            else:
                reps = a.repeats if length <= 10000 else 1
                r = run_worker(__file__, [method, str(length), "--repeats", str(reps)], a.timeout)
                failed = "error" in r
            r.update(method=method, length=length)
            results.append(r)
            print(f"  {method:>11} L={length:<7} " + (r.get("error") or
                  f"min {r['min_s']:.3f} s  peak {r['peak_mib']:.0f} MiB"), flush=True)
    rows = []
    for method in a.methods:
        prev = None
        for r in (r for r in results if r["method"] == method):
            ok = "min_s" in r
            growth = (f"{r['min_s'] / prev['min_s']:.1f}x time, {r['peak_mib'] / max(prev['peak_mib'], 1):.1f}x mem"
                      if ok and prev else "-")
            rows.append([method, f"{r['length']:,}", fmt(r["min_s"], " s") if ok else r["error"],
                         fmt(r["min_s"] / r["length"] * 1e6, " us") if ok else "-",
                         fmt(r["peak_mib"], " MiB") if ok else "-", growth])
            prev = r if ok else None
    print()
    print_table(["encoder", "frames", "time (min)", "per frame", "peak mem", "vs 10x fewer frames"], rows)
    path = write_json(a.out, {"machine": info, "repeats": a.repeats, "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
