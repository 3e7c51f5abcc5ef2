"""The book: source notebooks, metadata stripping, papermill parameters, the built HTML.

The fast tests execute one notebook on small fake outputs and build a one-page book from it;
the full book (every notebook) is a slow test. Screenshots (headless Chromium) are not a test:
`mambava book screenshots`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from mambava import book

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def papermill(src: Path, dst: Path, **params) -> Path:
    cmd = [str(BIN / "papermill"), str(src), str(dst), "-k", "mambava", "--cwd", str(REPO), "--no-progress-bar",
           "--log-level", "WARNING"]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return book.strip_notebook(dst)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    from _fake_runs import make_bench, make_ladder, make_models, make_params, make_runs

    out = tmp_path_factory.mktemp("fake")
    runs = make_runs(out, folds=range(2), videos_per_fold=3, frames=(120, 250))
    make_ladder(out, runs)
    make_models(out, epochs=4, steps_per_epoch=3)
    make_bench(out)
    make_params(out, REPO / "params.yaml")
    return out


# --------------------------------------------------------------------------- the sources
def test_every_book_page_has_a_source_notebook_and_a_stage():
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    pages = {c["file"].removeprefix("notebooks/") for part in toc["parts"] for c in part["chapters"]}
    assert pages == {p.stem for p in NOTEBOOKS} == set(book.PAGES)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in pages:
        st = stages[f"notebook_{name}"]
        assert f"notebooks/{name}.ipynb" in st["deps"] and st["outs"] == [f"book/notebooks/{name}.ipynb"]
        assert "papermill" in st["cmd"][0] and "-k mambava" in st["cmd"][0] and "book strip" in st["cmd"][1]
        assert f"book/notebooks/{name}.ipynb" in stages["book"]["deps"]


def test_each_page_shows_its_parameters_once():
    """The defaults cell (tag ``parameters``) is removed from the page (``remove-cell``); papermill's
    injected cell shows the values used, so every stage passes every parameter (``-p``)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert "remove-cell" in cell.metadata["tags"], path.name
        names = set(re.findall(r"^(\w+)\s*=", cell.source, re.M))
        passed = set(re.findall(r" -p (\w+) ", stages[f"notebook_{path.stem}"]["cmd"][0] + " "))
        assert names == passed, f"{path.name}: defaults not passed by its stage: {names - passed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pages_show_results_not_code(path):
    """Notebooks are thin: every code cell is folded away (``hide-input``) or removed, so a page
    reads as text, tables and figures with the code one click away."""
    nb = nbformat.read(path, as_version=4)
    shown = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and not {"hide-input", "remove-cell", "remove-input"} & set(c.metadata.get("tags", []))]
    assert shown == [], f"{path.name}: code cells {shown} are shown in full on the page"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_notebooks_are_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "mambava"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    for c in code:
        assert not c.outputs and c.execution_count is None, "commit notebooks without outputs"
        assert "matplotlib.use" not in c.source and "%matplotlib" not in c.source
    # the paper's numbers live only in src/mambava/paper_results.yaml
    text = path.read_text()
    for number in ("0.5454", "0.3848", "0.4651", "0.577", "0.458"):
        assert number not in text


# --------------------------------------------------------------------------- strip
def test_strip_notebook_removes_what_changes(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"start_time": "x", "end_time": "y", "duration": 1.0, "parameters": {"a": 1},
                                "environment_variables": {}, "version": "2.7.0", "input_path": "in.ipynb"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    c = nbformat.v4.new_code_cell("1 + 1", execution_count=7)
    c.metadata["execution"] = {"iopub.execute_input": "2025-01-01T00:00:00"}
    c.metadata["papermill"] = {"duration": 0.1, "status": "completed"}
    c.metadata["tags"] = ["keep-me"]
    c.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=7),
                 nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    inj = nbformat.v4.new_code_cell("a = 1", execution_count=3)
    inj.metadata["tags"] = ["injected-parameters"]
    inj["id"] = "6f1c2a9e"  # papermill's random id
    p = tmp_path / "x.ipynb"
    nbformat.write(nb.__class__(**{**nb, "cells": [inj, c]}), p)
    book.strip_notebook(p)
    first = p.read_text()
    # read back as plain JSON, independently of nbformat/nbstripout
    data = json.loads(first)
    assert data["metadata"]["papermill"] == {"parameters": {"a": 1}}
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    cells = data["cells"]
    assert [x["id"] for x in cells] == ["0", "1"]  # no random id left
    cell = cells[1]
    assert all(x["execution_count"] is None for x in cells)
    assert cell["outputs"][0]["execution_count"] is None
    assert "".join(cell["outputs"][0]["data"]["text/plain"]) == "2" and "hello" in "".join(cell["outputs"][1]["text"])  # kept
    assert "execution" not in cell["metadata"] and "papermill" not in cell["metadata"]
    assert cell["metadata"]["tags"] == ["keep-me"] and cells[0]["metadata"]["tags"] == ["injected-parameters"]
    book.strip_notebook(p)
    assert p.read_text() == first
    # a second execution with other timestamps and ids strips to the same bytes
    nb2 = json.loads(first)
    nb2["metadata"]["papermill"].update(start_time="z", duration=9.0)
    nb2["cells"][0]["id"] = "0b7d"
    nb2["cells"][1]["execution_count"] = 12
    q = tmp_path / "y.ipynb"
    q.write_text(json.dumps(nb2))
    book.strip_notebook(q)
    assert q.read_text() == first


# --------------------------------------------------------------------------- HTML check
def test_check_page_finds_problems(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"\x89PNG data")
    page = tmp_path / "p.html"
    page.write_text('<html><body><table></table><img src="ok.png"><img src="missing.png">'
                    '<script src="https://cdn.example/x.js"></script>'
                    '<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb">'
                    'Traceback (most recent call last)</div></div></body></html>')
    r = book.check_page(page)
    assert r.tables == 1 and len(r.images) == 2
    text = "\n".join(r.problems)
    assert "missing.png" in text and "ok.png" not in text
    assert "https://cdn.example/x.js" in text and "traceback" in text


# --------------------------------------------------------------------------- papermill + build
def test_papermill_parameter_changes_the_output(fake, tmp_path):
    src = REPO / "notebooks" / "ablations.ipynb"
    a = papermill(src, tmp_path / "a.ipynb", runs=fake / "runs", reference="mamba_va", n_boot=20, ladder_dir=fake / "ladder",
                  models=fake / "models")
    b = papermill(src, tmp_path / "b.ipynb", runs=fake / "runs", reference="no_tcn", n_boot=20, ladder_dir=fake / "ladder",
                  models=fake / "models")

    def html_outputs(path):
        nb = json.loads(path.read_text())
        return ["".join(o["data"].get("text/html", "")) for c in nb["cells"] if c["cell_type"] == "code"
                for o in c.get("outputs", []) if "data" in o]

    assert json.loads(a.read_text())["metadata"]["papermill"]["parameters"]["reference"] == "mamba_va"
    assert json.loads(b.read_text())["metadata"]["papermill"]["parameters"]["reference"] == "no_tcn"
    ha, hb = html_outputs(a), html_outputs(b)
    assert ha != hb
    # the paired differences are against the reference: mamba_va appears as a compared variant only in b
    paired_a = next(h for h in ha if "P(better)" in h)
    paired_b = next(h for h in hb if "P(better)" in h)
    assert "Mamba-VA (TCN + Mamba)" not in paired_a and "Mamba-VA (TCN + Mamba)" in paired_b
    # same inputs, same parameters: the same file (no timestamps, no execution counts)
    a2 = papermill(src, tmp_path / "a2.ipynb", runs=fake / "runs", reference="mamba_va", n_boot=20, ladder_dir=fake / "ladder",
                  models=fake / "models")
    assert a2.read_text() == a.read_text()


def _mini_book(root: Path, pages: list[str]) -> Path:
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "book" / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO / "book" / "_static", root / "_static", dirs_exist_ok=True)
    (root / "intro.md").write_text("# Mini book\n\nOne page.\n")
    toc = {"format": "jb-book", "root": "intro", "chapters": [{"file": f"notebooks/{p}"} for p in pages]}
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    return root


def _build(root: Path) -> Path:
    r = subprocess.run([str(BIN / "jupyter-book"), "build", "--all", str(root)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root / "_build" / "html"


def test_one_page_book_builds_offline_and_passes_the_check(fake, tmp_path):
    root = _mini_book(tmp_path / "book", ["table1"])
    papermill(REPO / "notebooks" / "table1.ipynb", root / "notebooks" / "table1.ipynb", runs=fake / "runs", n_boot=20,
              leakage=fake / "leakage.json")
    html = _build(root)
    assert book.check_book(html, pages={"table1": book.PAGES["table1"]}) == []
    page = (html / "notebooks" / "table1.html").read_text()
    assert "0.5454" in page  # the paper's number, from the reference file
    assert "Baseline (organisers)" in page
    # the parameters once: papermill's injected cell (the values used), not the defaults cell too
    text = re.sub(r"<[^>]+>", "", page)
    assert text.count("n_boot = 20") == 1 and "# Parameters" in text
    assert "protocol and folds settings" not in text and "n_boot = 1000" not in text  # the defaults cell
    # a broken page is caught: an image that does not resolve
    (html / "notebooks" / "table1.html").write_text(page.replace('src="../_images/', 'src="../_images/gone-'))
    assert any("does not resolve" in p for p in book.check_book(html, pages={"table1": book.PAGES["table1"]}))


@pytest.mark.slow
def test_full_book_from_fake_outputs(fake, tmp_path):
    """Every notebook but Data and Features (they need the data and feature stages) on fake runs."""
    pages = ["ladder", "table1", "table2", "ablations", "long_sequences", "predictions", "reproducibility"]
    root = _mini_book(tmp_path / "book", pages)
    params = {"table2": {"params_file": fake / "params.yaml", "ladder_dir": fake / "ladder"},
              "table1": {"leakage": fake / "leakage.json"},
              "ablations": {"ladder_dir": fake / "ladder", "models": fake / "models"},
              "ladder": {"ladder_dir": fake / "ladder"},
              "long_sequences": {"bench_file": fake / "bench" / "bench_temporal.json"},
              "reproducibility": {"params_file": REPO / "params.yaml", "dvc_yaml": REPO / "dvc.yaml"}}
    for p in pages:
        papermill(REPO / "notebooks" / f"{p}.ipynb", root / "notebooks" / f"{p}.ipynb", runs=fake / "runs",
                  n_boot=20, **params.get(p, {}))
    html = _build(root)
    want = {p: book.PAGES[p] for p in pages}
    # the fakes have no oracle rung (no twin truth): no shares table on the Ladder page
    want["ladder"] = {**want["ladder"], "tables": want["ladder"]["tables"] - 1}
    assert book.check_book(html, pages=want) == []
    assert [p for name in pages for p in book.notebook_problems(root / "notebooks" / f"{name}.ipynb")] == []


def test_papermill_output_folders_exist_in_a_fresh_clone(repo):
    """papermill does not create its output folder: every notebook stage's output folder must be
    in git (a fresh clone has no ignored folders), or `make repro` fails at the first notebook."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    tracked_dirs = {str(Path(f).parent) for f in tracked}
    outs = [o if isinstance(o, str) else next(iter(o)) for name, st in stages.items()
            if name.startswith("notebook_") for o in st.get("outs", [])]
    assert outs
    for out in outs:
        assert str(Path(out).parent) in tracked_dirs, f"{Path(out).parent} is not in git"
