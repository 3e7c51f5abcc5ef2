"""What a cheaper training budget does to the study's figures: retrain, score, compare.

    python benchmarks/train_budget.py --tag half_batch \\
        --set train.batch_size=4 --set train.epochs=5 --set train.restart_epochs=4
    python benchmarks/train_budget.py --tag double_steps --set train.epochs=20 --set train.restart_epochs=19 \\
        --levels oracle --variants mamba_va
    python benchmarks/train_budget.py --tag lr_half_0.01 --set train.epochs=5 --set train.restart_epochs=4 \\
        --set train.lr=0.01 --levels oracle --variants mamba_va --work /tmp/lrx/0.01
    # the same command with --score-only: score the finished runs again, train nothing

After `dvc repro` (it reads the default run's features, folds and `outputs/runs`). The script
writes params.yaml with the ``--set`` values and its own output folders (``--work``, default
``/tmp/mambava-budget/<tag>``) and runs `mambava --params P train` and `evaluate` for each chosen
(level, variant), every fold and seed, as the pipeline's stages do; runs already finished in the
work folder are kept, so an interrupted comparison resumes. Then it builds the ladder's test
split (`mambava.ladder.build` and `comparisons`, same bootstrap) for the default runs and for the
changed ones (a variant not retrained takes the default's runs there, linked into the work folder, so
every comparison with a retrained one is scored), and prints side by side: first the validation CCCs (mean over every fold and seed,
with the seed spread: what a choice between budgets is made on), then the test split (reported,
never chosen on): each cell's CCC, its seed spread and the difference in
default seed SDs, each comparison with its interval and whether it kept its side of 0, and the
seconds. Writes benchmarks/results/<tag>.json.

Issue 25 used it to price the 30-minute pipeline (benchmarks/README.md): half the optimiser steps,
half the batch at the same steps, twice the steps, and half the steps at a higher learning rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("oracle", "mae")


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise SystemExit(f"--set {dotted}: params.yaml has no section {k!r}")
        node = node[k]
    if keys[-1] not in node:
        raise SystemExit(f"--set {dotted}: params.yaml has no key {keys[-1]!r} there")
    node[keys[-1]] = value


def write_params(src: Path, work: Path, changes: dict) -> Path:
    """params.yaml with ``changes`` (dotted key -> value) and the work folder's outputs; checked by
    the project's config layer (unknown keys and wrong types are refused there)."""
    from mambava.config import load_config

    tree = yaml.safe_load(src.read_text())
    for k, v in changes.items():
        _set(tree, k, v)
    tree["train"]["out"] = str(work / "models")
    tree["evaluate"]["out"] = str(work / "runs")
    work.mkdir(parents=True, exist_ok=True)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    load_config(path)
    return path


def _run(params: Path, args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "mambava.cli", "--params", str(params), *args], cwd=ROOT,
                              stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def ladders(cfg, roots: dict[str, Path], levels, variants):
    """{name: (table, comparisons)} of the test split for each runs root."""
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import read_folds
    from mambava.ladder import build, comparisons

    index = load_index(ROOT / cfg.data.index)
    test = list(index.loc[index["split"] == "test", "video"])
    folds = list(range(int(read_folds(ROOT / cfg.folds.file)["cv_fold"].max()) + 1))
    out = {}
    for name, root in roots.items():
        table, reps = build({lv: root / lv for lv in levels}, variants, folds, {}, test, None, cfg.book.n_boot,
                            cfg.evaluate.boot_seed, cfg.evaluate.level, ("test",))
        out[name] = (table, comparisons(reps, table, cfg.evaluate.level))
    return out


def validation(root: Path, levels, variants) -> list[dict]:
    """The validation CCCs the runs under ``root`` were selected by (what a choice between budgets
    is made on; the test split is only reported): per (level, variant, target) the mean over every
    fold and seed, and the SD over seeds of each seed's mean over folds."""
    rows = []
    for lv in levels:
        for v in variants:
            runs = [json.loads(p.read_text()) for pattern in ("fold*/metrics.json", "fold*/seed*/metrics.json")
                    for p in sorted((root / lv / v).glob(pattern))]
            if not runs:
                raise SystemExit(f"no validation metrics under {root / lv / v}")
            for target in ("valence", "arousal"):
                by_seed: dict[int, list[float]] = {}
                for m in runs:
                    by_seed.setdefault(int(m["seed"]), []).append(float(m[f"ccc_{target}"]))
                seed_means = [float(np.mean(x)) for x in by_seed.values()]
                rows.append({"level": lv, "variant": v, "target": target, "runs": len(runs),
                             "ccc": float(np.mean([m[f"ccc_{target}"] for m in runs])),
                             "seed_sd": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float("nan")})
    return rows


def train_seconds(models: Path, levels, variants) -> float:
    """Sum of every run's training seconds (each run's ``train.timing.json``), resumes or not."""
    return round(sum(json.loads(p.read_text())["seconds"] for lv in levels for v in variants
                     for p in (models / lv / v).glob("fold*/seed*/train.timing.json")), 1)


def link_default_runs(default_runs: Path, work_runs: Path, levels, retrained, variants) -> list[str]:
    """Link the default's runs of every variant not retrained into the work folder (at every level
    where it has them), so that each comparison with a retrained variant is scored, its partner's
    runs the default's. Returns the variants to score, in ``variants``' order: the retrained ones
    and the linked ones. A folder already in the work folder is left as it is."""
    scored = set(retrained)
    for v in variants:
        if v in scored or not all((default_runs / lv / v).is_dir() for lv in levels):
            continue
        for lv in levels:
            link = work_runs / lv / v
            if not (link.exists() or link.is_symlink()):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((default_runs / lv / v).resolve(), target_is_directory=True)
        scored.add(v)
    return [v for v in variants if v in scored]


def _side(lo: float, hi: float) -> str:
    return "+" if lo > 0 else "-" if hi < 0 else "0"


def main() -> int:
    from mambava.config import load_config
    from mambava.variants import VARIANTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", required=True, help="name of the result (benchmarks/results/<tag>.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml value to change (YAML value), e.g. train.batch_size=4; repeatable")
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work", type=Path, default=None, help="output folder (default /tmp/mambava-budget/<tag>)")
    ap.add_argument("--score-only", action="store_true",
                    help="train and evaluate nothing: score the runs already in the work folder again "
                         "(the stage seconds are kept from the earlier result)")
    args = ap.parse_args()
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        changes[key] = yaml.safe_load(value)
    work = (args.work or Path("/tmp/mambava-budget") / args.tag).resolve()
    params = write_params(ROOT / "params.yaml", work, changes)
    cfg = load_config(ROOT / "params.yaml")
    default_runs = ROOT / cfg.evaluate.out

    seconds = {}
    command = "python benchmarks/train_budget.py " + " ".join(sys.argv[1:])
    earlier = ROOT / "benchmarks" / "results" / f"{args.tag}.json"
    if args.score_only and earlier.exists():
        before = json.loads(earlier.read_text())
        seconds, command = before.get("seconds", {}), before.get("command", command)
    for stage in ("train", "evaluate") if not args.score_only else ():
        for level in args.levels:
            for v in args.variants:
                s = _run(params, [stage, "--level", level, "--variant", v], work / f"{stage}_{level}_{v}.log")
                seconds[f"{stage}@{level}-{v}"] = round(s, 1)
                print(f"{stage} {level} {v}: {s:.0f} s", flush=True)

    scored = link_default_runs(default_runs, work / "runs", args.levels, args.variants, list(VARIANTS))
    train_sum = {"default": train_seconds(ROOT / cfg.train.out, args.levels, args.variants),
                 "changed": train_seconds(work / "models", args.levels, args.variants)}
    val = {name: validation(root, args.levels, scored)
           for name, root in (("default", default_runs), ("changed", work / "runs"))}
    print("validation (every fold and seed; what a choice is made on):")
    print_table(["level", "variant", "target", "runs", "default (seed SD)", "changed (seed SD)", "difference"],
                [[a["level"], a["variant"], a["target"], f"{a['runs']} / {b['runs']}",
                  f"{a['ccc']:.3f} ({a['seed_sd']:.3f})", f"{b['ccc']:.3f} ({b['seed_sd']:.3f})",
                  f"{b['ccc'] - a['ccc']:+.3f}"] for a, b in zip(val["default"], val["changed"])])
    print("test split (reported, never chosen on):")
    lad = ladders(cfg, {"default": default_runs, "changed": work / "runs"}, args.levels, scored)
    (t0, c0), (t1, c1) = lad["default"], lad["changed"]
    keys = ["level", "variant", "target"]
    cells = t0.merge(t1, on=["split", *keys], suffixes=("_default", "_changed"))
    cells["diff"] = cells["ccc_changed"] - cells["ccc_default"]
    cells["diff_in_default_seed_sd"] = cells["diff"] / cells["seed_sd_default"].replace(0, np.nan)
    print_table(["level", "variant", "target", "default (seed SD)", "changed (seed SD)", "difference", "in seed SDs"],
                [[r.level, r.variant, r.target, f"{r.ccc_default:.3f} ({r.seed_sd_default:.3f})",
                  f"{r.ccc_changed:.3f} ({r.seed_sd_changed:.3f})", f"{r.diff:+.3f}",
                  f"{r.diff_in_default_seed_sd:+.1f}"] for r in cells.itertuples()])
    comp = c0.merge(c1, on=["split", "level", "a", "b", "target"], suffixes=("_default", "_changed"))
    comp["side_default"] = [_side(lo, hi) for lo, hi in zip(comp.lo_default, comp.hi_default)]
    comp["side_changed"] = [_side(lo, hi) for lo, hi in zip(comp.lo_changed, comp.hi_changed)]
    if len(comp):
        print_table(["level", "comparison", "target", "default", "changed", "side of 0 kept"],
                    [[r.level, f"{r.a} - {r.b}", r.target,
                      f"{r.diff_default:+.3f} [{r.lo_default:+.3f}, {r.hi_default:+.3f}]",
                      f"{r.diff_changed:+.3f} [{r.lo_changed:+.3f}, {r.hi_changed:+.3f}]",
                      "yes" if r.side_default == r.side_changed else f"no ({r.side_default} -> {r.side_changed})"]
                     for r in comp.itertuples()])
    changed_sides = int((comp["side_default"] != comp["side_changed"]).sum()) if len(comp) else 0
    print(f"{changed_sides} of {len(comp)} comparisons changed side of 0; "
          f"train + evaluate {sum(seconds.values()):.0f} s in this call; training, sum over runs: "
          f"{train_sum['changed']:.0f} s against the default's {train_sum['default']:.0f} s "
          f"({train_sum['changed'] / train_sum['default']:.2f})")
    path = write_json(f"{args.tag}.json", {
        "what": "the default study's trainings with other params, against the default run's (test split)",
        "params_changed": changes, "levels": args.levels, "variants": args.variants, "scored": scored,
        "command": command,
        "machine": machine(), "seconds": seconds, "seconds_sum": round(sum(seconds.values()), 1),
        "train_seconds_sum_over_runs": train_sum,
        "validation": {k: [{**r, "ccc": round(r["ccc"], 4), "seed_sd": round(r["seed_sd"], 4)} for r in rows]
                       for k, rows in val.items()},
        "ladder": cells.round(4).to_dict(orient="records"),
        "comparisons": comp.round(4).to_dict(orient="records"),
        "comparisons_changing_side": changed_sides})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
