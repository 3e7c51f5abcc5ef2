"""mambava.report against independent computations (audmetric's CCC, scipy's binomial test, the
twin's own generator) on small fake pipeline outputs."""

from __future__ import annotations

import json
import math
import os

import audmetric
import numpy as np
import pandas as pd
import pytest
import yaml

from mambava import report
from _fake_runs import make_bench, make_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("fake"), folds=range(3), videos_per_fold=3, frames=(120, 300))


def _audmetric_ccc(pred, true):
    keep = true != -5
    return audmetric.concordance_cc(true[keep], pred[keep])


def test_paper_reference_is_consistent():
    t1, t2 = report.paper_table1(), report.paper_table2()
    assert list(t1.index) == [0, 1, 2, 3, 4, 5, "baseline"]
    # the paper's "average" column is the mean of valence and arousal, to its rounding
    assert np.allclose((t1.valence + t1.arousal) / 2, t1.average, atol=6e-5)
    assert np.allclose((t2.valence + t2.arousal) / 2, t2.average, atol=6e-4)
    assert t1.loc[0, "valence"] == 0.5454 and t2.method.iloc[0] == "USTC-IAT-United"


def test_scores_and_per_video_match_audmetric(runs):
    pred = report.load_predictions(report.run_dir(runs, "mamba_va", 1))
    s = report.scores(pred, n_boot=50, seed=1)
    for dim in ("valence", "arousal"):
        ref = _audmetric_ccc(pred[dim].to_numpy(), pred[f"{dim}_true"].to_numpy())
        assert s[f"ccc_{dim}"] == pytest.approx(ref, abs=1e-9)
        assert s[f"ccc_{dim}_lo"] <= s[f"ccc_{dim}"] <= s[f"ccc_{dim}_hi"]
    pv = report.per_video_ccc(pred)
    for r in pv.itertuples():
        g = pred[pred.video == r.video]
        assert r.ccc_arousal == pytest.approx(_audmetric_ccc(g.arousal.to_numpy(), g.arousal_true.to_numpy()), abs=1e-9)
        assert r.p_va == pytest.approx((r.ccc_valence + r.ccc_arousal) / 2)


def test_fold_scores_recompute_the_reported_metrics(runs):
    fs = report.fold_scores(runs, "no_tcn")
    assert list(fs.fold) == [0, 1, 2]
    assert np.allclose(fs.p_va, fs.reported_p_va, atol=1e-9)


def test_paired_bootstrap(runs):
    a = report.load_predictions(report.run_dir(runs, "no_tcn", 0))
    b = report.load_predictions(report.run_dir(runs, "mamba_va", 0))
    d = report.paired_bootstrap(a, b, n_boot=100, seed=3)
    sa, sb = report.scores(a), report.scores(b)
    for k in report.METRICS:
        diff, lo, hi = d[k]
        assert diff == pytest.approx(sa[k] - sb[k], abs=1e-12)
        assert lo <= hi
    assert d == report.paired_bootstrap(a, b, n_boot=100, seed=3)  # seeded
    same = report.paired_bootstrap(b, b, n_boot=20)
    assert all(same[k] == (0.0, 0.0, 0.0) for k in report.METRICS) and same["p_better"] == 0.0
    with pytest.raises(ValueError, match="different frames"):
        report.paired_bootstrap(a.iloc[:-1], b)
    # a slow reference: the same video draws (default_rng(seed), sorted videos), both models scored
    # on the pooled frames of the drawn videos by audmetric's CCC, percentile bounds
    videos = sorted(set(a.video))
    m = a.merge(b, on=["video", "frame"], suffixes=("_a", "_b"))
    rows = {v: np.flatnonzero(m.video.to_numpy() == v) for v in videos}
    draw = np.random.default_rng(3)
    reps = []
    for _ in range(100):
        idx = np.concatenate([rows[videos[i]] for i in draw.integers(0, len(videos), size=len(videos))])
        r = m.iloc[idx]
        c = []
        for t in ("valence", "arousal"):
            k = r[f"{t}_true_a"].to_numpy() != -5
            c.append(audmetric.concordance_cc(r[f"{t}_true_a"].to_numpy()[k], r[f"{t}_a"].to_numpy()[k])
                     - audmetric.concordance_cc(r[f"{t}_true_a"].to_numpy()[k], r[f"{t}_b"].to_numpy()[k]))
        reps.append([c[0], c[1], (c[0] + c[1]) / 2])
    reps = np.array(reps)
    lo, hi = np.quantile(reps, [0.025, 0.975], axis=0)
    for j, k in enumerate(report.METRICS):
        assert d[k][1:] == pytest.approx((lo[j], hi[j]), abs=1e-9)
    assert d["p_better"] == pytest.approx(np.mean(reps[:, 2] > 0))
    pv = report.paired_video_differences(a, b)
    ref = report.per_video_ccc(a).p_va.to_numpy() - report.per_video_ccc(b).p_va.to_numpy()
    assert np.allclose(pv.d_p_va, ref)


@pytest.mark.parametrize("diffs", [[1, 2, -1, 3, 0.5, 2, -0.1, 4], [-1] * 7 + [1], [0.3], [1, -1] * 5,
                                   [2, 0, np.nan, -1, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
def test_sign_test_is_the_exact_binomial_sum(diffs):
    """Oracle: 2 * sum_{i <= min(k, n-k)} C(n, i) / 2^n, capped at 1 (zeros and NaN dropped)."""
    d = np.array(diffs, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    n, k = len(d), int((d > 0).sum())
    want = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n)
    assert report.sign_test(diffs) == pytest.approx(want, rel=1e-12)
    assert report.sign_test([]) == 1.0


def test_table1_puts_ours_beside_the_papers(runs):
    ours = report.fold_scores(runs, "mamba_va", n_boot=30)
    t = report.table1(ours)
    assert list(t.index) == ["Fold 0", "Fold 1", "Fold 2", "Mean ± sd (folds)", "Baseline (organisers)"]
    assert t.loc["Fold 1", ("Valence", "paper")] == "0.5423"
    r = ours.set_index("fold").loc[2]
    assert t.loc["Fold 2", ("Average", "ours")] == f"{r.p_va:.3f} [{r.p_va_lo:.3f}, {r.p_va_hi:.3f}]"
    assert t.loc["Baseline (organisers)", ("Arousal", "paper")] == "0.2000"
    # the paper's mean over the same folds only
    assert t.loc["Mean ± sd (folds)", ("Average", "paper")].startswith(f"{np.mean([0.4651, 0.4517, 0.4836]):.4f}")


def test_table2_ranks_our_row():
    ours = {"ccc_valence": 0.55, "ccc_arousal": 0.5, "p_va": 0.525, "p_va_lo": 0.4, "p_va_hi": 0.6}
    t = report.table2(ours, label="us")
    assert len(t) == 9 and t.loc[4, "Method"] == "us"  # between CtyunAI (0.578) and HSEmotion (0.522)
    assert t.loc[4, "Average"] == "0.525 [0.400, 0.600]" and t.loc[4, "source"] == "this pipeline"
    assert t.loc[1, "Average"] == "0.600"


def test_ablation_table(runs):
    per_fold = pd.concat([report.fold_scores(runs, v, n_boot=20).assign(variant=v) for v in report.VARIANTS])
    costs = report.cost_columns(report.load_metrics(runs))
    t = report.ablation_table(per_fold, costs)
    assert list(t.index) == [report.VARIANT_LABELS[v] for v in report.VARIANTS]
    row = t.loc[report.VARIANT_LABELS["transformer"]]
    assert row["Parameters"] == "150,000" and row["s / epoch"] == "5.50" and row["folds"] == 3
    f = per_fold[per_fold.variant == "transformer"].p_va
    assert row["Average (mean ± sd)"] == f"{f.mean():.3f} ± {f.std(ddof=1):.3f}"


def test_pick_videos():
    pv = pd.DataFrame({"video": list("abcde"), "p_va": [0.5, 0.1, 0.9, 0.3, 0.7]})
    assert report.pick_videos(pv) == {"best": "c", "median": "a", "worst": "b"}


def test_window_sweep_and_benchmarks(runs, tmp_path):
    sw = report.load_window_sweep(runs, "mamba_va")
    assert sw.whole.sum() == 3 and np.isinf(sw[sw.whole].window_frames).all()
    b = report.benchmark_records(make_bench(tmp_path) / "bench_temporal.json")
    assert set(b.model) == {"mamba", "transformer"} and b.seq_len.max() == 100000


def test_mean_expression_matches_the_twin():
    from mambava.data.render import expression_track

    v, a = 0.5, -0.4
    n = 6000
    tr = expression_track(np.random.default_rng(0), np.tile([v, a], (n, 1)), fps=30.0)
    want = report.mean_expression(v, a)
    assert tr["mouth_curve"].mean() == pytest.approx(want["mouth_curve"], abs=0.05)
    assert tr["brow_tilt"].mean() == pytest.approx(want["brow_tilt"], abs=0.05)
    blink = np.convolve(tr["blink_onset"], np.ones(6))[:n] > 0
    assert tr["eye_open"][~blink].mean() == pytest.approx(want["eye_open"], abs=0.05)
    assert np.quantile(tr["mouth_open"], 0.2) == pytest.approx(want["mouth_open"], abs=0.05)  # at rest


def test_docstring_markdown():
    doc = "Title line.\n\nIntro with :mod:`x.y` and ``code``.\n\nSection\n-------\n**Bold** text.\n"
    md = report.docstring_markdown(doc)
    assert "Title line" not in md and "### Section" in md and "`x.y`" in md and "`code`" in md and ":mod:" not in md


def test_pipeline_stages_and_edges(repo):
    st = report.pipeline_stages(repo / "dvc.yaml", repo / "params.yaml")
    names = set(st.stage)
    assert {"data", "book", "notebook_table1"} <= names
    if "train" in set(st.base):  # levels x the variants listed in params.yaml
        assert (st.base == "train").sum() == 10 and "train@mae-mamba_va" in names and "train@oracle-frame" in names
    edges = report.pipeline_edges(st)
    assert ("data", "notebook_data") in edges and ("notebook_table1", "book") in edges


def test_pipeline_stages_are_what_dvc_lists(tmp_path):
    """A tiny project with ${...}, a matrix over a params list and a foreach, against the names
    `dvc stage list --all --name-only` prints and the paths written out by hand."""
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("variants: [a, b]\nout: res\nk: 3\n")
    stages = {
        "prep": {"cmd": "python prep.py --k ${k}", "deps": ["prep.py"], "params": ["k"], "outs": ["${out}/prep.csv"]},
        "fit": {"matrix": {"variant": "${variants}", "fold": [0, 1]},
                "cmd": ["python fit.py ${item.variant} ${item.fold}", "echo done"], "deps": ["${out}/prep.csv"],
                "outs": ["${out}/${item.variant}/${item.fold}"],
                "metrics": [{"${out}/${item.variant}-${item.fold}.json": {"cache": False}}]},
        "show": {"foreach": {"x": 1, "y": 2}, "do": {"cmd": "echo ${item}", "deps": ["${out}/a/0"],
                                                    "outs": ["show_${key}.txt"]}},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run([*dvc, "stage", "list", "--all", "--name-only"], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout.split()
    st = report.pipeline_stages(tmp_path / "dvc.yaml", tmp_path / "params.yaml")
    assert list(st.stage) == listed
    assert listed == ["prep", "fit@a-0", "fit@a-1", "fit@b-0", "fit@b-1", "show@x", "show@y"]
    row = st.set_index("stage")
    assert row.loc["prep", "cmd"] == "python prep.py --k 3" and row.loc["prep", "outs"] == ["res/prep.csv"]
    assert row.loc["fit@b-1", "cmd"] == "python fit.py b 1 && echo done"
    assert row.loc["fit@b-1", "outs"] == ["res/b/1", "res/b-1.json"] and row.loc["fit@b-1", "base"] == "fit"
    assert row.loc["show@y", "cmd"] == "echo 2" and row.loc["show@y", "deps"] == ["res/a/0"]
    assert report.pipeline_edges(st) == {("prep", "fit"), ("fit", "show")}
    with pytest.raises(ValueError, match="params.yaml"):
        report.pipeline_stages(tmp_path / "dvc.yaml", tmp_path / "other.yaml")


def test_dataset_table():
    idx = pd.DataFrame({"video": list("abc"), "split": ["train", "train", "test"], "n_frames": [10, 20, 30],
                        "n_frames_on_disk": [9, 20, 27], "n_annotated": [10, 18, 30]})
    t = report.dataset_table(idx)
    assert list(t.index) == ["train", "test", "total"]
    assert t.loc["total", "frames"] == 60 and t.loc["train", "faces %"] == pytest.approx(96.7)


def test_pipeline_graph_layers_and_reduction():
    """A diamond with a shortcut: a -> b -> d, a -> c -> d, a -> d. Written out by hand: the
    shortcut a -> d is implied by a path and is dropped; layers are longest-path depths."""
    st = pd.DataFrame({"stage": ["d", "c", "b", "a"], "base": ["d", "c", "b", "a"],
                       "deps": [["b.out", "c.out", "a.out"], ["a.out"], ["a.out/x"], []],
                       "outs": [["d.out"], ["c.out"], ["b.out"], ["a.out"]]})
    g = report.pipeline_graph(st)
    assert list(g.nodes) == ["a", "b", "c", "d"]
    assert [g.nodes[n]["layer"] for n in g.nodes] == [0, 1, 1, 2]
    assert list(g.edges) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    assert report.pipeline_layout(g) == {"a": (0.0, 0.0), "b": (-1.0, -1.0), "c": (1.0, -1.0), "d": (0.0, -2.0)}


def test_pipeline_graph_is_the_same_under_any_hash_seed(repo):
    """The Reproducibility page draws this graph: its node order (and so the figure's bytes) must
    not follow Python's string hashing, which changes from process to process."""
    import subprocess
    import sys

    code = ("import json, sys; from mambava import report; "
            "st = report.pipeline_stages(sys.argv[1], sys.argv[2]); g = report.pipeline_graph(st); "
            "print(json.dumps([list(g.nodes(data=True)), list(g.edges), list(report.pipeline_layout(g).items())]))")
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code, str(repo / "dvc.yaml"), str(repo / "params.yaml")],
                                env=env, check=True, capture_output=True, text=True).stdout)
    assert len(outs) == 1
    nodes, edges, pos = json.loads(outs.pop())
    assert nodes[0][0] == "data" and nodes[0][1]["layer"] == 0 and ["notebook_table1", "book"] in edges
    assert len({tuple(p) for _, p in pos}) == len(nodes)  # no two stages drawn on one spot
