"""What a smaller default study would cost and show, from the runs the pipeline already made.

    python benchmarks/study_size.py            # after `dvc repro`; about two minutes

Issue 25 asks for the pipeline in 30 minutes on 2 cores; training is about 70% of it and the
training step cannot shrink much more (benchmarks/README.md). The remaining lever is the size of
the study: 5 variants x 6 folds x 3 seeds x 2 feature levels. Every smaller design is a subset of
the runs `dvc repro` made, so its figures need no new training: this script links each design's
subset of `outputs/runs` into a temporary tree, computes the ladder's test split on it with
`mambava.ladder` (same bootstrap, same comparisons), and prices the design by the training
seconds its runs took (each run's `train.timing.json`; the stages run two at a time, so the
stage time is about half the sum). Designs:

- ``full``: the default, every fold and seed;
- ``two_seeds``: the first two seeds of every fold;
- ``fold0``: every variant on fold 0 only (the official split), three seeds; Table 1 (Mamba-VA's
  folds) would still need Mamba-VA on every fold, which the cost includes;
- ``fold0_two_seeds``: both cuts.

Writes benchmarks/results/study_size.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _link_subset(src: Path, dst: Path, folds: list[int], n_seeds: int) -> None:
    """``dst/<variant>/fold<k>``: the primary seed's test predictions and the next n_seeds - 1 seeds'."""
    for vdir in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in folds:
            fd = vdir / f"fold{f}"
            if not (fd / "test" / "predictions.csv").exists():
                continue
            out = dst / vdir.name / f"fold{f}"
            (out / "test").mkdir(parents=True)
            (out / "test" / "predictions.csv").symlink_to(fd / "test" / "predictions.csv")
            for sd in sorted(p for p in fd.glob("seed*") if p.is_dir())[: n_seeds - 1]:
                (out / sd.name / "test").mkdir(parents=True)
                (out / sd.name / "test" / "predictions.csv").symlink_to(sd / "test" / "predictions.csv")


def _train_seconds(models: Path, variant: str, folds: list[int], seeds: list[int]) -> float:
    return sum(json.loads((models / variant / f"fold{f}" / f"seed{s}" / "train.timing.json").read_text())["seconds"]
               for f in folds for s in seeds)


def main() -> int:
    from mambava.config import load_config
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import read_folds
    from mambava.ladder import build, comparisons
    from mambava.runtime import seeds_of
    from mambava.variants import VARIANTS

    cfg = load_config(ROOT / "params.yaml")
    index = load_index(ROOT / cfg.data.index)
    test = list(index.loc[index["split"] == "test", "video"])
    all_folds = list(range(int(read_folds(ROOT / cfg.folds.file)["cv_fold"].max()) + 1))
    seeds = seeds_of(cfg.train)
    designs = {"full": (all_folds, len(seeds)), "two_seeds": (all_folds, 2), "fold0": ([0], len(seeds)),
               "fold0_two_seeds": ([0], 2)}
    runs_root, models_root = ROOT / cfg.evaluate.out, ROOT / cfg.train.out
    results, tables = {}, {}
    for name, (folds, n_seeds) in designs.items():
        with tempfile.TemporaryDirectory() as tmp:
            levels = {}
            for level in ("oracle", "mae"):
                _link_subset(runs_root / level, Path(tmp) / level, folds, n_seeds)
                levels[level] = Path(tmp) / level
            table, reps = build(levels, VARIANTS, folds, {}, test, None, cfg.book.n_boot, cfg.evaluate.boot_seed,
                                cfg.evaluate.level, ("test",))
            comp = comparisons(reps, table, cfg.evaluate.level)
        cost = 0.0
        for level in ("oracle", "mae"):
            for v in VARIANTS:
                v_folds = all_folds if v == "mamba_va" else folds  # Table 1 needs Mamba-VA's every fold
                cost += _train_seconds(models_root / level, v, v_folds, seeds[:n_seeds])
        results[name] = {"folds": folds, "seeds": seeds[:n_seeds], "train_seconds_sum": round(cost, 1),
                         "ladder": table.round(4).to_dict(orient="records"),
                         "comparisons": comp.round(4).to_dict(orient="records")}
        tables[name] = (table, comp)
        print(f"{name}: folds {folds}, seeds {seeds[:n_seeds]}: training {cost:.0f} s (sum over runs)", flush=True)
    full_cost = results["full"]["train_seconds_sum"]
    rows = []
    for (lvl, v, t), _ in tables["full"][0].groupby(["level", "variant", "target"], sort=False):
        cells = []
        for name in designs:
            r = tables[name][0].query("level == @lvl and variant == @v and target == @t").iloc[0]
            cells.append(f"{r.ccc:.3f} [{r.lo:.3f}, {r.hi:.3f}]")
        rows.append([lvl, v, t, *cells])
    print_table(["level", "variant", "target", *designs], rows)
    rows = []
    for (lvl, a, b, t), _ in tables["full"][1].groupby(["level", "a", "b", "target"], sort=False):
        cells = []
        for name in designs:
            r = tables[name][1].query("level == @lvl and a == @a and b == @b and target == @t").iloc[0]
            cells.append(f"{r['diff']:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]")
        rows.append([lvl, f"{a} - {b}", t, *cells])
    print_table(["level", "comparison", "target", *designs], rows)
    print_table(["design", "training (sum over runs)", "/ full"],
                [[n, f"{r['train_seconds_sum']:.0f} s", f"{r['train_seconds_sum'] / full_cost:.2f}"]
                 for n, r in results.items()])
    path = write_json("study_size.json", {"machine": machine(), "designs": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
