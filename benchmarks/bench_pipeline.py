"""Where the pipeline's time goes: `dvc repro` timed stage by stage, and two versions side by side.

    python benchmarks/bench_pipeline.py run --tag now            # dvc repro here, every line stamped
    python benchmarks/bench_pipeline.py parse LOG --tag before   # a stamped log of an earlier run
    python benchmarks/bench_pipeline.py compare before now       # per stage: before, now, now / before
    python benchmarks/bench_pipeline.py ab --baseline b8d5ef9 --set data.synthetic.n_videos=40
                                       # both versions from scratch in temporary checkouts, then
                                       # the training step per variant of both, one run
    python benchmarks/bench_pipeline.py cores --cpus 0 --cpus 0,1 --set data.synthetic.n_videos=60 \
        --targets features train@oracle-mamba_va   # the working tree under taskset: 1 core, then 2

A stage's time is wall clock from DVC's "Running stage" line to the next stage's: the command
itself plus what DVC does around it (hashing its dependencies and outputs, writing the lock).
Stages DVC skips take the time it spent deciding so. ``ab`` checks out the baseline revision and
the working tree (uncommitted changes included) into temporary folders, applies the same
``--set`` overrides to both params.yaml files, and runs ``dvc repro`` in each with that tree's
code first on the Python path; the twin is drawn anew in each. Then it runs ``bench_temporal.py
--parts --baseline REV`` (each tree's own params.yaml, without the overrides): the pieces of one
training step per variant, before and now, and the ratio. Results (the logs and JSONs with the
machine) go to benchmarks/results/pipeline_<tag>_{before,after}.{log,json} and
temporal_parts_<tag>.json; ``--no-step`` leaves the step out. ``cores`` runs the working tree's
``dvc repro TARGETS`` from scratch once per CPU set (``taskset -c``), so that ``workers: auto``
shows what more cores buy, stage by stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^\s*([\d.]+) (?:Running stage '([^']+)'|Stage '([^']+)' (?:didn't change|is cached))")
GROUPS = (("train@", "train (10 stages)"), ("evaluate@", "evaluate (10 stages)"), ("notebook_", "notebooks"))


def stamped_run(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> int:
    """Run ``cmd``, writing each output line to ``log`` with the seconds since the start."""
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **(env or {})}, bufsize=1)
        for line in p.stdout:
            out.write(f"{time.perf_counter() - t0:9.1f} {line}")
            out.flush()
        rc = p.wait()
        out.write(f"{time.perf_counter() - t0:9.1f} [exit {rc}]\n")
    return rc


def parse(text: str) -> dict:
    """Stage -> seconds (and whether it ran) from a stamped log; the total is the last stamp."""
    marks, last = [], 0.0
    for line in text.splitlines():
        head = line[:10].strip()
        try:
            last = float(head)
        except ValueError:
            continue
        m = STAGE.match(line)
        if m:
            marks.append((float(m.group(1)), m.group(2) or m.group(3), m.group(2) is not None))
    stages = {}
    for i, (t, name, ran) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else last
        stages[name] = {"seconds": round(end - t, 1), "ran": ran}
    start = marks[0][0] if marks else 0.0
    return {"stages": stages, "startup_s": round(start, 1), "total_s": round(last, 1)}


def grouped(stages: dict) -> dict[str, float]:
    """The stages, with the train, evaluate and notebook matrices summed into one row each."""
    out: dict[str, float] = {}
    for name, s in stages.items():
        key = next((label for prefix, label in GROUPS if name.startswith(prefix)), name)
        out[key] = round(out.get(key, 0.0) + s["seconds"], 1)
    return out


def _load(tag_or_path: str) -> dict:
    p = Path(tag_or_path)
    if not p.exists():
        p = RESULTS / f"pipeline_{tag_or_path}.json"
    return json.loads(p.read_text())


def compare(a: dict, b: dict, names=("before", "after")) -> list[list[str]]:
    ga, gb = grouped(a["stages"]), grouped(b["stages"])
    rows = []
    for k in list(ga) + [k for k in gb if k not in ga]:
        x, y = ga.get(k), gb.get(k)
        rows.append([k, _s(x), _s(y), f"{y / x:.2f}" if x and y is not None else "-"])
    ta, tb = a["total_s"], b["total_s"]
    rows.append(["total (dvc repro)", _s(ta), _s(tb), f"{tb / ta:.2f}" if ta else "-"])
    print_table(["stage", names[0], names[1], f"{names[1]} / {names[0]}"], rows)
    return rows


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s" if x < 120 else f"{x:.0f} s ({x / 60:.1f} min)"


def _record(tag: str, log: Path, extra: dict) -> dict:
    res = {"tag": tag, "machine": machine(), **extra, **parse(log.read_text())}
    path = write_json(f"pipeline_{tag}.json", res)
    print(f"wrote {path} ({res['total_s']:.0f} s)")
    return res


def _overrides(params: Path, sets: list[str]) -> None:
    import yaml

    raw = yaml.safe_load(params.read_text())
    for s in sets:
        key, value = s.split("=", 1)
        node, *path = key.split(".")
        parent = raw
        for part in [node, *path][:-1]:
            parent = parent[part]
        parent[key.split(".")[-1]] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


def _checkout(rev: str | None, dest: Path) -> Path:
    """``rev`` (or the working tree, uncommitted changes included, when None) copied to ``dest``,
    with this checkout's Vega template for `dvc plots` (built by `make`, not in git) copied in."""
    if rev:
        subprocess.run(["git", "worktree", "add", "--detach", str(dest), rev], cwd=ROOT, check=True,
                       capture_output=True)
        _link_tools(dest)
        return dest
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"],
                   cwd=dest, check=True)
    _link_tools(dest)
    return dest


def _link_tools(dest: Path) -> None:
    vega = ROOT / ".dvc" / "vega"
    if vega.is_dir() and not (dest / ".dvc" / "vega").exists():
        shutil.copytree(vega, dest / ".dvc" / "vega")


def ab(baseline: str, sets: list[str], tag: str, step: bool = True, repeats: int = 10) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mambava-ab-"))
    results = {}
    try:
        for name, rev in (("before", baseline), ("after", None)):
            tree = _checkout(rev, tmp / name)
            _overrides(tree / "params.yaml", sets)
            log = RESULTS / f"pipeline_{tag}_{name}.log"
            env = {"PYTHONPATH": str(tree / "src")}
            print(f"{name}: {rev or 'working tree'} in {tree}", flush=True)
            rc = stamped_run(["dvc", "repro"], tree, log, env)
            results[name] = _record(f"{tag}_{name}", log, {"revision": rev or "working tree", "overrides": sets,
                                                            "exit": rc})
            if rc:
                print(f"{name}: dvc repro failed (exit {rc}); see {log}")
                return rc
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "before")], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    compare(results["before"], results["after"])
    if not step:
        return 0
    print("\nthe training step per variant, before and now (bench_temporal.py --parts)", flush=True)
    return step_ratio(baseline, tag, repeats)


def step_ratio(baseline: str, tag: str, repeats: int = 10) -> int:
    """``bench_temporal.py --parts --baseline REV``: each variant's step in REV and the working tree, and the ratio."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_temporal.py")), "--parts", "--baseline", baseline,
           "--repeats", str(repeats), "--tag", tag]
    return subprocess.run(cmd, cwd=ROOT).returncode


def cores(cpu_sets: list[str], sets: list[str], targets: list[str], tag: str) -> int:
    results = {}
    for cpus in cpu_sets:
        tmp = Path(tempfile.mkdtemp(prefix="mambava-cores-"))
        try:
            tree = _checkout(None, tmp / "tree")
            _overrides(tree / "params.yaml", sets)
            name = f"{tag}_cpus{cpus.replace(',', '-')}"
            log = RESULTS / f"pipeline_{name}.log"
            print(f"taskset -c {cpus}: dvc repro {' '.join(targets)} in {tree}", flush=True)
            rc = stamped_run(["taskset", "-c", cpus, "dvc", "repro", *targets], tree, log,
                             {"PYTHONPATH": str(tree / "src")})
            results[cpus] = _record(name, log, {"revision": f"{_head()} + working tree", "overrides": sets,
                                                "cpus": cpus, "targets": targets, "exit": rc})
            if rc:
                print(f"dvc repro failed (exit {rc}); see {log}")
                return rc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    first, *rest = cpu_sets
    for other in rest:
        compare(results[first], results[other], (f"cpus {first}", f"cpus {other}"))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="dvc repro here, stamped")
    r.add_argument("--tag", default="now")
    r.add_argument("dvc_args", nargs="*", help="more arguments for dvc repro (e.g. --force)")
    p = sub.add_parser("parse", help="a stamped log of an earlier run")
    p.add_argument("log")
    p.add_argument("--tag", required=True)
    c = sub.add_parser("compare", help="two recorded runs (tags or JSON paths)")
    c.add_argument("a")
    c.add_argument("b")
    x = sub.add_parser("ab", help="the baseline revision and the working tree, from scratch, one after the other")
    x.add_argument("--baseline", required=True)
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override for both")
    x.add_argument("--tag", default="ab")
    x.add_argument("--no-step", action="store_true", help="leave out the training step per variant")
    x.add_argument("--repeats", type=int, default=10, help="training steps timed per variant (after 2 untimed)")
    k = sub.add_parser("cores", help="the working tree's dvc repro TARGETS under taskset, once per CPU set")
    k.add_argument("--cpus", action="append", required=True, help="a taskset CPU list, e.g. 0 or 0,1 (repeat)")
    k.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    k.add_argument("--targets", nargs="+", default=["features", "train@oracle-mamba_va"])
    k.add_argument("--tag", default="cores")
    args = ap.parse_args()
    if args.cmd == "cores":
        return cores(args.cpus, args.set, args.targets, args.tag)
    if args.cmd == "run":
        log = RESULTS / f"pipeline_{args.tag}.log"
        rc = stamped_run(["dvc", "repro", *args.dvc_args], ROOT, log)
        _record(args.tag, log, {"revision": _head(), "exit": rc})
        if rc:
            print(f"dvc repro failed (exit {rc}); see {log}")
        return rc
    if args.cmd == "parse":
        _record(args.tag, Path(args.log), {"log": args.log})
        return 0
    if args.cmd == "compare":
        compare(_load(args.a), _load(args.b), (args.a, args.b))
        return 0
    return ab(args.baseline, args.set, args.tag, not args.no_step, args.repeats)


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
