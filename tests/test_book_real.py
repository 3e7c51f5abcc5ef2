"""The book's pages with real Aff-Wild2 (no test labels, no twin truth: no oracle rung, no label
ceiling), on small fake outputs in that shape: the ladder falls back to the validation folds, and
the Ladder, Ablations and Table 2 pages show what exists, with no NaN, no empty table, no empty
figure and no traceback. (The whole pipeline on a user's copy: tests/test_real_data.py, slow.)"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mambava import book

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from _fake_runs import make_ladder, make_models, make_params, make_runs

    out = tmp_path_factory.mktemp("real")
    runs = make_runs(out, folds=range(2), videos_per_fold=3, frames=(120, 250), real=True)
    make_ladder(out, runs, n_boot=20)
    make_models(out, levels=("mae",), epochs=3, steps_per_epoch=2, seeds=(42, 43))
    p = make_params(out, REPO / "params.yaml")
    raw = yaml.safe_load(p.read_text())
    raw["data"].update(source="affwild2", test_labels=None)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _orange(png: bytes) -> int:
    """Pixels of the face-encoder bars' colour (#dd8452)."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(a - [0xDD, 0x84, 0x52]).max(axis=2) < 12).sum())


def test_ladder_without_test_labels_is_on_the_validation_folds(real):
    table = pd.read_csv(real / "ladder" / "ladder.csv")
    assert set(table.split) == {"validation"} and set(table.level) == {"mae"}
    assert table[["ccc", "lo", "hi"]].notna().all().all()
    comp = pd.read_csv(real / "ladder" / "comparisons.csv")
    assert len(comp) and comp[["diff", "lo", "hi"]].notna().all().all()
    assert _orange((real / "ladder" / "ladder.png").read_bytes()) > 500  # the bars are drawn
    # what the stage did before: the test split scored without labels gives NaN rows
    from mambava.ladder import SPLITS, build

    runs = real / "runs"
    fvids = {k: sorted(pd.read_csv(runs / "mamba_va" / f"fold{k}" / "predictions.csv").video.unique()) for k in (0, 1)}
    test = sorted(pd.read_csv(runs / "mamba_va" / "fold0" / "test" / "predictions.csv").video.unique())
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both, _ = build({"mae": runs}, ["mamba_va"], [0, 1], fvids, test, None, 10, 0, splits=SPLITS)
    assert both[both.split == "test"].ccc.isna().all()


def _cell_with_outputs(outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = outputs
    return cell


def _png(coloured: bool) -> str:
    img = np.full((40, 60, 3), 255, np.uint8)
    img[10:30, 10:50] = (200, 80, 40) if coloured else (90, 90, 90)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_notebook_problems_finds_what_a_page_must_not_show(tmp_path):
    out = nbformat.v4.new_output
    good = [out("display_data", data={"text/html": "<table><tr><td>0.5</td></tr></table>", "text/plain": "0.5"}),
            out("display_data", data={"image/png": _png(True), "text/plain": "<Figure>"}),
            out("stream", text="Nancy's finance: 3 videos\n")]
    bad = [out("error", ename="KeyError", evalue="'x'", traceback=["Traceback"]),
           out("display_data", data={"text/html": "<table><tr><td>NaN</td></tr></table>"}),
           out("execute_result", data={"text/plain": "ccc nan"}, execution_count=1),
           out("display_data", data={"text/html": "<table><thead><tr><th>a</th></tr></thead></table>"}),
           out("display_data", data={"image/png": _png(False)})]
    nb = nbformat.v4.new_notebook(cells=[_cell_with_outputs(good)])
    nbformat.write(nb, tmp_path / "good.ipynb")
    assert book.notebook_problems(tmp_path / "good.ipynb") == []
    nb.cells = [_cell_with_outputs([o]) for o in bad]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    got = book.notebook_problems(tmp_path / "bad.ipynb")
    assert [re.sub(r"^bad.ipynb: cell \d: ", "", p) for p in got] == [
        "error output KeyError", "NaN in the output", "NaN in the output", "a table without data cells",
        "a figure with nothing coloured drawn"]


def _papermill(name: str, dst: Path, **params) -> Path:
    cmd = [str(BIN / "papermill"), str(REPO / "notebooks" / f"{name}.ipynb"), str(dst), "-k", "mambava", "--cwd",
           str(REPO), "--no-progress-bar", "--log-level", "WARNING"]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return dst


def _text(path: Path) -> str:
    nb = json.loads(path.read_text())
    return " ".join(str(o.get("data", o.get("text", ""))) for c in nb["cells"] for o in c.get("outputs", []))


def test_pages_on_real_data_show_what_exists(real, tmp_path):
    pages = {
        "ladder": dict(params_file=real / "params.yaml", ladder_dir=real / "ladder"),
        "ablations": dict(runs=real / "runs", models=real / "models", ladder_dir=real / "ladder", n_boot=20),
        "table2": dict(params_file=real / "params.yaml", runs=real / "runs", ladder_dir=real / "ladder", n_boot=20),
    }
    done = {name: _papermill(name, tmp_path / f"{name}.ipynb", **p) for name, p in pages.items()}
    for name, path in done.items():
        assert book.notebook_problems(path) == [], name
    assert "The test labels are not public" in _text(done["ladder"])
    assert "only the face-encoder rung is shown" in _text(done["ladder"])
    assert "The test labels are not public" in _text(done["ablations"])
    assert "only the face-encoder runs are shown" in _text(done["ablations"])
    t2 = _text(done["table2"])
    assert "its test labels are not public" in t2 and "format OK" in t2
    assert book.pages_for("affwild2")["ladder"]["tables"] < book.pages_for("synthetic")["ladder"]["tables"]
