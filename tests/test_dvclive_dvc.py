"""DVC reads DVCLive's logs directly: in a tiny project built from the repository's dvc.yaml
(tests/_dvc_project.py, in a git repository), `dvc exp run -S train.lr=0.003` trains with another
learning rate; `dvc exp show`, `dvc metrics diff` and `dvc plots diff` then report the values in
the run's DVCLive files, and `dvc plots show` with the repository's offline template writes a page
that loads no script from the network."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _dvc_project import REPO, dvc, make_project

pytestmark = pytest.mark.slow
RUN = Path("outputs/models/mae/mamba_va/fold0/seed42")
LIVE = RUN / "dvclive"
SUMMARY = (LIVE / "metrics.json").as_posix()  # DVCLive's summary of the primary run, in the run folder
METRICS = "outputs/models/mae/mamba_va.json"  # the train stage's metrics (cache: false, in git), which carry it


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The baseline committed (train.lr = 0.01), then the experiment with train.lr = 0.003 run."""
    root = make_project(tmp_path_factory.mktemp("live") / "p",
                        ["data", "frames", "mae_pretrain", "mae_finetune", "features", "folds", "oracle_features", "train"],
                        git=True)
    dvc(root, "repro")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    dvc(root, "exp", "run", "-S", "train.lr=0.003", "-n", "lr0003")
    return root


def _live_bytes(root: Path) -> dict:
    return {p.relative_to(root / LIVE).as_posix(): p.read_bytes() for p in (root / LIVE).rglob("*") if p.is_file()}


def _rows(node):
    """Every (name, data) of `dvc exp show --json`, whatever the nesting."""
    if isinstance(node, dict):
        if "data" in node and isinstance(node["data"], dict) and "params" in node["data"]:
            yield node.get("name") or node.get("rev"), node["data"]
        for v in node.values():
            yield from _rows(v)
    elif isinstance(node, list):
        for v in node:
            yield from _rows(v)


def test_exp_show_and_metrics_diff_read_dvclive_summary(project):
    root = project
    live = json.loads((root / SUMMARY).read_text())  # the experiment's DVCLive summary
    rows = dict(_rows(json.loads(dvc(root, "exp", "show", "--json").stdout)))
    exp = rows["lr0003"]
    assert exp["params"]["params.yaml"]["data"]["train"]["lr"] == 0.003
    assert exp["metrics"][METRICS]["data"]["dvclive"] == live
    assert live["best"]["step"] >= 1 and set(live["val"]) == {"ccc_valence", "ccc_arousal", "p_va"}
    baseline = rows["master"]["metrics"][METRICS]["data"]["dvclive"]  # the committed run, from git
    diff = json.loads(dvc(root, "metrics", "diff", "HEAD", "--json").stdout)[METRICS]  # HEAD -> workspace
    for key in ("best.p_va", "val.ccc_arousal", "train.lr", "train.loss"):
        group, name = key.split(".")
        got = diff[f"dvclive.{key}"]
        assert got["old"] == baseline[group][name] and got["new"] == live[group][name], key
    assert diff["dvclive.train.lr"]["old"] > diff["dvclive.train.lr"]["new"]  # lr 0.01 -> 0.003, same point of the schedule


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix[:-1]


def test_fresh_clone_metrics_diff_shows_the_committed_run_beside_the_new_one(project, tmp_path):
    """As a newcomer: a fresh clone (no DVC cache, no remote), the pipeline run, then `dvc metrics
    diff`: every metric of every stage has HEAD's value beside the workspace's. The metrics files
    are committed to git (`cache: false`, .gitignore lets them in); were they DVC-cached, HEAD's
    column would be empty ("DVC failed to load some metrics for following revisions: 'HEAD'")."""
    root = project
    committed = git(root, "ls-files").split()
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    declared = [next(iter(m)) if isinstance(m, dict) else m for st in pipeline["stages"].values()
                for m in st.get("metrics", [])]
    assert declared and all(any(c.startswith(d.split("$")[0]) for c in committed) for d in declared), committed
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    assert not (clone / ".dvc" / "cache").exists()
    dvc(clone, "repro")
    out = dvc(clone, "metrics", "diff", "HEAD", "--all", "--json")
    assert "failed to load" not in out.stderr, out.stderr
    diff = json.loads(out.stdout)
    files = [f for f in committed if f.endswith(".json") and f.startswith(("outputs/", "data/"))]
    assert sorted(diff) == sorted(files)
    for f in files:
        keys = set(_leaves(json.loads((clone / f).read_text())))
        assert keys and keys <= set(diff[f]), (f, keys - set(diff[f]))
        for key in keys:
            assert diff[f][key]["old"] is not None and diff[f][key]["new"] is not None, (f, key)
    # the run is deterministic on a CPU: the clone's run has the committed DVCLive summary
    assert all(v["old"] == v["new"] for k, v in diff[METRICS].items() if k.startswith("dvclive.")), diff[METRICS]


def test_plots_diff_reads_dvclive_curves(project):
    """The lr curves of both revisions are the schedule of each lr (linear warm-up over the first
    epoch, then a cosine to min_lr over each restart period), computed here."""
    root = project
    params = yaml.safe_load((root / "params.yaml").read_text())["train"]
    spe = json.loads((root / SUMMARY).read_text())["steps_per_epoch"]
    warm, period = params["warmup_epochs"] * spe, params["restart_epochs"] * spe

    def schedule(lr, i):
        if i < warm:
            return lr * (i + 1) / warm
        t = (i - warm) % period
        return params["min_lr"] + (lr - params["min_lr"]) * (1 + math.cos(math.pi * t / period)) / 2

    lr_file = (LIVE / "plots" / "metrics" / "train" / "lr.tsv").as_posix()
    out = json.loads(dvc(root, "plots", "diff", "HEAD", "--json").stdout)["data"]
    (plot,) = out[lr_file]  # one plot of the file: DVC's definition of the DVCLive folder (x: step)
    assert set(plot["revisions"]) == {"HEAD", "workspace"}
    by_rev: dict[str, list] = {}
    for p in plot["content"]["data"]["values"]:
        by_rev.setdefault(p["rev"], []).append((int(p["step"]), float(p["lr"])))
    assert set(by_rev) == {"HEAD", "workspace"}
    for rev, lr in (("HEAD", 0.01), ("workspace", 0.003)):
        got = sorted(set(by_rev[rev]))
        assert [s for s, _ in got] == list(range(1, len(got) + 1))
        assert [v for _, v in got] == pytest.approx([schedule(lr, s - 1) for s, _ in got], rel=1e-9)
    # the workspace's curve is the file on disk
    disk = pd.read_csv(root / lr_file, sep="\t")
    assert sorted(set(by_rev["workspace"])) == list(zip(disk.step, disk.lr))


def test_plots_show_with_offline_template_loads_no_remote_script(project):
    import re

    root = project
    template = REPO / ".dvc" / "vega" / "template.html"
    assert template.exists(), f"{template}: `make install` writes it"
    dvc(root, "config", "plots.html_template", str(template))
    dvc(root, "plots", "show", "-o", "html")
    page = (root / "html" / "index.html").read_text()
    assert "vegaEmbed('#" in page and "train/lr" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", page, re.I)


def test_forced_rerun_writes_the_same_dvclive_bytes(project):
    """The run folder deleted and the stage forced (persist: a finished run would be kept): the
    run trains again and writes the same DVCLive bytes; dvc.lock does not change."""
    import shutil

    root = project
    before, lock = _live_bytes(root), (root / "dvc.lock").read_text()
    shutil.rmtree(root / RUN)
    dvc(root, "repro", "--force", "--single-item", "train@mae-mamba_va")
    assert _live_bytes(root) == before and len(before) == 7
    assert (root / "dvc.lock").read_text() == lock
