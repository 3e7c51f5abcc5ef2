"""How far two runs of the default pipeline drift apart: hashes stage by stage, then the numbers.

    python benchmarks/compare_runs.py RUN_A RUN_B [--lock-a FILE] [--lock-b FILE] [--out JSON]

RUN_A and RUN_B are checkouts after `dvc repro` (for example ours and a fresh clone run on another
machine, or with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` as a stand-in for one); one of
them may be a checkout with only the metrics git tracks (a commit's recorded run), and the ladder
is then compared by its means in ``ladder.json``. It
prints, in the order of ``dvc.lock``, which outputs of each stage differ by hash, then the
per-run CCCs (`outputs/runs/<level>/<variant>.json`) and the ladder table
(`outputs/ladder/ladder.csv`) side by side, and writes everything to ``--out``
(default ``benchmarks/results/drift.json``). docs/reproducibility.md reports a measurement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml


def lock_differences(lock_a: Path, lock_b: Path) -> list[dict]:
    """Per stage: the outputs whose hashes differ, and how many of its dependencies do."""
    a, b = (yaml.safe_load(p.read_text())["stages"] for p in (lock_a, lock_b))
    rows = []
    for name, sa in a.items():
        sb = b.get(name, {})
        outs_a = {o["path"]: o.get("md5") for o in sa.get("outs", [])}
        outs_b = {o["path"]: o.get("md5") for o in sb.get("outs", [])}
        deps_a = {d["path"]: d.get("md5") for d in sa.get("deps", [])}
        deps_b = {d["path"]: d.get("md5") for d in sb.get("deps", [])}
        rows.append({"stage": name, "outs": len(outs_a),
                     "outs_differ": sorted(p for p in outs_a if outs_a[p] != outs_b.get(p)),
                     "deps_differ": sum(deps_a[p] != deps_b.get(p) for p in deps_a)})
    return rows


def run_metrics(root_a: Path, root_b: Path) -> pd.DataFrame:
    """Every per-run metric of outputs/runs/<level>/<variant>.json in both runs."""
    rows = []
    for fa in sorted((root_a / "outputs/runs").glob("*/*.json")):
        fb = root_b / fa.relative_to(root_a)
        if not fb.exists():
            continue
        ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
        rows += [(fa.parent.name, fa.stem, k, v, jb[k]) for k, v in ja.items()
                 if isinstance(v, (int, float)) and isinstance(jb.get(k), (int, float))]
    d = pd.DataFrame(rows, columns=["level", "variant", "key", "a", "b"])
    d["abs_diff"] = (d.b - d.a).abs()
    return d


def ladder_means(root_a: Path, root_b: Path) -> pd.DataFrame:
    """The ladder's means from outputs/ladder/ladder.json, the file git tracks: for a run that
    only has the committed metrics (a checkout without the pipeline's outputs)."""
    ja, jb = (json.loads((r / "outputs/ladder/ladder.json").read_text()) for r in (root_a, root_b))
    rows = [dict(zip(["split", "level", "variant", "target"], k.split("/")), ccc_a=v, ccc_b=jb[k])
            for k, v in ja.items() if k in jb]
    d = pd.DataFrame(rows)
    d["diff"] = d.ccc_b - d.ccc_a
    return d


def ladder_differences(root_a: Path, root_b: Path) -> pd.DataFrame:
    la, lb = (pd.read_csv(r / "outputs/ladder/ladder.csv") for r in (root_a, root_b))
    m = la.merge(lb, on=["split", "level", "variant", "target"], suffixes=("_a", "_b"))
    m["diff"] = m.ccc_b - m.ccc_a
    m["diff_over_seed_sd"] = m["diff"].abs() / m.seed_sd_a.where(m.seed_sd_a > 0)
    m["diff_over_ci_half"] = m["diff"].abs() / ((m.hi_a - m.lo_a) / 2)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--lock-a", type=Path)
    ap.add_argument("--lock-b", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/drift.json"))
    args = ap.parse_args()
    stages = lock_differences(args.lock_a or args.run_a / "dvc.lock", args.lock_b or args.run_b / "dvc.lock")
    print("stage                            outputs differing (by hash)")
    for r in stages:
        print(f"{r['stage']:32s} {len(r['outs_differ'])}/{r['outs']}  deps differing: {r['deps_differ']}")
    first = next((r["stage"] for r in stages if r["outs_differ"]), None)
    print("first stage whose outputs differ:", first)
    runs = run_metrics(args.run_a, args.run_b)
    per_run = runs.groupby(["level", "variant"]).abs_diff.agg(
        n="count", max="max", median="median", identical=lambda x: float((x == 0).mean()))
    print("\nper-run metrics, |a - b|:\n" + per_run.round(4).to_string())
    summary = {"first_stage_differing": first, "stages": stages, "per_run": per_run.reset_index().to_dict("records")}
    if all((r / "outputs/ladder/ladder.csv").exists() for r in (args.run_a, args.run_b)):
        lad = ladder_differences(args.run_a, args.run_b)
        cols = ["split", "level", "variant", "target", "ccc_a", "ccc_b", "diff", "seed_sd_a", "diff_over_ci_half"]
        summary |= {"ladder": lad[cols + ["diff_over_seed_sd"]].to_dict("records"),
                    "ladder_max_diff_over_seed_sd": float(lad.diff_over_seed_sd.max()),
                    "ladder_max_diff_over_ci_half": float(lad.diff_over_ci_half.max())}
    else:  # one run has only the committed metrics: the means, without seed spreads or intervals
        lad = ladder_means(args.run_a, args.run_b)
        cols = ["split", "level", "variant", "target", "ccc_a", "ccc_b", "diff"]
        summary["ladder"] = lad[cols].to_dict("records")
        print("\n(no outputs/ladder/ladder.csv in both runs: the means of ladder.json only)")
    print("\nladder, test split:\n" + lad[lad.split == "test"][cols].round(4).to_string(index=False))
    summary["ladder_max_abs_diff"] = lad.assign(a=lad["diff"].abs()).groupby("level").a.max().to_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    tmp.replace(args.out)
    print("\nwrote", args.out)


if __name__ == "__main__":
    main()
