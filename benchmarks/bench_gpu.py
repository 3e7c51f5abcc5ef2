"""GPU checks and benchmarks: mamba-ssm's fused scan, agreement of our block with mamba-ssm's,
whole-video inference, training steps, and ViT-L/16 feature extraction in bf16.

    python benchmarks/bench_gpu.py                       # every section
    python benchmarks/bench_gpu.py --sections scan agree --out gpu.json

Needs CUDA. mamba-ssm is optional: without it the sections that need it say so and the rest
run. Sections:

- ``scan``: forward + backward of Mamba's scan (``out = scan(u, softplus(delta + bias), A, B, C,
  D) * silu(z)``, gradients of all 8 inputs) at batch 16, dim 256, state 8 (the paper's layer),
  lengths 300 / 1,000 / 10,000, on the GPU: mamba-ssm's fused kernel (``backend="cuda"``), our
  sequential reference and mambapy's parallel scan (if installed), and, for scale, our numba
  kernel on this machine's CPU at length 300. Times: CUDA-synchronised wall clock, minimum and
  median of ``--repeats`` after two untimed calls; memory: peak of ``torch.cuda`` allocations
  above what the inputs hold.
- ``agree``: (1) the scan on the GPU (mamba-ssm) against our numba scan on the CPU, outputs and
  the gradients of all inputs, with mamba-ssm's own test tolerance (rtol 6e-4, atol 2e-3);
  (2) a ``mamba_ssm.modules.mamba_simple.Mamba`` (d_model 256, d_state 8, d_conv 4, expand 1)
  state dict loaded into our block: outputs and parameter gradients on the GPU, and our block on
  the CPU (numba) against mamba-ssm on the GPU; the other direction (ours into mamba-ssm's);
  (3) the paper's whole MambaVA model (67,155,086 parameters) on the GPU (mamba-ssm) and on the
  CPU (numba) with the same weights and input: predictions; (4) our recurrent ``step`` on the GPU
  against the parallel pass.
- ``encoder``: whole-video inference of the paper's temporal encoder (batch 1, no gradients),
  Mamba (mamba-ssm kernel) vs causal Transformer, 1k to 1M frames (the Transformer up to a
  time limit).
- ``train``: one training step (forward, CCC loss, backward, AdamW) of the paper model on a batch
  of 16 windows of 300 frames of 1024-d features, per variant.
- ``features``: ViT-L/16 at 224 (the paper's encoder) in bf16: the encoder alone on random
  images, and ``extract_features`` end to end (JPEG decode, resize, normalise, encode, fill,
  write) over a synthetic twin generated here.

Prints a line per measurement and writes JSON (``--out``, relative to benchmarks/results/ or
absolute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mambava.models import ssm  # noqa: E402

SECTIONS = ("env", "scan", "agree", "encoder", "train", "features")


def log(msg: str) -> None:
    print(msg, flush=True)


def sync():
    torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 2) -> dict:
    """Minimum and median CUDA-synchronised wall time of ``fn``, and its peak extra memory."""
    for _ in range(warmup):
        fn()
    sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"min_s": times[0], "median_s": times[len(times) // 2], "repeats": repeats,
            "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}


# --------------------------------------------------------------------------- scan
def scan_inputs(batch, dim, length, nstate, device, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5,
        A=-torch.arange(1.0, nstate + 1).repeat(dim, 1) * (1 + 0.1 * torch.rand(dim, nstate, generator=g)),
        B=torch.randn(batch, nstate, length, generator=g),
        C=torch.randn(batch, nstate, length, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=torch.rand(dim, generator=g) - 4.0,
    )
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in x.items()}


def scan_method(name: str):
    if name in ("mamba_ssm", "reference", "numba"):
        backend = {"mamba_ssm": "cuda"}.get(name, name)
        return lambda x: ssm.selective_scan_fn(**x, delta_softplus=True, backend=backend)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scan import scan_call  # the same mambapy wrapper as the CPU benchmark; device-agnostic

    return scan_call("mambapy")


def section_scan(a) -> list[dict]:
    out = []
    methods = ["mamba_ssm", "reference", "mambapy"]
    for length in a.lengths:
        for m in methods:
            row = {"method": m, "device": "cuda", "batch": 16, "dim": 256, "state": 8, "length": length}
            if m == "mamba_ssm" and not ssm.mamba_ssm_available():
                row["error"] = "mamba-ssm not importable"
            elif m == "reference" and length > 1000:
                row["error"] = "not run (a Python loop over 10,000 steps)"
            else:
                try:
                    fn = scan_method(m)
                    x = scan_inputs(16, 256, length, 8, "cuda")
                    g = torch.randn(16, 256, length, device="cuda")

                    def step():
                        for t in x.values():
                            t.grad = None
                        fn(x).backward(g)

                    row.update(timed(step, a.repeats if m != "reference" else 3))
                except Exception as e:  # noqa: BLE001  (report, go on)
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    torch.cuda.empty_cache()
            out.append(row)
            log(f"scan {m:>10} L={length:<6} " + (row.get("error") or
                f"min {row['min_s'] * 1e3:9.2f} ms  median {row['median_s'] * 1e3:9.2f} ms  peak {row['peak_mib']:8.1f} MiB"))
    # our numba kernel on this machine's CPU, for scale (threads: all cores)
    x = scan_inputs(16, 256, 300, 8, "cpu")
    g = torch.randn(16, 256, 300)
    fn = scan_method("numba")

    def cpu_step():
        for t in x.values():
            t.grad = None
        fn(x).backward(g)

    cpu_step()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        cpu_step()
        times.append(time.perf_counter() - t0)
    times.sort()
    row = {"method": "numba", "device": f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
           "length": 300, "min_s": times[0], "median_s": times[len(times) // 2]}
    log(f"scan      numba L=300 on the CPU: min {times[0] * 1e3:.1f} ms")
    out.append(row)
    return out


# --------------------------------------------------------------------------- agreement
def max_err(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "max_rel_to_max": float(d.max() / b.abs().max().clamp_min(1e-30)),
            "within_mamba_ssm_tol": bool(torch.allclose(a, b, rtol=6e-4, atol=2e-3))}


def section_agree(a) -> dict:
    res: dict = {}
    if not ssm.mamba_ssm_available():
        return {"error": "mamba-ssm not importable"}
    from mamba_ssm.modules.mamba_simple import Mamba as RefMamba

    from mambava.models.mamba import Mamba

    # (1) scan: mamba-ssm on the GPU vs our numba kernel on the CPU, all options on
    for length, last in ((64, False), (300, True), (2000, False)):
        xc = scan_inputs(2, 128, length, 8, "cpu", seed=3)
        xg = {k: v.detach().cuda().requires_grad_() for k, v in xc.items()}
        g = torch.randn(2, 128, length, generator=torch.Generator().manual_seed(4))
        outs = {}
        for name, x, backend in (("numba", xc, "numba"), ("mamba_ssm", xg, "cuda")):
            r = ssm.selective_scan_fn(**x, delta_softplus=True, return_last_state=last, backend=backend)
            y, st = r if last else (r, None)
            y.backward(g.to(y.device))
            outs[name] = (y, st, {k: v.grad for k, v in x.items()})
        key = f"scan_L{length}"
        res[key] = {"out": max_err(outs["mamba_ssm"][0], outs["numba"][0])}
        if last:
            res[key]["last_state"] = max_err(outs["mamba_ssm"][1], outs["numba"][1])
        for k in xc:
            res[key][f"grad_{k}"] = max_err(outs["mamba_ssm"][2][k], outs["numba"][2][k])
        log(f"agree {key}: " + ", ".join(f"{k} {v['max_abs']:.2e}{'' if v['within_mamba_ssm_tol'] else ' (OUT OF TOL)'}"
                                        for k, v in res[key].items()))

    # (2) block: mamba-ssm's Mamba state dict -> ours, and back
    torch.manual_seed(0)
    ref = RefMamba(d_model=256, d_state=8, d_conv=4, expand=1).cuda()
    ours = Mamba(256, d_state=8, d_conv=4, expand=1, scan_backend="cuda").cuda()
    ref_keys = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_keys = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    res["block_state_dict_keys_and_shapes_equal"] = ref_keys == our_keys
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 300, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    g = torch.randn(4, 300, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(6))
    y_ref = ref(x)
    y_ref.backward(g)
    y_ours = ours(x)
    y_ours.backward(g)
    blk = {"forward_gpu": max_err(y_ours, y_ref)}
    rg = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        blk[f"grad_{k}"] = max_err(p.grad, rg[k].grad)
    ours_cpu = Mamba(256, d_state=8, d_conv=4, expand=1, scan_backend="numba")
    ours_cpu.load_state_dict(ref.state_dict())
    with torch.no_grad():
        blk["forward_ours_cpu_numba_vs_mamba_ssm_gpu"] = max_err(ours_cpu(x.cpu()), y_ref)
    # the other direction: a state dict of ours (re-initialised) into mamba-ssm's block
    torch.manual_seed(1)
    ours2 = Mamba(256, d_state=8, d_conv=4, expand=1, scan_backend="cuda").cuda()
    ref2 = RefMamba(d_model=256, d_state=8, d_conv=4, expand=1).cuda()
    ref2.load_state_dict(ours2.state_dict())
    with torch.no_grad():
        blk["forward_ours_state_dict_in_mamba_ssm"] = max_err(ref2(x), ours2(x))
    res["block"] = blk
    log(f"agree block: keys/shapes equal {res['block_state_dict_keys_and_shapes_equal']}; " +
        ", ".join(f"{k} {v['max_abs']:.2e}{'' if v['within_mamba_ssm_tol'] else ' (OUT OF TOL)'}" for k, v in blk.items()))

    # (3) the paper's whole model, GPU (mamba-ssm) vs CPU (numba)
    from mambava.config import load_config
    from mambava.models import build_model

    cfg = load_config(ROOT / "params.yaml", profile="paper").model
    torch.manual_seed(2)
    m_gpu = build_model(cfg.model_copy(update={"scan_backend": "cuda"})).cuda().eval()
    m_cpu = build_model(cfg.model_copy(update={"scan_backend": "numba"})).eval()
    m_cpu.load_state_dict(m_gpu.state_dict())
    n_params = sum(p.numel() for p in m_gpu.parameters())
    feats = torch.randn(2, 300, cfg.input_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        p_gpu, p_cpu = m_gpu(feats.cuda()), m_cpu(feats)
    res["paper_model"] = {"parameters": n_params, "predictions_gpu_vs_cpu": max_err(p_gpu, p_cpu),
                          "prediction_std": float(p_cpu.std())}
    log(f"agree paper model ({n_params:,} parameters): GPU vs CPU predictions max abs "
        f"{res['paper_model']['predictions_gpu_vs_cpu']['max_abs']:.2e} (prediction sd {float(p_cpu.std()):.3f})")

    # (4) recurrent step on the GPU == parallel pass
    with torch.no_grad():
        xs = x[:2, :200]
        par = ours(xs)
        state = ours.allocate_state(2, device="cuda")
        steps = []
        for t in range(xs.shape[1]):
            yt, state = ours.step(xs[:, t], state)
            steps.append(yt)
        res["step_vs_parallel_gpu"] = max_err(torch.stack(steps, 1), par)
    log(f"agree step vs parallel on the GPU: max abs {res['step_vs_parallel_gpu']['max_abs']:.2e}")
    return res


# --------------------------------------------------------------------------- encoder
def section_encoder(a) -> list[dict]:
    from mambava.config import load_config
    from mambava.models.mamba_va import MambaVA

    cfg = load_config(ROOT / "params.yaml", profile="paper").model
    out = []
    for method in ("mamba", "transformer"):
        if method == "mamba" and not ssm.mamba_ssm_available():
            out.append({"method": method, "error": "mamba-ssm not importable"})
            continue
        model = MambaVA(cfg.model_copy(update={"tcn": False, "temporal": method, "scan_backend":
                                                "cuda" if method == "mamba" else "auto"})).cuda().eval()
        prev = None
        for length in a.encoder_lengths:
            row = {"method": method, "length": length}
            if prev is not None:  # skip a length whose extrapolated time is past the limit
                power = 2 if method == "transformer" else 1
                estimate = prev[1] * (length / prev[0]) ** power
                if estimate > a.encoder_limit_s:
                    row["error"] = f"not run: about {estimate:.0f} s extrapolated (length^{power})"
                    out.append(row)
                    log(f"encoder {method:>11} L={length:<8} {row['error']}")
                    continue
            try:
                x = torch.randn(1, length, cfg.d_model, device="cuda")

                def run():
                    with torch.no_grad():
                        model.encode(x)

                t0 = time.perf_counter()
                run()
                sync()
                first = time.perf_counter() - t0
                if first > a.encoder_limit_s:
                    row.update({"min_s": first, "median_s": first, "repeats": 1, "note": "one run (slow)"})
                else:
                    row.update(timed(run, 3, warmup=0))
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"out of GPU memory: {str(e)[:120]}"
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            torch.cuda.empty_cache()
            out.append(row)
            log(f"encoder {method:>11} L={length:<8} " + (row.get("error") or
                f"min {row['min_s']:.4f} s ({row['min_s'] / length * 1e6:.2f} us/frame)  peak {row.get('peak_mib', float('nan')):.0f} MiB"))
            if "error" in row or row["min_s"] > a.encoder_limit_s:
                break
            prev = (length, row["min_s"])
    return out


# --------------------------------------------------------------------------- train step
def section_train(a) -> list[dict]:
    from mambava.config import load_config
    from mambava.metrics import ccc_loss
    from mambava.models import build_model

    cfg = load_config(ROOT / "params.yaml", profile="paper").model
    out = []
    for variant in ("mamba_va", "no_tcn", "no_mamba", "transformer"):
        if variant in ("mamba_va", "no_tcn") and not ssm.mamba_ssm_available():
            out.append({"variant": variant, "error": "mamba-ssm not importable"})
            continue
        torch.manual_seed(0)
        model = build_model(cfg.model_copy(update={"scan_backend": "cuda" if ssm.mamba_ssm_available() else "auto"}),
                            variant).cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(16, 300, cfg.input_dim, device="cuda")
        y = torch.rand(16, 300, 2, device="cuda") * 2 - 1

        def step():
            opt.zero_grad(set_to_none=True)
            p = model(x)
            loss = ccc_loss(p, y)
            loss.backward()
            opt.step()

        row = {"variant": variant, "parameters": sum(p.numel() for p in model.parameters()), "batch": 16, "window": 300}
        row.update(timed(step, a.repeats))
        out.append(row)
        log(f"train step {variant:>12}: min {row['min_s'] * 1e3:.1f} ms, median {row['median_s'] * 1e3:.1f} ms, "
            f"{row['parameters']:,} parameters, peak {row['peak_mib']:.0f} MiB")
    return out


# --------------------------------------------------------------------------- features
def section_features(a) -> dict:
    from mambava.features.mae import EncoderSpec, build_encoder

    res: dict = {}
    torch.backends.cuda.matmul.allow_tf32 = True
    large = EncoderSpec(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    enc = build_encoder(large).cuda().eval()
    res["parameters"] = sum(p.numel() for p in enc.parameters())
    for batch in (256, 512, 1024):
        imgs = torch.randn(batch, 3, 224, 224, device="cuda")

        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                enc(imgs)

        r = timed(run, 10)
        r["frames_per_second"] = batch / r["min_s"]
        r["frames_per_second_median"] = batch / r["median_s"]
        res[f"encoder_only_batch{batch}"] = r
        log(f"features ViT-L/16 bf16 encoder only, batch {batch}: {r['frames_per_second']:.0f} frames/s "
            f"(median {r['frames_per_second_median']:.0f}), peak {r['peak_mib']:.0f} MiB")

    # end to end over a synthetic twin generated here
    from mambava.config import load_config
    from mambava.data.affwild2 import build_index
    from mambava.data.synthetic import generate_twin
    from mambava.features.extract import extract_features
    from mambava.config import FACE_MEAN, FACE_STD

    cfg = load_config(ROOT / "params.yaml")
    workers = max(1, (os.cpu_count() or 2) - 2)
    syn = cfg.data.synthetic.model_copy(update={"n_videos": a.twin_videos, "n_pairs": 1, "workers": workers})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_twin(syn, tmp / "twin" / "data", tmp / "twin" / "test_labels", tmp / "twin" / "truth", "test_set_release.txt")
        index = build_index(tmp / "twin" / "data", tmp / "twin" / "test_labels", "test_set_release.txt")
        res["twin"] = {"videos": len(index), "frames": int(index.n_frames.sum()),
                       "frames_on_disk": int(index.n_frames_on_disk.sum()), "generation_s": time.perf_counter() - t0}
        log(f"features: twin of {len(index)} videos, {int(index.n_frames.sum())} frames generated in "
            f"{res['twin']['generation_s']:.0f} s")
        for bs in (256, 512):
            t0 = time.perf_counter()
            s = extract_features(index, enc, tmp / f"feat{bs}", 224, FACE_MEAN, FACE_STD, batch_size=bs,
                                 num_workers=workers, device="cuda", precision="bf16", progress=False)
            dt = time.perf_counter() - t0
            res[f"end_to_end_batch{bs}"] = {"seconds": dt, "frames": res["twin"]["frames_on_disk"], "workers": workers,
                                            "frames_per_second": res["twin"]["frames_on_disk"] / dt,
                                            "summary": {k: v for k, v in s.items() if isinstance(v, (int, float, str))}}
            log(f"features end to end (112 px JPEG -> 224, {workers} loader workers, batch {bs}, bf16, loader start "
                f"and writes included): {res['twin']['frames_on_disk'] / dt:.0f} frames/s over "
                f"{res['twin']['frames_on_disk']} face frames")
    return res


# --------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 10000])
    p.add_argument("--encoder-lengths", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    p.add_argument("--encoder-limit-s", type=float, default=60.0, help="stop a method's lengths past this time")
    p.add_argument("--twin-videos", type=int, default=96)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="gpu.json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu.py needs CUDA", file=sys.stderr)
        return 2
    result: dict = {"machine": {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "mamba_ssm": getattr(sys.modules.get("mamba_ssm"), "__version__", None) if ssm.mamba_ssm_available() else None,
    }}
    log(json.dumps(result["machine"]))
    for name in a.sections:
        if name == "env":
            continue
        t0 = time.perf_counter()
        try:
            result[name] = globals()[f"section_{name}"](a)
        except Exception as e:  # noqa: BLE001  (one failing section must not lose the others)
            traceback.print_exc()
            result[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        path = Path(a.out) if Path(a.out).is_absolute() else ROOT / "benchmarks" / "results" / a.out
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
        os.replace(tmp, path)  # after every section, so a run cut short keeps what it measured
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
