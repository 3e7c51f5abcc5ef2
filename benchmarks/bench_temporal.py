"""One training step of each temporal-model variant on the CPU default's training batch.

    python benchmarks/bench_temporal.py              # every variant, Transformer with 1, 2 and 4 heads
    python benchmarks/bench_temporal.py --repeats 3  # a quicker look

What one optimiser step of `mambava train` costs per variant: forward and backward of the whole
model (TCN, temporal encoder, head) on a batch of ``train.batch_size`` windows of ``train.window``
frames of ``model.input_dim``-d features, random weights and inputs (the time does not depend on
their values), one torch thread and one numba thread (``train.threads``: how the pipeline trains,
two runs at once on two cores). Each (variant, heads) runs in a fresh process (``_common``).

The Transformer's cost depends on its head width: CPU attention (PyTorch's flash kernel for the
CPU) is slow for heads of 8 dimensions. This benchmark is how ``model.n_heads`` of the default was
chosen. Writes benchmarks/results/temporal.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, measure, print_table, run_worker, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worker(variant: str, heads: int, repeats: int) -> dict:
    import torch

    from mambava.config import load_config
    from mambava.models import build_model, variant_config
    from mambava.runtime import set_threads

    cfg = load_config(ROOT / "params.yaml")
    set_threads(1)
    # heads 0: as params.yaml says (the variants without attention ignore it)
    mcfg = variant_config(cfg.model.model_copy(update={"n_heads": heads}) if heads else cfg.model, variant)
    torch.manual_seed(0)
    model = build_model(mcfg)
    b, w = cfg.train.batch_size, cfg.train.window
    x = torch.randn(b, w, mcfg.input_dim)

    def step(inp=x):
        model.zero_grad(set_to_none=True)
        model(inp).square().mean().backward()

    m = measure(step, repeats, warmup=lambda: step(torch.randn(1, 64, mcfg.input_dim)))
    return {"variant": variant, "n_heads": mcfg.n_heads if mcfg.temporal == "transformer" else None, "batch": b, "window": w,
            "n_params": sum(p.numel() for p in model.parameters()), **m}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4], help="Transformer heads to compare")
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "HEADS", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import json

        v, h, r = args.worker
        print(json.dumps(worker(v, int(h), int(r))))
        return 0
    from mambava.models import VARIANTS

    jobs = [(v, h) for v in VARIANTS for h in (args.heads if v == "transformer" else [0])]
    rows, results = [], []
    for v, h in jobs:
        res = run_worker(__file__, [v, str(h), str(args.repeats)], timeout=900)
        res.setdefault("variant", v)
        results.append(res)
        rows.append([v, str(res.get("n_heads") or "-"), fmt(res.get("median_s", None) and 1000 * res["median_s"], " ms"),
                     fmt(res.get("min_s", None) and 1000 * res["min_s"], " ms"), str(res.get("n_params", "-")),
                     res.get("error", "")])
    print_table(["variant", "heads", "step (median)", "step (min)", "parameters", "error"], rows)
    path = write_json("temporal.json", {"machine": machine(), "repeats": args.repeats, "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
