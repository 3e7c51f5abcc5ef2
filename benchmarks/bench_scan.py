"""Selective scan, forward + backward, on CPU: ours (numba) vs mambapy vs two sequential references.

    python benchmarks/bench_scan.py                      # paper shape, lengths 300, 1000, 10000
    python benchmarks/bench_scan.py --lengths 300 --repeats 3

The operation is Mamba's: out = scan(u, softplus(delta + bias), A, B, C, D) * silu(z), with the
gradients of all inputs, at batch 16, dim 256, state 8 (the paper's Mamba layer). Methods:

- ``numba``: ours, ``mambava.models.ssm.selective_scan_numba`` (the CPU path of selective_scan_fn);
- ``mambapy``: mambapy's parallel scan over a (batch, length, dim, state) tensor
  (``pip install mambapy==1.2.0``, the ``bench`` extra), with softplus, skip and gate added around
  it so that it does the same work;
- ``reference``: ``mambava.models.ssm.selective_scan_ref``, our test oracle: a lean sequential
  loop in PyTorch with autograd that holds a (batch, dim, state) state per step;
- ``ref_materialised``: the algorithm of mamba-ssm's ``selective_scan_ref``, written here (the
  reference implementation the issue's 100x target and its "13 s" were measured against): it
  materialises exp(delta A) and delta B u as full (batch, dim, length, state) tensors, then loops
  over time in Python (x = deltaA[:, :, i] x + deltaB_u[:, :, i], y_i = <x, C_i>), plus the skip
  D and the gate silu(z), with autograd.

The two references are run only up to ``--reference-max-length`` (1000) frames. Each (method,
length) runs in its own process; times are the minimum and median of ``--repeats`` runs after a
first, untimed call (the references: one timed run at 300 frames, only the first call above);
peak memory is the growth of the process's peak RSS during the calls (after a warm-up on a tiny
input that compiles and starts threads). Prints a table and writes benchmarks/results/scan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, machine, measure, print_table, run_worker, write_json  # noqa: E402

METHODS = ("numba", "mambapy", "reference", "ref_materialised")
SLOW = ("reference", "ref_materialised")  # sequential Python loops: run up to --reference-max-length


def make_inputs(batch, dim, length, nstate, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    leaves = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5,
        A=-torch.arange(1.0, nstate + 1).repeat(dim, 1),
        B=torch.randn(batch, nstate, length, generator=g),
        C=torch.randn(batch, nstate, length, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=torch.rand(dim, generator=g) - 4.0,
    )
    for t in leaves.values():
        t.requires_grad_()
    return leaves


def scan_call(method):
    import torch
    import torch.nn.functional as F

    if method == "numba":
        from mambava.models.ssm import selective_scan_numba

        return lambda x: selective_scan_numba(**x, delta_softplus=True)
    if method == "reference":
        from mambava.models.ssm import selective_scan_ref

        return lambda x: selective_scan_ref(**x, delta_softplus=True)
    if method == "ref_materialised":
        return materialised_ref
    from mambapy.pscan import pscan

    def mambapy_scan(x):
        # mambapy's MambaBlock.selective_scan, channel-last: (B, L, D) and (B, L, N).
        delta = F.softplus(x["delta"] + x["delta_bias"][:, None]).transpose(1, 2)
        u = x["u"].transpose(1, 2)
        dA = torch.exp(delta.unsqueeze(-1) * x["A"])  # (B, L, D, N)
        BX = delta.unsqueeze(-1) * x["B"].transpose(1, 2).unsqueeze(2) * u.unsqueeze(-1)
        hs = pscan(dA, BX)
        y = (hs @ x["C"].transpose(1, 2).unsqueeze(-1)).squeeze(3) + x["D"] * u
        return (y * F.silu(x["z"].transpose(1, 2))).transpose(1, 2)

    return mambapy_scan


def materialised_ref(x):
    """The algorithm of mamba-ssm's ``selective_scan_ref`` (its test oracle), written here: the
    discretised A and B u as full (batch, dim, length, state) tensors, then a Python loop over
    time. Same operation as the other methods: softplus(delta + bias), skip D, gate silu(z)."""
    import torch
    import torch.nn.functional as F

    u, A, B, C = x["u"], x["A"], x["B"], x["C"]
    delta = F.softplus(x["delta"] + x["delta_bias"][:, None])  # (b, d, l)
    batch, dim, length = u.shape
    delta_a = torch.exp(delta[..., None] * A[:, None, :])  # (b, d, l, n), materialised
    delta_b_u = (delta * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, l, n), materialised
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(length):
        state = delta_a[:, :, i] * state + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * x["D"][:, None]
    return y * F.silu(x["z"])


def worker(method: str, length: int, batch: int, dim: int, nstate: int, repeats: int) -> dict:
    import torch

    fn = scan_call(method)

    def job(b, l):
        x = make_inputs(b, dim, l, nstate)
        g = torch.randn(b, dim, l, generator=torch.Generator().manual_seed(1))

        def step():
            for t in x.values():
                t.grad = None
            fn(x).backward(g)

        return step

    return measure(job(batch, length), repeats, warmup=job(2, 16))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 10000])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--state", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--reference-max-length", type=int, default=1000,
                   help="skip the sequential references above this length (minutes and GBs)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per (method, length)")
    p.add_argument("--out", default="scan.json")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the measuring processes ('default': leave it unset)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.batch, a.dim, a.state, a.repeats)))
        return

    info = machine()
    info["omp_wait_policy"] = a.omp_wait_policy
    _common.OMP_WAIT_POLICY = a.omp_wait_policy if a.omp_wait_policy != "default" else os.environ.get("OMP_WAIT_POLICY", "")
    print(f"# machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, numba {info['numba']}")
    common = ["--batch", str(a.batch), "--dim", str(a.dim), "--state", str(a.state)]
    results = []
    # numba's compile time without a cache (a fresh cache directory), once at the first length.
    if "numba" in a.methods:
        with tempfile.TemporaryDirectory() as cache:
            cold = run_worker(__file__, ["numba", "16", *common, "--repeats", "0"], a.timeout,
                              env={"NUMBA_CACHE_DIR": cache})
            warm = run_worker(__file__, ["numba", "16", *common, "--repeats", "0"], a.timeout,
                              env={"NUMBA_CACHE_DIR": cache})
        print(f"# numba first call, fwd + bwd: {fmt(cold.get('warmup_s'), ' s')} with a cold cache (compiles), "
              f"{fmt(warm.get('warmup_s'), ' s')} from the cache")
    for length in a.lengths:
        for method in a.methods:
            if method in SLOW and length > a.reference_max_length:
                r = {"error": f"skipped (length > {a.reference_max_length})"}
            else:
                # The slow methods take seconds to minutes per call: fewer repeats.
                reps = (a.repeats if method == "numba" or length <= 1000 else 1) if method not in SLOW \
                    else (min(a.repeats, 1) if length <= 300 else 0)
                r = run_worker(__file__, [method, str(length), *common, "--repeats", str(reps)], a.timeout)
            r.update(method=method, length=length)
            results.append(r)
            print(f"  {method:>16} L={length:<6} " + (r.get("error") or
                  f"min {r['min_s'] * 1e3:.1f} ms  median {r['median_s'] * 1e3:.1f} ms  peak {r['peak_mib']:.0f} MiB"),
                  flush=True)

    rows = []
    for length in a.lengths:
        ours = next((r for r in results if r["length"] == length and r["method"] == "numba" and "min_s" in r), None)
        for r in (r for r in results if r["length"] == length):
            ok = "min_s" in r
            speed = (f"{r['min_s'] / ours['min_s']:.1f}x" if ok and ours else "-")
            mem = (f"{r['peak_mib'] / max(ours['peak_mib'], 1):.1f}x" if ok and ours else "-")
            rows.append([f"{a.batch}x{length}x{a.dim}x{a.state}", r["method"],
                         fmt(r["min_s"] * 1e3, " ms") if ok else r["error"],
                         fmt(r["median_s"] * 1e3, " ms") if ok else "-",
                         fmt(r["cpu_min_s"] * 1e3, " ms") if ok and r.get("cpu_min_s") else "-",
                         fmt(r.get("peak_mib"), " MiB") if ok else "-", speed, mem])
    print()
    print_table(["B x L x D x N", "method", "fwd+bwd min", "median", "CPU time min", "peak mem",
                 "time / ours", "mem / ours"], rows)
    path = write_json(a.out, {"machine": info, "batch": a.batch, "dim": a.dim, "state": a.state,
                              "repeats": a.repeats, "numba_first_call_cold_cache_s": cold.get("warmup_s") if "numba" in a.methods else None,
                              "numba_first_call_warm_cache_s": warm.get("warmup_s") if "numba" in a.methods else None,
                              "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
