"""What the Transformer ablation's attention costs on a CPU, and what a cheaper kernel could save.

    python benchmarks/bench_attention.py

One torch thread, float32, forward and backward of ``F.scaled_dot_product_attention`` on the
shapes the default profile's training step gives it (8 windows of 1,024 frames, ``model.
attention_window`` 512, d_model 32): the whole band as the model computes it today (blocks of 512
queries against 512 and 1,024 keys under a boolean mask), the same blocks with no mask and with
``is_causal`` (does PyTorch's CPU flash kernel skip masked work?), one head of 32 against two of
16, and the cost per (query, key) pair. ``models.transformer`` is the code path measured. Writes
benchmarks/results/attention.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402


def _time(fn, repeats: int = 7) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main() -> int:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, results = [], []
    b, length, d = 8, 1024, 32
    for heads in (2, 1):
        dh = d // heads
        for label, lq, lk, kw in (
            ("block 0: 512 x 512, band mask", 512, 512, "mask"),
            ("block 0: 512 x 512, is_causal", 512, 512, "causal"),
            ("block 0: 512 x 512, no mask", 512, 512, "none"),
            ("block 1: 512 x 1,024, band mask", 512, 1024, "mask"),
            ("block 1: 512 x 1,024, no mask", 512, 1024, "none"),
        ):
            # the model's memory layout: (batch, length, heads, dim) viewed as (batch, heads, length, dim)
            q = torch.randn(b, lq, heads, dh).transpose(1, 2).requires_grad_()
            k = torch.randn(b, lk, heads, dh).transpose(1, 2).requires_grad_()
            v = torch.randn(b, lk, heads, dh).transpose(1, 2).requires_grad_()
            qpos = torch.arange(lk - lq, lk)[:, None]
            kpos = torch.arange(lk)[None, :]
            extra = {"mask": {"attn_mask": (kpos <= qpos) & (kpos > qpos - 512)}, "causal": {"is_causal": True},
                     "none": {}}[kw]
            fwd = _time(lambda: F.scaled_dot_product_attention(q, k, v, **extra))
            both = _time(lambda: F.scaled_dot_product_attention(q, k, v, **extra).sum().backward())
            pairs = b * lq * lk
            results.append({"heads": heads, "head_dim": dh, "case": label, "forward_ms": 1000 * fwd,
                            "forward_backward_ms": 1000 * both, "ns_per_pair": 1e9 * both / pairs})
            rows.append([f"{heads} x {dh}", label, f"{1000 * fwd:.1f} ms", f"{1000 * both:.1f} ms",
                         f"{1e9 * both / pairs:.2f} ns"])
    print(f"one torch thread; batch {b}, windows of {length} frames, d_model {d}")
    print_table(["heads", "block", "forward", "forward + backward", "per (query, key) pair"], rows)
    path = write_json("attention.json", {"machine": machine(), "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
