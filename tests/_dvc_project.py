"""A tiny DVC project in a temporary folder, built from the repository's own ``dvc.yaml``.

The stages keep their commands, params, outs, metrics and plots exactly as the repository
declares them (so a change there is tested here); only the matrices shrink to the variants and
folds asked for, the dependencies on ``src/`` and ``notebooks/`` are left out (the code is the
installed package), and params.yaml shrinks every size so a stage runs in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_params(repo: Path = REPO) -> dict:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"]["synthetic"].update(n_videos=8, n_pairs=1, min_frames=60, max_frames=140, image_size=32,
                                    workers=1, split_fractions=[0.5, 0.25, 0.25])
    # a tiny ViT pretrained by MAE here (the default's shipped face encoder is a 192-d ResNet)
    enc = dict(arch="vit", img_size=32, patch_size=8, embed_dim=12, depth=1, num_heads=2, pool_rows=1)
    raw["mae_pretrain"]["encoder"].update(enc)
    raw["mae_pretrain"].update(checkpoint=None, checkpoint_sha256=None)
    raw["mae_pretrain"].update(steps=4, batch_size=8, warmup_steps=1, decoder_dim=8, decoder_depth=1,
                               decoder_heads=2, n_reconstructions=2, num_workers=0)
    raw["mae_finetune"].update(freeze_blocks=0, steps=4, batch_size=8, warmup_steps=1, num_workers=0)
    raw["features"].update(batch_size=64, num_workers=0)
    raw["model"].update(input_dim=12, tcn_channels=[8, 8], tcn_kernel=3, d_model=8, n_layers=1, d_state=4,
                        head_hidden=8, n_heads=2, scan_backend="numba")
    raw["folds"]["n_splits"] = 2
    raw["train"].update(epochs=2, warmup_epochs=1, restart_epochs=1, batch_size=4, window=32, stride=32,
                        window_fold0=48, stride_fold0=48, evals_per_epoch=2, lr=1e-2, seeds=1, workers=1)
    raw["model"]["attention_window"] = 32
    raw["evaluate"].update(n_boot=20, sweep=[16, 64])
    return raw


def default_encoder_params(raw: dict, repo: Path = REPO) -> dict:
    """``raw`` (tiny_params) with the default profile's face encoder back: the shipped 192-d ResNet
    checkpoint (checkpoints/, copied by make_project(book=True)), as a user's run has it."""
    top = yaml.safe_load((repo / "params.yaml").read_text())
    for key in ("encoder", "checkpoint", "checkpoint_sha256", "steps"):
        raw["mae_pretrain"][key] = top["mae_pretrain"][key]
    raw["mae_finetune"]["freeze_blocks"] = top["mae_finetune"]["freeze_blocks"]
    raw["model"]["input_dim"] = top["model"]["input_dim"]
    return raw


def _reduce_matrix(stage: dict, variants: list[str], folds: list[int], levels=("mae",)) -> dict:
    stage = dict(stage)
    if "matrix" in stage:  # (level, variant) stages train every fold of the folds file
        stage["matrix"] = {"level": list(levels), "variant": list(variants)}
    stage["deps"] = [d for d in stage.get("deps", []) if not str(d).startswith(("src/", "notebooks/", "benchmarks/"))]
    return stage


def make_project(root: Path, stages: list[str] | None, variants=("mamba_va",), folds=(0,), params: dict | None = None,
                 git: bool = False, levels=("mae",), book: bool = False) -> Path:
    """Write params.yaml and a dvc.yaml with ``stages`` of the repository's pipeline (None: every
    stage) and its top-level metrics and plots (those of the variants asked for), the matrices
    over ``levels``; with ``book`` also what the notebook and book stages read (the notebooks, the
    book's sources, benchmarks/results, checkpoints/); dvc init (in a new git repository with
    ``git``, as `dvc exp` needs)."""
    root.mkdir(parents=True, exist_ok=True)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = list(pipeline["stages"]) if stages is None else stages
    out = {"metrics": pipeline.get("metrics", []), "plots": [_reduce_plot(p, variants) for p in pipeline.get("plots", [])],
           "stages": {name: _reduce_matrix(pipeline["stages"][name], list(variants), list(folds), levels)
                      for name in stages}}
    if book:
        for d in ("notebooks", "benchmarks/results", "checkpoints", "book/_static"):
            shutil.copytree(REPO / d, root / d)
        for f in ("_config.yml", "_toc.yml", "intro.md"):
            shutil.copy(REPO / "book" / f, root / "book" / f)
        (root / "book" / "notebooks").mkdir()  # papermill does not create its output folder
    (root / "dvc.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    if git:  # the repository's .gitignore: data and outputs stay out of git, the metrics files go in
        shutil.copy(REPO / ".gitignore", root / ".gitignore")
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "config", "user.email", "test@example.org"], cwd=root, check=True)
        subprocess.run(["git", "config", "user.name", "test"], cwd=root, check=True)
        dvc(root, "init", "-q")
    else:
        dvc(root, "init", "--no-scm", "-q")
    dvc(root, "config", "core.analytics", "false")
    if git:  # DVCLive needs a commit to read (it stops on an empty repository)
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", "project"], cwd=root, check=True)
    return root


def _reduce_plot(plot, variants) -> dict | str:
    """A top-level plot with its files of other variants left out."""
    if not isinstance(plot, dict):
        return plot
    (name, props), = plot.items()
    if isinstance((props or {}).get("y"), dict):
        keep = {f: c for f, c in props["y"].items() if any(f"/{v}/" in f for v in variants)}
        props = {**props, "y": keep}
    return {name: props}


def env() -> dict:
    """The environment of a stage: this interpreter's bin first (mambava, dvc), one thread."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    e["PYTHONHASHSEED"] = "0"
    e["DVC_NO_ANALYTICS"] = "1"
    src = str(REPO / "src")
    e["PYTHONPATH"] = src + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "dvc"), *args], cwd=root, env=env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def popen_dvc(root: Path, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
    """``dvc`` in its own process group (so a SIGKILL of the group takes the stage with it)."""
    return subprocess.Popen([str(BIN / "dvc"), *args], cwd=root, env={**env(), **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
