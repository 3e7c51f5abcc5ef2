"""benchmarks/compare_runs.py: two runs compared when one has only the metrics git tracks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, ladder: dict, runs: dict, csv: bool) -> None:
    (root / "outputs/ladder").mkdir(parents=True)
    (root / "outputs/runs/oracle").mkdir(parents=True)
    (root / "outputs/ladder/ladder.json").write_text(json.dumps(ladder))
    (root / "outputs/runs/oracle/frame.json").write_text(json.dumps(runs))
    if csv:
        (root / "outputs/ladder/ladder.csv").write_text(
            "split,level,variant,target,ccc,seed_sd,lo,hi\n"
            + "".join(f"{k.replace('/', ',')},{v},0.01,{v - 0.02},{v + 0.02}\n" for k, v in ladder.items()))
    (root / "dvc.lock").write_text(yaml.safe_dump({"stages": {"ladder": {"outs": [{"path": "x", "md5": "1"}]}}}))


def test_a_committed_run_is_compared_by_its_ladder_means(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, {"test/oracle/frame/valence": 0.70, "test/oracle/frame/arousal": 0.40},
         {"fold0/seed42/test/ccc_valence": 0.71}, csv=False)
    _run(b, {"test/oracle/frame/valence": 0.75, "test/oracle/frame/arousal": 0.40},
         {"fold0/seed42/test/ccc_valence": 0.68}, csv=True)
    out = tmp_path / "drift.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/compare_runs.py"), str(a), str(b), "--out", str(out)],
                   check=True, capture_output=True)
    d = json.loads(out.read_text())
    diffs = {(r["target"]): round(r["diff"], 6) for r in d["ladder"]}
    assert diffs == {"valence": 0.05, "arousal": 0.0}
    assert round(d["ladder_max_abs_diff"]["oracle"], 6) == 0.05
    assert "ladder_max_diff_over_seed_sd" not in d  # no spreads in a committed run's ladder.json
    assert round(d["per_run"][0]["max"], 6) == 0.03


def test_two_full_runs_keep_the_seed_spread(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, {"test/oracle/frame/valence": 0.70}, {"fold0/seed42/test/ccc_valence": 0.71}, csv=True)
    _run(b, {"test/oracle/frame/valence": 0.72}, {"fold0/seed42/test/ccc_valence": 0.71}, csv=True)
    out = tmp_path / "drift.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/compare_runs.py"), str(a), str(b), "--out", str(out)],
                   check=True, capture_output=True)
    d = json.loads(out.read_text())
    assert abs(d["ladder_max_diff_over_seed_sd"] - 2.0) < 1e-9  # 0.02 / 0.01
    assert d["per_run"][0]["identical"] == 1.0
