"""One training step of each temporal-model variant on the CPU default's training batch.

    python benchmarks/bench_temporal.py              # every variant, Transformer with 1, 2 and 4 heads
    python benchmarks/bench_temporal.py --repeats 3  # a quicker look
    python benchmarks/bench_temporal.py --parts      # inside one step: data, forward, loss, backward, optimiser
    python benchmarks/bench_temporal.py --parts --baseline b8d5ef9  # the same with that revision's code, and the ratio
    python benchmarks/bench_temporal.py --parts --at-once 2 --baseline b8d5ef9  # two copies at once, as the pipeline's two workers
    python benchmarks/bench_temporal.py --parts --baseline b8d5ef9 --rounds 3   # each variant 3 times per tree, in turn
    python benchmarks/bench_temporal.py --parts --compile  # eager against torch.compile (Inductor), same step
    python benchmarks/bench_temporal.py --cheaper    # the step at half the batch, under bfloat16 autocast, seeds stacked
    python benchmarks/bench_temporal.py --ops        # the step by kind of operator (torch.profiler), GEMM throughput
    python benchmarks/bench_temporal.py --tcn-pass   # the TCN's one numba pass against its PyTorch form, in turn
    python benchmarks/bench_temporal.py --mamba-pass # the Mamba block's conv + SiLU pass against its PyTorch form, in turn
    python benchmarks/bench_temporal.py --windows 384 300 256  # the Transformer's step per attention window, beside Mamba-VA's
    python benchmarks/bench_temporal.py --windows 300 --query-blocks 128 64  # ... and per queries per attention call

What one optimiser step of `mambava train` costs per variant: forward and backward of the whole
model (TCN, temporal encoder, head) on a batch of ``train.batch_size`` windows of ``train.window``
frames of ``model.input_dim``-d features, random weights and inputs (the time does not depend on
their values), one torch thread and one numba thread (``train.threads``: how the pipeline trains,
two runs at once on two cores). Each (variant, heads) runs in a fresh process (``_common``).

The Transformer's cost depends on its head width: CPU attention (PyTorch's flash kernel for the
CPU) is slow for heads of 8 dimensions. This benchmark is how ``model.n_heads`` of the default was
chosen. ``--parts`` times the pieces of one training step as ``mambava train`` runs it
(``train._train_step``'s work: gathering a batch of windows from the in-RAM feature copy, the cast,
forward, the CCC loss, backward, gradient clipping, AdamW and the scheduler) and the whole step;
``--baseline REV`` runs the same in a checkout of REV (its code and its params.yaml) and prints
the ratio per variant; per variant the two trees run in turn, ``--rounds N`` times, and each part
is the median over the rounds (a shared machine's speed drifts by 10-20% within minutes).
``--at-once N`` runs N copies of each measurement at the same time, as
``train.workers`` runs N trainings at once on N cores: the copies share the caches and the memory
bandwidth, which slows memory-bound code more than arithmetic (the parts are the mean of the
copies). ``--compile`` runs the step eager and with the model under ``torch.compile`` (Inductor's
CPU code; the first step, which compiles, is reported as ``compile_s``): a measurement of what
fusing the small element-wise kernels would buy, not what ``mambava train`` runs.
``--cheaper`` times one whole optimiser step (forward, backward, AdamW) of each variant at
``train.batch_size``, at half of it, at ``train.batch_size`` under bfloat16 autocast (CPU), and at
``train.seeds`` times the batch, side by side in one process per variant: what the two cheaper
budgets of issue 25 would buy (their effect on the study's figures: ``train_budget.py``), and the
most that training the seeds of one (variant, fold) as one batched ensemble could buy (one step on
all their windows with one set of weights, against ``train.seeds`` steps).
``--ops`` profiles the same AdamW step per variant with ``torch.profiler`` and groups the operators'
own time by kind (matrix products, convolutions, the numba scan, attention, element-wise, copies and
layout, normalisation, reductions, optimiser, autograd and Python), scaled to the step's time
without the profiler; for the matrix products it gives their GFLOP/s beside one large single-thread
GEMM (2,048 x 2,048 x 2,048), the core's practical peak: whether the step is arithmetic that a faster
kernel could speed up, or many small operators.
``--tcn-pass`` times the step of each variant with a TCN with the TCN's one numba pass
(``models.tcn._ConvAct``) and with its PyTorch form, in one process, the two in turn every 4 steps
(``--rounds`` pairs, default 16): the change on its own, free of the drift between processes.
``--mamba-pass`` does the same for the variants with Mamba layers and the Mamba block's one pass
for its causal conv and SiLU (``models.mamba._ConvSilu``).
``--windows W ...`` times one AdamW step of Mamba-VA and of the Transformer at each attention
window ``W`` (``model.attention_window``), all in one process, each model's 4 steps in turn for
``--rounds`` rounds (default 12), medians: the Transformer's step as a ratio of Mamba-VA's, free of
the drift between processes (issue 25 asks for at most 1.3). ``--query-blocks B ...`` adds, per
window, the Transformer at ``B`` queries per attention call (``TransformerLayer.query_block``).
Writes benchmarks/results/temporal.json (or temporal_parts.json, temporal_parts_at2.json,
temporal_parts_compile.json, temporal_cheaper.json, temporal_ops.json, temporal_tcn_pass.json,
temporal_mamba_pass.json, temporal_windows.json;
``--tag T`` adds ``_T`` to the name).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, measure, print_table, run_worker, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the tree whose params.yaml a worker reads (--baseline: the baseline's checkout)
PARAMS = Path(os.environ.get("MAMBAVA_BENCH_ROOT", ROOT)) / "params.yaml"


def worker(variant: str, heads: int, repeats: int) -> dict:
    import torch

    from mambava.config import load_config
    from mambava.models import build_model, variant_config
    from mambava.runtime import set_threads

    cfg = load_config(PARAMS)
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


def parts_worker(variant: str, repeats: int) -> dict:
    """The pieces of one training step on a batch like the pipeline's (module doc), medians in ms."""
    import time

    import numpy as np
    import torch

    from mambava.config import load_config
    from mambava.data.windows import Video, Windows
    from mambava.metrics import ccc_loss
    from mambava.models import build_model, variant_config
    from mambava.runtime import set_threads
    from mambava.train import optimizer_groups

    cfg = load_config(PARAMS)
    set_threads(1)
    mcfg, tc = variant_config(cfg.model, variant), cfg.train
    torch.manual_seed(0)
    model = build_model(mcfg).train()
    net = torch.compile(model) if os.environ.get("MAMBAVA_BENCH_COMPILE") == "1" else model
    rng = np.random.default_rng(0)
    videos = [Video(f"v{i}", rng.normal(size=(n, mcfg.input_dim)).astype(np.float16),
                    rng.uniform(-1, 1, size=(n, 2)).astype(np.float32))
              for i, n in enumerate(rng.integers(300, 4000, size=60))]
    ds = Windows(videos, tc.window, tc.stride)
    opt = torch.optim.AdamW(optimizer_groups(model, tc.weight_decay), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    times: dict[str, list[float]] = {}

    def tick(name, t0):
        t = time.perf_counter()
        times.setdefault(name, []).append(t - t0)
        return t

    for step in range(repeats + 2):
        batch = rng.choice(len(ds), size=tc.batch_size, replace=False)
        start = t = time.perf_counter()
        x, y = ds.batch(batch)
        t = tick("data", t)
        x, y = torch.from_numpy(x).float(), torch.from_numpy(y)
        t = tick("cast", t)
        pred = net(x)
        t = tick("forward", t)
        loss = ccc_loss(pred.float(), y)
        t = tick("loss", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = tick("backward", t)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        t = tick("clip", t)
        opt.step()
        sched.step()
        loss.item()
        t = tick("optimiser", t)
        tick("step", start)
        times.setdefault("other", []).append(times["step"][-1] - sum(v[-1] for k, v in times.items()
                                                                    if k not in ("step", "other")))
    out = {k: 1000 * float(np.median(v[2:])) for k, v in times.items()}  # the first two warm up
    return {"variant": variant, "batch": tc.batch_size, "window": tc.window, "ms": {k: round(v, 2) for k, v in out.items()},
            "compile_s": round(times["step"][0], 1) if net is not model else None}


def _adamw_setup(variant: str, update: dict | None = None):
    """params.yaml's config, ``variant``'s model config (with the ``model`` settings in ``update``),
    the model (seed 0, training mode) and AdamW; one thread."""
    import torch

    from mambava.config import load_config
    from mambava.models import build_model, variant_config
    from mambava.runtime import set_threads

    cfg = load_config(PARAMS)
    set_threads(1)
    mcfg = variant_config(cfg.model.model_copy(update=update or {}), variant)
    torch.manual_seed(0)
    model = build_model(mcfg).train()
    return cfg, mcfg, model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def cheaper_worker(variant: str, repeats: int) -> dict:
    """One AdamW step at the batch of params.yaml, at half of it and under bfloat16 autocast (ms, medians)."""
    import torch

    cfg, mcfg, model, opt = _adamw_setup(variant)
    b, w = cfg.train.batch_size, cfg.train.window
    seeds = cfg.train.seeds
    # seeds_stacked: one step on the windows of all the seeds of one (variant, fold) at once, with one set
    # of weights: the arithmetic of a batched ensemble of those seeds at its best (an ensemble's weights
    # differ per seed, so its products can only be smaller and no more efficient than this one batch)
    setups = {"fp32": (b, False), "half_batch": (max(1, b // 2), False), "bf16": (b, True),
              "seeds_stacked": (b * seeds, False)}
    out = {}
    for name, (batch, bf16) in setups.items():
        x = torch.randn(batch, w, mcfg.input_dim)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = model(x)
            y.float().square().mean().backward()
            opt.step()

        out[name] = round(1000 * measure(step, repeats, warmup=step)["median_s"], 2)  # 2 untimed steps first
    ratio = {k: round(v / out["fp32"], 3) for k, v in out.items()}
    ratio["seeds_stacked"] = round(out["seeds_stacked"] / (seeds * out["fp32"]), 3)  # against `seeds` steps at the batch
    return {"variant": variant, "batch": b, "window": w, "seeds": seeds, "ms": out, "ratio": ratio}


OP_KINDS = {  # kind -> operator names, for --ops (then PREFIXES; any other aten op is element-wise)
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"),
    "convolutions": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                     "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"),
    "selective scan (numba)": ("_NumbaScan", "_NumbaScanBackward"),
    "conv passes (numba)": ("_ConvAct", "_ConvActBackward", "_ConvSilu", "_ConvSiluBackward"),
    "optimiser": ("aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt"),
    "copies and layout": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::empty",
                          "aten::fill_", "aten::zero_", "aten::zeros", "aten::as_strided", "aten::view",
                          "aten::t", "aten::transpose", "aten::slice", "aten::select", "aten::unsqueeze",
                          "aten::squeeze", "aten::reshape", "aten::permute", "aten::expand", "aten::narrow",
                          "aten::pad", "aten::constant_pad_nd", "aten::stack", "aten::split", "aten::unbind",
                          "aten::_unsafe_view", "aten::resize_", "aten::new_zeros", "aten::new_empty",
                          "aten::_to_copy", "aten::to", "aten::detach", "aten::alias"),
    "normalisation": ("aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::_weight_norm"),
    "reductions": ("aten::sum", "aten::mean", "aten::norm", "aten::linalg_vector_norm", "aten::max", "aten::amax"),
}


PREFIXES = {"aten::_foreach": "optimiser", "aten::_fused_adam": "optimiser", "Optimizer.": "optimiser",
            "aten::_weight_norm": "normalisation"}


def _op_kind(name: str) -> str:
    if "attention" in name.lower():
        return "attention"
    for kind, names in OP_KINDS.items():
        if name in names:
            return kind
    for prefix, kind in PREFIXES.items():
        if name.startswith(prefix):
            return kind
    return "element-wise" if name.startswith("aten::") else "autograd and Python"


def _adamw_step(variant: str, update: dict | None = None):
    """params.yaml's config and one AdamW step of ``variant`` (``model`` settings in ``update``) on a
    random training batch (one thread)."""
    import torch

    cfg, mcfg, model, opt = _adamw_setup(variant, update)
    x = torch.randn(cfg.train.batch_size, cfg.train.window, mcfg.input_dim)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return cfg, step


def ops_worker(variant: str, repeats: int) -> dict:
    """One AdamW step's operators by kind (torch.profiler self time, scaled to the unprofiled step)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg, step = _adamw_step(variant)
    step_s = measure(step, repeats, warmup=step)["median_s"]
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    kinds: dict[str, float] = {}
    mm_us = mm_flops = 0.0
    top = []
    for e in events:
        kind = _op_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total
        if kind == "matrix products":
            mm_us += e.self_cpu_time_total
            mm_flops += e.flops or 0
        top.append((e.self_cpu_time_total, e.key, kind, e.count))
    total = sum(kinds.values())
    scale = 1000 * step_s / total  # profiled microseconds -> milliseconds of the unprofiled step
    a = torch.randn(2048, 2048)
    gemm = measure(lambda: torch.mm(a, a), 5)["median_s"]
    top.sort(reverse=True)
    return {"variant": variant, "batch": cfg.train.batch_size, "window": cfg.train.window,
            "step_ms": round(1000 * step_s, 2), "profiled_step_ms": round(total / 1000 / repeats, 2),
            "ms": {k: round(v * scale, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "share": {k: round(v / total, 3) for k, v in kinds.items()},
            "matmul_gflops": round(mm_flops / mm_us / 1e3, 1) if mm_us else None,
            "matmul_gflop_per_step": round(mm_flops / repeats / 1e9, 3),
            "gemm_2048_gflops": round(2 * 2048**3 / gemm / 1e9, 1),
            "top_ops": [{"op": k, "kind": kind, "calls_per_step": c // repeats, "ms": round(t * scale, 2)}
                        for t, k, kind, c in top[:12]]}


def _one_pass_switch(kind: str):
    """(the one pass's guard, its setter) for ``kind``: 'tcn' (``tcn._fusable``) or 'mamba'
    (``Mamba._one_pass``); setting the guard to a function returning False gives the PyTorch form."""
    from mambava.models import tcn
    from mambava.models.mamba import Mamba

    if kind == "tcn":
        return tcn._fusable, lambda f: setattr(tcn, "_fusable", f)
    return Mamba._one_pass, lambda f: setattr(Mamba, "_one_pass", f)


def pass_worker(kind: str, variant: str, rounds: int) -> dict:
    """A one pass (the TCN's or the Mamba block's) against its PyTorch form in one process, in turn every 4 steps."""
    import statistics
    import time

    _, step = _adamw_step(variant)
    guard, set_guard = _one_pass_switch(kind)
    times: dict[str, list[float]] = {"one_pass": [], "pytorch": []}
    for r in range(2 * rounds):
        form = "one_pass" if r % 2 == 0 else "pytorch"
        set_guard(guard if form == "one_pass" else (lambda *a: False))
        step()  # untimed: the first step after a switch
        for _ in range(4):
            t0 = time.perf_counter()
            step()
            times[form].append(time.perf_counter() - t0)
    set_guard(guard)
    ms = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    return {"variant": variant, "ms": ms, "ratio": round(ms["one_pass"] / ms["pytorch"], 3), "steps_each": 4 * rounds}


def windows_worker(windows: list[int], rounds: int, blocks: list[int] | None = None) -> dict:
    """Mamba-VA's AdamW step and the Transformer's at each attention window (and, with ``blocks``,
    at each number of queries per attention call, ``TransformerLayer.query_block``), in turn every 4 steps."""
    import importlib
    import statistics
    import time

    layer = importlib.import_module("mambava.models.transformer").TransformerLayer
    default_block = layer.query_block
    steps, block_of = {}, {}
    configs = [("mamba_va", "mamba_va", {}, None)]
    for w in windows:
        for b in blocks or [None]:
            configs.append((f"transformer_w{w}" + (f"_qb{b}" if b else ""), "transformer", {"attention_window": w}, b))
    for name, variant, update, b in configs:
        cfg, steps[name] = _adamw_step(variant, update)
        block_of[name] = b or default_block
        layer.query_block = block_of[name]
        steps[name]()  # untimed: the first step allocates
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            layer.query_block = block_of[name]
            t0 = time.perf_counter()
            for _ in range(4):
                step()
            times[name].append((time.perf_counter() - t0) / 4)
    layer.query_block = default_block
    ms = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    return {"batch": cfg.train.batch_size, "window": cfg.train.window, "ms": ms, "steps_each": 4 * rounds,
            "default_query_block": default_block,
            "ratio_to_mamba_va": {k: round(v / ms["mamba_va"], 3) for k, v in ms.items() if k != "mamba_va"}}


def windows_main(windows: list[int], rounds: int, tag: str | None = None, blocks: list[int] | None = None) -> int:
    args = ["windows", ",".join(map(str, windows)), str(rounds)] + ([",".join(map(str, blocks))] if blocks else [])
    res = run_worker(__file__, args, timeout=1800)
    if "ms" not in res:
        print(res.get("error", res))
        return 1
    print_table(["model", "attention window", "queries per call", "step (median)", "/ Mamba-VA"],
                [["Mamba-VA", "-", "-", fmt(res["ms"]["mamba_va"], " ms"), "1.000"]]
                + [["Transformer", str(w), str(b or res["default_query_block"]), fmt(res["ms"][k], " ms"),
                    fmt(res["ratio_to_mamba_va"][k])]
                   for w in windows for b in blocks or [None]
                   for k in [f"transformer_w{w}" + (f"_qb{b}" if b else "")]])
    path = write_json(f"temporal_windows{'_' + tag if tag else ''}.json", {"machine": machine(), "rounds": rounds, **res})
    print(f"wrote {path}")
    return 0


def pass_main(kind: str, variants: list[str], rounds: int, tag: str | None = None) -> int:
    results = {v: run_worker(__file__, [f"{kind}_pass", v, str(rounds)], timeout=900) for v in variants}
    print_table(["variant", "PyTorch form", "one pass", "one pass / PyTorch"],
                [[v, fmt(r["ms"]["pytorch"], " ms"), fmt(r["ms"]["one_pass"], " ms"), fmt(r["ratio"])] if "ms" in r
                 else [v, r.get("error", "?"), "", ""] for v, r in results.items()])
    path = write_json(f"temporal_{kind}_pass{'_' + tag if tag else ''}.json",
                      {"machine": machine(), "rounds": rounds, "results": results})
    print(f"wrote {path}")
    return 0


def ops_main(variants: list[str], repeats: int, tag: str | None = None) -> int:
    results = {v: run_worker(__file__, ["ops", v, str(repeats)], timeout=900) for v in variants}
    kinds = ["matrix products", "convolutions", "selective scan (numba)", "conv passes (numba)", "attention", "element-wise",
             "copies and layout", "normalisation", "reductions", "optimiser", "autograd and Python"]
    print_table(["variant", "step", *kinds],
                [[v, fmt(r.get("step_ms"), " ms"), *(f"{r['ms'].get(k, 0):.1f} ({100 * r['share'].get(k, 0):.0f}%)"
                                                       for k in kinds)] if "ms" in r
                 else [v, r.get("error", "?"), *[""] * len(kinds)] for v, r in results.items()])
    print_table(["variant", "matrix products, GFLOP per step", "their GFLOP/s", "one 2048^3 GEMM, GFLOP/s"],
                [[v, fmt(r.get("matmul_gflop_per_step")), fmt(r.get("matmul_gflops")), fmt(r.get("gemm_2048_gflops"))]
                 for v, r in results.items() if "ms" in r])
    path = write_json(f"temporal_ops{'_' + tag if tag else ''}.json", {"machine": machine(), "repeats": repeats, "results": results})
    print(f"wrote {path}")
    return 0


def cheaper_main(variants: list[str], repeats: int, tag: str | None = None) -> int:
    results = {}
    for v in variants:
        results[v] = run_worker(__file__, ["cheaper", v, str(repeats)], timeout=900)
    keys = ("fp32", "half_batch", "bf16", "seeds_stacked")
    print_table(["variant", "batch (fp32)", "half batch", "bf16 autocast", "seeds x batch", "half / fp32",
                 "bf16 / fp32", "stacked / (seeds x fp32)"],
                [[v, *(fmt(r.get("ms", {}).get(k), " ms") for k in keys),
                  *(fmt(r.get("ratio", {}).get(k)) for k in keys[1:])] if "ms" in r
                 else [v, r.get("error", "?"), *[""] * 6] for v, r in results.items()])
    path = write_json(f"temporal_cheaper{'_' + tag if tag else ''}.json", {"machine": machine(), "repeats": repeats, "results": results})
    print(f"wrote {path}")
    return 0


def _baseline_tree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="mambava-bench-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True, capture_output=True)
    return tree


def _at_once(copies: int, args: list[str], env: dict) -> dict:
    """``copies`` workers started together; the parts averaged over them."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(copies) as pool:
        runs = list(pool.map(lambda _: run_worker(__file__, args, timeout=900, env=env), range(copies)))
    bad = [r for r in runs if "ms" not in r]
    if bad:
        return bad[0]
    ms = {k: round(sum(r["ms"][k] for r in runs) / copies, 2) for k in runs[0]["ms"]}
    return {**runs[0], "ms": ms, "copies": copies, "step_per_copy": [r["ms"]["step"] for r in runs]}


def _median_of(runs: list[dict]) -> dict:
    """One variant's parts over several rounds: the median of each part (the first run's other keys)."""
    import statistics

    ok = [r for r in runs if "ms" in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    out["ms"] = {k: round(statistics.median(r["ms"][k] for r in ok), 2) for k in ok[0]["ms"]}
    if len(runs) > 1:
        out["rounds_step_ms"] = [r["ms"]["step"] for r in ok]
    return out


def parts_main(variants: list[str], repeats: int, baseline: str | None, at_once: int = 1,
               compiled: bool = False, tag: str | None = None, rounds: int = 1) -> int:
    trees = {"now": None}
    if baseline:
        trees = {"baseline": _baseline_tree(baseline), "now": None}
    elif compiled:  # the same tree twice: eager as the baseline, then compiled
        trees = {"baseline": None, "now": None}
    names = ["data", "cast", "forward", "loss", "backward", "clip", "optimiser", "other", "step"]
    results: dict[str, dict] = {}
    try:
        # per variant, the two trees in turn, `rounds` times: a machine whose speed drifts during the
        # run (a shared host) slows both sides of a ratio alike; each part is the median over rounds
        for v in variants:
            per_round: dict[str, list[dict]] = {}
            for _ in range(rounds):
                for label, tree in trees.items():
                    env = {"PYTHONPATH": str(tree / "src"), "MAMBAVA_BENCH_ROOT": str(tree)} if tree else {}
                    if compiled:
                        env["MAMBAVA_BENCH_COMPILE"] = "1" if label == "now" else "0"
                    per_round.setdefault(label, []).append(_at_once(at_once, ["parts", v, str(repeats)], env))
            for label, runs in per_round.items():
                results.setdefault(label, {})[v] = _median_of(runs)
    finally:
        if baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees["baseline"])], cwd=ROOT, capture_output=True)
    what = ({"baseline": "eager", "now": "torch.compile"} if compiled
            else {"baseline": baseline, "now": "working tree"})
    for label, per in results.items():
        print(f"\n{label} ({what[label]})")
        print_table(["variant", *names], [[v, *(fmt(r.get("ms", {}).get(n), " ms") for n in names)] if "ms" in r
                                          else [v, r.get("error", "?"), *[""] * (len(names) - 1)] for v, r in per.items()])
    if compiled:
        print("compile (first step): " + ", ".join(f"{v} {r.get('compile_s')} s" for v, r in results["now"].items()))
    if baseline or compiled:
        rows = []
        for v in variants:
            a, b = results["baseline"][v].get("ms", {}), results["now"][v].get("ms", {})
            rows.append([v, fmt(a.get("step"), " ms"), fmt(b.get("step"), " ms"),
                         f"{b['step'] / a['step']:.2f}" if a.get("step") and b.get("step") else "-"])
        mva = {k: results[k]["mamba_va"]["ms"]["step"] for k in results if "ms" in results[k].get("mamba_va", {})}
        print("\nstep: now against the baseline")
        print_table(["variant", "baseline", "now", "now / baseline"], rows)
        if "transformer" in variants and mva:
            for k in results:
                t = results[k].get("transformer", {}).get("ms", {}).get("step")
                if t and k in mva:
                    print(f"{k}: Transformer step / Mamba-VA step = {t / mva[k]:.2f}")
    name = ("temporal_parts" + (f"_at{at_once}" if at_once > 1 else "") + ("_compile" if compiled else "")
            + (f"_{tag}" if tag else "") + ".json")
    path = write_json(name, {"machine": machine(), "repeats": repeats, "rounds": rounds,
                             "baseline": "eager" if compiled else baseline, "at_once": at_once, "results": results})
    print(f"wrote {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4], help="Transformer heads to compare")
    ap.add_argument("--parts", action="store_true", help="time the pieces of one training step (module doc)")
    ap.add_argument("--baseline", metavar="REV", help="with --parts: also run REV's code and params, and the ratio")
    ap.add_argument("--at-once", type=int, default=1, metavar="N",
                    help="with --parts: N copies of each measurement at the same time (train.workers N)")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="with --parts: each variant N times per tree, the trees in turn; medians over the rounds")
    ap.add_argument("--compile", action="store_true",
                    help="with --parts: eager against the model under torch.compile, in the working tree")
    ap.add_argument("--cheaper", action="store_true",
                    help="the whole step at the batch, at half the batch, under bfloat16 autocast and at seeds x the batch (module doc)")
    ap.add_argument("--ops", action="store_true",
                    help="the step's operators by kind (torch.profiler) and the matrix products' GFLOP/s (module doc)")
    ap.add_argument("--tcn-pass", action="store_true",
                    help="the TCN's one numba pass against its PyTorch form, in turn in one process (module doc)")
    ap.add_argument("--mamba-pass", action="store_true",
                    help="the Mamba block's one pass (conv and SiLU) against its PyTorch form, the same way")
    ap.add_argument("--windows", type=int, nargs="+", metavar="W",
                    help="the Transformer's step at each attention window W beside Mamba-VA's, in turn in one process")
    ap.add_argument("--tag", help="with --cheaper, --ops, --tcn-pass, --mamba-pass, --windows or --parts: add _TAG to the JSON's name (keeps an earlier run's file)")
    ap.add_argument("--query-blocks", type=int, nargs="+", metavar="B",
                    help="with --windows: the Transformer at each number of queries per attention call B as well")
    ap.add_argument("--worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import json

        v, h, r, *more = args.worker
        res = (parts_worker(h, int(r)) if v == "parts"
               else windows_worker([int(w) for w in h.split(",")], int(r),
                                   [int(b) for b in more[0].split(",")] if more else None) if v == "windows"
               else cheaper_worker(h, int(r)) if v == "cheaper"
               else ops_worker(h, int(r)) if v == "ops"
               else pass_worker(v[:-5], h, int(r)) if v in ("tcn_pass", "mamba_pass")
               else worker(v, int(h), int(r)))
        print(json.dumps(res))
        return 0
    from mambava.config import load_config
    from mambava.models import VARIANTS, variant_config

    if args.windows:
        return windows_main(args.windows, args.rounds if args.rounds > 1 else 12, args.tag, args.query_blocks)
    if args.cheaper:
        return cheaper_main(list(VARIANTS), args.repeats, args.tag)
    if args.ops:
        return ops_main(list(VARIANTS), args.repeats, args.tag)
    if args.tcn_pass:
        return pass_main("tcn", [v for v in VARIANTS if variant_config(load_config(PARAMS).model, v).tcn],
                         args.rounds if args.rounds > 1 else 16, args.tag)
    if args.mamba_pass:
        return pass_main("mamba", [v for v in VARIANTS if variant_config(load_config(PARAMS).model, v).temporal == "mamba"],
                         args.rounds if args.rounds > 1 else 16, args.tag)
    if args.parts:
        return parts_main(list(VARIANTS), args.repeats, args.baseline, args.at_once, args.compile, args.tag, args.rounds)

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
