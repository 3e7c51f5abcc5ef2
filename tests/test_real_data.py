"""The real-data path rehearsed end to end (issue 24): a user's copy of Aff-Wild2
(`mambava data user-copy`: the official layout, no test labels, no truth, a real copy's quirks),
a tiny DVC project built from the repository's whole dvc.yaml (every stage, the notebooks and the
book) with the default profile's encoder (the shipped ResNet checkpoint) and tiny sizes, and only
the README's keys changed (`data.source`, `data.root`, `data.test_labels`); then `dvc repro`.

Checked: the twin-only parts are skipped with one line each, Table 2 says that the test labels
are not public and the ABAW submission has the official format (checked here against the copy's
own test list and frames), no page shows NaN, an empty table or figure, or a traceback,
`mambava book check` passes, and `dvc status` is clean afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _dvc_project import BIN, default_encoder_params, dvc, env, make_project, tiny_params
from mambava import book
from mambava.config_sections import SyntheticConfig
from mambava.data.usercopy import write_user_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the fixture runs the whole pipeline
VARIANTS = ("mamba_va", "no_mamba", "frame")
README_KEYS = {"data.source", "data.root", "data.test_labels"}


def twin_params() -> dict:
    raw = default_encoder_params(tiny_params())
    raw["variants"] = list(VARIANTS)
    return raw


def real_params(copy: Path) -> dict:
    raw = twin_params()
    raw["data"].update(source="affwild2", root=str(copy), test_labels=None)
    return raw


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def repro(root: Path) -> subprocess.CompletedProcess:
    """`dvc repro` with the stages' output in order (stderr into stdout)."""
    return subprocess.run([str(BIN / "dvc"), "repro"], cwd=root, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    copy = tmp / "copy"  # outside the project, as a user's copy is
    write_user_copy(SyntheticConfig.model_validate(twin_params()["data"]["synthetic"]), copy)
    root = make_project(tmp / "p", None, VARIANTS, params=real_params(copy), levels=("mae", "oracle"), book=True)
    t0 = time.perf_counter()
    r = repro(root)
    print(f"\ndvc repro on the user's copy: {time.perf_counter() - t0:.0f} s")
    (tmp / "repro.log").write_text(r.stdout)
    assert r.returncode == 0, r.stdout[-6000:]
    return root, copy, r.stdout


def test_only_the_readme_keys_differ_from_the_twin(tmp_path):
    twin, real = _flat(twin_params()), _flat(real_params(tmp_path / "copy"))
    assert {k for k in twin if twin[k] != real[k]} == README_KEYS and twin.keys() == real.keys()
    assert real["data.test_labels"] is None and real["data.source"] == "affwild2"


def _stage_logs(out: str) -> dict[str, str]:
    parts = re.split(r"^Running stage '([^']+)':$", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_twin_only_parts_are_skipped_with_one_line_each(project):
    _, _, out = project
    logs = _stage_logs(out)
    assert {"data", "book", "notebook_table2", "ladder", "leakage"} <= set(logs)
    skips = {name: [ln for ln in text.splitlines() if "skipped:" in ln] for name, text in logs.items()}
    skips = {k: v for k, v in skips.items() if v}
    want = {"face_probe": 1, "oracle_features": 1, "ladder": 2,
            **{f"{s}@oracle-{v}": 1 for s in ("train", "evaluate") for v in VARIANTS}}
    assert {k: len(v) for k, v in skips.items()} == want, skips
    lines = [ln for v in skips.values() for ln in v]
    assert all(("ground truth" in ln or "drawn parameters" in ln or "not public" in ln) for ln in lines), lines
    # ipykernel's own chatter when papermill stops a kernel (not the notebook's): the TCP warning and,
    # depending on timing, "KeyboardInterrupt caught in kernel" logged at ERROR level
    quiet = re.sub(r"^\[IPKernelApp\] (?:WARNING|ERROR) \| (?:Kernel is running over TCP|KeyboardInterrupt caught in kernel).*$",
                   "", out, flags=re.MULTILINE)
    m = re.search(r"Traceback|ERROR", quiet)
    assert not m, quiet[max(0, m.start() - 800):m.end() + 300] if m else ""


def test_table2_says_the_labels_are_not_public_and_the_submission_is_abaws(project):
    root, copy, _ = project
    text = (root / "book/notebooks/table2.ipynb").read_text()
    assert "its test labels are not public" in text and "format OK" in text
    test = root / "outputs/runs/mae/mamba_va/fold0/test"
    assert not {"ccc_valence", "ccc_arousal", "p_va"} & set(json.loads((test / "metrics.json").read_text()))
    # the official format, from the copy itself: the organisers' list (CRLF), every frame of each
    # video up to its last crop on disk, in the list's order
    videos = (copy / "test_set_release.txt").read_bytes().decode().split()
    n = {v: max(int(p.stem) for p in (copy / "cropped_aligned" / v).glob("*.jpg")) for v in videos}
    lines = (test / "submission.txt").read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal"
    want = [f"{v}/{i:05d}.jpg" for v in videos for i in range(1, n[v] + 1)]
    assert [ln.split(",")[0] for ln in lines[1:]] == want
    for ln in lines[1:]:
        v, a = map(float, ln.split(",")[1:])
        assert -1 <= v <= 1 and -1 <= a <= 1


def test_pages_show_what_exists(project):
    root, _, _ = project
    pages = sorted((root / "book/notebooks").glob("*.ipynb"))
    assert {p.stem for p in pages} == set(book.PAGES)
    problems = [p for nb in pages for p in book.notebook_problems(nb)]
    assert problems == []
    lad = (root / "outputs/ladder/ladder.csv").read_text()
    assert "test," not in lad and "nan" not in lad.lower() and "oracle" not in lad
    assert "The test labels are not public" in (root / "book/notebooks/ladder.ipynb").read_text()


def test_book_check_passes_and_dvc_status_is_clean(project):
    root, _, _ = project
    r = subprocess.run([str(BIN / "mambava"), "book", "check", "book/_build/html"], cwd=root, env=env(),
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
    status = dvc(root, "status").stdout
    assert "up to date" in status, status
    assert yaml.safe_load((root / "params.yaml").read_text())["data"]["test_labels"] is None
