"""How far the pipeline's results move on a CPU with other vector instructions, measured on one box.

A second machine is not always at hand, but what differs between two CPUs of one kind of cloud
machine is mostly which kernels torch picks: AVX-512 or AVX2 code in ATen, MKL and oneDNN, whose
float sums are ordered differently. This script runs the same tiny DVC project (tests/_dvc_project.py)
twice on this machine, once as it is and once with those libraries held to AVX2
(``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``),
then reports the first stage whose outputs differ and by how much the numbers moved: weights
of the MAE checkpoints, feature arrays, and the CCCs of training and evaluation.

    python benchmarks/drift_isa.py [--work /tmp/drift] [--out benchmarks/results/drift_isa.json]

It prints the numbers and writes the JSON. (Status: written, not yet run to completion: no result
file exists yet.) It is a stand-in for a second machine, not a measurement
of one: the thread count, the libraries and the OS stay the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _dvc_project import dvc, make_project  # noqa: E402

STAGES = ["data", "mae_pretrain", "mae_finetune", "features", "folds", "train", "evaluate"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run(root: Path, extra_env: dict) -> float:
    old = {k: os.environ.get(k) for k in extra_env}
    os.environ.update(extra_env)
    try:
        t0 = time.perf_counter()
        dvc(root, "repro")
        return time.perf_counter() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def outs(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {f"{name}:{o['path']}": o["md5"] for name, st in lock.items() for o in st.get("outs", [])}


def max_weight_diff(a: Path, b: Path) -> float:
    import torch

    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    sa, sb = (s.get("model", s) for s in (sa, sb))
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if hasattr(sa[k], "shape"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/mambava_drift")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/drift_isa.json"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    a, b = make_project(work / "avx512", STAGES), make_project(work / "avx2", STAGES)
    seconds = {"native": run(a, {}), "avx2": run(b, AVX2)}
    oa, ob = outs(a), outs(b)
    differ = [k for k in oa if oa[k] != ob.get(k)]
    result: dict = {"cpu_capability_native": None, "differing_outputs": differ, "seconds": seconds}
    import torch

    result["cpu_capability_native"] = torch.backends.cpu.get_cpu_capability()
    result["mae_pretrain_max_abs_weight_diff"] = max_weight_diff(a / "outputs/mae_pretrain/checkpoint.pt",
                                                                b / "outputs/mae_pretrain/checkpoint.pt")
    result["mae_finetune_max_abs_weight_diff"] = max_weight_diff(a / "outputs/mae_finetune/checkpoint.pt",
                                                                b / "outputs/mae_finetune/checkpoint.pt")
    fa = sorted((a / "outputs/features").glob("*.npy"))
    feat = [np.abs(np.load(p).astype(np.float32) - np.load(b / "outputs/features" / p.name).astype(np.float32)).max()
            for p in fa if not p.name.endswith(".mask.npy")]
    scale = max(float(np.abs(np.load(p).astype(np.float32)).max()) for p in fa if not p.name.endswith(".mask.npy"))
    result["features_max_abs_diff"] = float(max(feat))
    result["features_max_abs_value"] = scale
    run_dir = "outputs/runs/mamba_va/fold0"
    ma, mb = (json.loads((r / run_dir / "metrics.json").read_text()) for r in (a, b))
    result["evaluate_ccc_abs_diff"] = {k: abs(ma[k] - mb[k]) for k in ("ccc_valence", "ccc_arousal", "p_va")}
    result["evaluate_ccc_native"] = {k: ma[k] for k in ("ccc_valence", "ccc_arousal", "p_va")}
    result["best_pt_max_abs_weight_diff"] = max_weight_diff(a / run_dir / "best.pt", b / run_dir / "best.pt")
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
