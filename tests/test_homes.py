"""One home for each shared thing: the run-time layer below the stages, one registry of variants,
one atomic writer, one run discovery, the stage modules' size, and the paper's numbers only."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mambava"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (``from a import b`` gives a and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


# --------------------------------------------------------------------------- the run-time layer
STAGES = {"mambava.train", "mambava.train_runs", "mambava.evaluate", "mambava.predict", "mambava.ladder",
          "mambava.plots", "mambava.export", "mambava.leakage", "mambava.cli"}


@pytest.mark.parametrize("module", ["evaluate", "predict", "plots", "ladder", "export", "inference", "report",
                                    "results", "tables", "book_data", "runtime"])
def test_evaluation_side_does_not_import_training(module):
    """Nothing on the evaluation side imports the training modules, not even inside a function."""
    path = SRC / f"{module}.py"
    files = [path] if path.exists() else sorted((SRC / module).rglob("*.py"))  # a module or a package
    assert files, module
    for f in files:
        found = _imports(f) & {"mambava.train", "mambava.train_runs"}
        assert not found, f"{f.relative_to(SRC)} imports {found}"


def test_runtime_imports_no_stage():
    assert not _imports(SRC / "runtime.py") & STAGES


def test_importing_evaluate_does_not_load_train():
    code = "import sys, mambava.evaluate, mambava.predict, mambava.report; print(sorted(m for m in sys.modules if m.startswith('mambava.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    assert out.strip() == "[]"


def test_train_code_digest_covers_the_training_modules():
    """The run's code digest: the training modules for every variant, of the model files only those
    the variant runs (a Transformer edit retrains the Transformer only)."""
    from mambava import train_runs
    from mambava.config import ModelConfig
    from mambava.models import variant_config

    digests = {v: set(train_runs.code_digest(variant_config(ModelConfig(), v))) for v in
               ("mamba_va", "transformer", "frame", "no_tcn")}
    for keys in digests.values():
        for f in ("mambava/train.py", "mambava/train_runs.py", "mambava/runtime.py", "mambava/inference.py",
                  "mambava/metrics.py", "data/windows.py", "models/mamba_va.py", "models/__init__.py"):
            assert f in keys, f
    assert {"models/mamba.py", "models/ssm.py", "models/tcn.py"} <= digests["mamba_va"]
    assert "models/transformer.py" not in digests["mamba_va"]
    assert "models/transformer.py" in digests["transformer"] and "models/mamba.py" not in digests["transformer"]
    assert not {"models/tcn.py", "models/mamba.py", "models/transformer.py"} & digests["frame"]
    assert "models/tcn.py" not in digests["no_tcn"] and "models/ssm.py" in digests["no_tcn"]


def test_checkpoint_round_trip(tmp_path):
    """save_checkpoint writes the bytes torch.save writes to ``<name>.tmp`` (torch names the archive
    inside after the file, so this is what every earlier checkpoint holds); load_best rebuilds the
    model from a weights_only load."""
    from mambava.config import ModelConfig
    from mambava.models import build_model, variant_config
    from mambava.runtime import load_best, save_checkpoint

    cfg = variant_config(ModelConfig(input_dim=6, tcn_channels=[4], tcn_kernel=3, d_model=4, n_layers=1, d_state=2,
                                     head_hidden=4), "mamba_va")
    torch.manual_seed(0)
    model = build_model(cfg)
    ck = {"model": model.state_dict(), "model_cfg": cfg.model_dump(), "step": 3}
    save_checkpoint(ck, tmp_path / "best.pt")
    (tmp_path / "ref").mkdir()
    torch.save(ck, tmp_path / "ref" / "best.pt.tmp")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "ref" / "best.pt.tmp").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    loaded, rest = load_best(tmp_path / "best.pt")
    assert rest["step"] == 3 and "model" not in rest
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_best(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- one registry of variants
def test_one_registry_of_variants(repo):
    from mambava import config, models, report, variants

    assert config.VARIANTS is variants.VARIANTS and models.VARIANTS is variants.VARIANTS
    assert report.VARIANTS is variants.VARIANTS
    assert set(models.VARIANT_LABELS) == set(models.VARIANTS)
    assert report.VARIANT_LABELS is models.VARIANT_LABELS
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert set(params["variants"]) <= set(models.VARIANTS)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        assert stages[name]["matrix"]["variant"] == "${variants}"  # dvc.yaml reads params.yaml's list
    # the list is written once: no other source file has a list or tuple literal of the variants
    for path in SRC.rglob("*.py"):
        if path == SRC / "variants.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert not {"no_tcn", "no_mamba", "transformer"} <= names, f"{path}:{node.lineno}"


def test_shared_constants_have_one_definition():
    defs: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name):
                    defs.setdefault(t.id, []).append(str(path.relative_to(SRC)))
            if isinstance(node, ast.FunctionDef):
                defs.setdefault(node.name + "()", []).append(str(path.relative_to(SRC)))
    for name in ("UNLABELLED", "VARIANTS", "VARIANT_LABELS", "PRED_COLUMNS", "LEVELS", "resolve_device()",
                 "run_dir()", "build_model()", "discover_runs()", "set_threads()", "load_best()", "parallel_map()"):
        assert len(defs.get(name, [])) == 1, f"{name}: defined in {defs.get(name)}"
    assert "COST_KEYS" not in defs  # two different lists had this name: now COST_COLUMNS and TRAIN_KEYS_COPIED


# --------------------------------------------------------------------------- one atomic writer
# Every file is written through mambava.io, the streaming writers of predict (rows and frames
# written as they come) through io.temporary / io.publish.


def test_files_are_renamed_into_place_only_by_mambava_io():
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        if rel == "io.py":
            continue
        calls = sum(1 for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("replace", "rename") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "os")
        assert calls == 0, f"{rel}: {calls} os.replace/os.rename"


def test_atomic_writers_write_the_same_bytes(tmp_path):
    import pandas as pd

    from mambava import io

    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    io.write_npy(tmp_path / "a.npy", a)
    np.save(tmp_path / "ref.npy", a)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    df = pd.DataFrame({"x": [0.1234567, 2.0], "v": ["a", "b"]})
    io.write_csv(df, tmp_path / "t.csv", float_format="%.6f")
    assert (tmp_path / "t.csv").read_text() == "x,v\n0.123457,a\n2.000000,b\n"
    io.write_json(tmp_path / "j.json", {"b": 1})
    assert (tmp_path / "j.json").read_text() == '{\n  "b": 1\n}\n'
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_failed_write_leaves_the_old_file(tmp_path):
    from mambava import io

    target = tmp_path / "out.txt"
    io.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and not list(tmp_path.glob("*.tmp"))


def test_feature_write_killed_before_the_rename_leaves_only_a_tmp(tmp_path):
    """The features stage's kill hook (save_array(kill=True)): the process dies between the write
    and the rename, so the array is absent and its .tmp is what the next run deletes."""
    code = ("import numpy as np, sys; from pathlib import Path; from mambava.features.store import save_array; "
            "save_array(Path(sys.argv[1]), np.ones((3, 2), np.float16), kill=True)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v.npy")], env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "v.npy").exists() and (tmp_path / "v.npy.tmp").exists()


# --------------------------------------------------------------------------- one run discovery
def test_plots_and_report_discover_the_same_runs(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from _fake_runs import make_runs

    from mambava import plots, report

    runs = make_runs(tmp_path, folds=range(2), videos_per_fold=2, frames=(60, 80))
    found = report.discover_runs(runs)
    assert [(r.variant, r.fold, Path(r.path)) for r in found.itertuples()] == plots.find_runs(runs)
    order = list(dict.fromkeys(found.variant))
    assert order == [v for v in report.VARIANTS if v in order]
    assert plots.find_runs(tmp_path / "none") == []


# --------------------------------------------------------------------------- sizes and citations
STAGE_MODULES = ["train.py", "train_runs.py", "evaluate.py", "report.py", "features/extract.py",
                 "data/synthetic.py", "data/affwild2.py"]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_stage_modules_stay_small(module):
    n = len((SRC / module).read_text().splitlines())
    assert n <= 330, f"{module}: {n} lines"


def test_only_the_papers_numbers_are_cited(repo):
    ref = yaml.safe_load((SRC / "paper_results.yaml").read_text())
    assert set(ref) == {"paper", "table1", "table2", "affwild2"}
    files = [*SRC.rglob("*.py"), *SRC.rglob("*.yaml"), *(repo / "notebooks").glob("*.ipynb"),
             *(repo / "book").glob("*.md"), *(repo / "docs").rglob("*.md"), repo / "README.md"]
    for path in files:
        assert not re.search(r"light\s*-?mamba", path.read_text(), re.I), path
    json.dumps(ref)  # plain data
