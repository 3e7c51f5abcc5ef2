"""The paper profile's code path on a CPU (issue 24): `profile: paper` with the data and the
schedule shrunk by an overlay (a user's copy of 8 short videos, 2 fine-tuning steps, 1 epoch, 2
CV folds, 1 seed) but the paper's architecture: ViT-L/16 at 224 px loaded from a checkpoint in
facebookresearch/mae's key layout (written here with random weights: the key names and shapes of
`mae_pretrain_vit_large.pth` are spelt out below, not taken from our code or timm), 16 of 24
blocks frozen, TCN 1024-768-512-256 with kernel 15, 4 Mamba layers of d_model 256, the authors'
windows (300/200, fold 0 1000/800) and inference (500/500 windows); `dvc repro` of the whole
pipeline, notebooks and book included. A checkpoint with a key renamed is refused first, in
seconds, with one line naming the key. Slow: several minutes on 2 cores."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _dvc_project import BIN, REPO, dvc, env, make_project
from mambava import book
from mambava.config_sections import SyntheticConfig
from mambava.data.usercopy import write_user_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the fixture runs the whole pipeline
VARIANTS = ("mamba_va", "frame")
PAPER_N_PARAMS = 67_155_086  # the authors' model with 1024-d features (params.yaml, profiles.paper.model)
CHECKPOINT = "models/mae_pretrain_vit_large.pth"  # where profiles.paper.mae_pretrain.checkpoint points


def mae_vit_large_layout(depth: int = 24, dim: int = 1024, mlp: int = 4096, patch: int = 16, grid: int = 14) -> dict:
    """Key -> shape of facebookresearch/mae's ViT-L/16 encoder checkpoint (``{"model": ...}``)."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim),
            "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
            "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                     b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                     b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                     b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                     b + "mlp.fc1.weight": (mlp, dim), b + "mlp.fc1.bias": (mlp,),
                     b + "mlp.fc2.weight": (dim, mlp), b + "mlp.fc2.bias": (dim,)})
    return keys


def write_random_checkpoint(path: Path, rename: tuple[str, str] | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in mae_vit_large_layout().items():
        state[k] = torch.ones(shape) if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else \
            torch.randn(shape, generator=gen) * 0.02
    if rename:
        state[rename[1]] = state.pop(rename[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return state


def paper_params() -> dict:
    """The repository's params.yaml with profile: paper and only data and schedule shrunk."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "paper"
    raw["data"]["root"] = "data/affwild2"  # dvc.yaml's paths read the top level (docs/real-data.md)
    raw["variants"] = list(VARIANTS)
    raw["data"]["synthetic"].update(n_videos=8, n_pairs=1, min_frames=16, max_frames=32, workers=1,
                                    split_fractions=[0.5, 0.25, 0.25])  # for the copy only (source: affwild2)
    raw["folds"]["n_splits"] = 2
    raw["train"].update(seeds=1, workers=1)
    raw["mae_pretrain"]["n_reconstructions"] = 2
    raw["mae_finetune"]["val_max_frames"] = 8
    raw["book"]["n_boot"] = 50
    paper = raw["profiles"]["paper"]
    paper["mae_pretrain"]["num_workers"] = 0
    paper["mae_finetune"].update(steps=2, batch_size=4, warmup_steps=1, num_workers=0)
    paper["features"].update(batch_size=8, num_workers=0)
    paper["train"].update(epochs=1, warmup_epochs=0, restart_epochs=1, evals_per_epoch=1)
    paper["evaluate"]["n_boot"] = 50
    return raw


def repro(root: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), "repro", *targets], cwd=root, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    raw = paper_params()
    root = make_project(tmp / "p", None, VARIANTS, params=raw, levels=("mae", "oracle"), book=True)
    write_user_copy(SyntheticConfig.model_validate(raw["data"]["synthetic"]), root / "data/affwild2")
    # a checkpoint with one key renamed is refused before any work, with one line naming it
    write_random_checkpoint(root / CHECKPOINT, rename=("blocks.3.attn.qkv.weight", "blocks.3.attn.qkv.w"))
    t0 = time.perf_counter()
    bad = repro(root, "mae_pretrain")
    bad_seconds = time.perf_counter() - t0
    state = write_random_checkpoint(root / CHECKPOINT)
    t0 = time.perf_counter()
    r = repro(root)
    seconds = time.perf_counter() - t0
    print(f"\npaper profile on the CPU: broken checkpoint refused in {bad_seconds:.0f} s; dvc repro {seconds:.0f} s")
    (tmp / "repro.log").write_text(r.stdout)
    assert r.returncode == 0, r.stdout[-6000:]
    return root, state, bad, r.stdout


def test_a_checkpoint_with_a_renamed_key_is_refused_in_one_line(project):
    _, _, bad, _ = project
    assert bad.returncode != 0
    errors = [ln for ln in bad.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "blocks.3.attn.qkv.w" in errors[0] and CHECKPOINT in errors[0], bad.stdout[-3000:]
    assert "Traceback" not in bad.stdout


def test_the_encoder_is_vit_large_from_the_checkpoint_with_16_blocks_frozen(project):
    root, state, _, _ = project
    fine = torch.load(root / "outputs/mae_finetune/checkpoint.pt", map_location="cpu", weights_only=True)
    assert fine["spec"]["arch"] == "vit" and fine["spec"]["img_size"] == 224 and fine["spec"]["depth"] == 24
    assert fine["freeze_blocks"] == 16
    model = fine["model"]
    assert {k for k in model if not k.startswith("va_head.")} == set(state)
    frozen = [k for k in state if not re.match(r"blocks\.(1[6-9]|2[0-3])\.|norm\.", k)]
    for k in frozen:  # patch embedding, tokens and blocks 0-15: the checkpoint's values, untouched
        assert torch.equal(model[k], state[k]), k
    moved = [k for k in state if k.startswith("blocks.23.")]
    assert any(not torch.equal(model[k], state[k]) for k in moved)  # the last blocks were fine-tuned
    metrics = json.loads((root / "outputs/mae_finetune/metrics.json").read_text())
    assert metrics["freeze_blocks"] == 16 and metrics["depth"] == 24
    feats = sorted((root / "outputs/features").glob("*.npy"))
    x = np.load(next(p for p in feats if not p.name.endswith(".mask.npy")))
    assert x.shape[1] == 1024 and np.isfinite(x).all()


def test_the_temporal_model_is_the_papers(project):
    root, _, _, _ = project
    runs = root / "outputs/models/mae/mamba_va"
    m0 = json.loads((runs / "fold0/seed42/train_metrics.json").read_text())
    m1 = json.loads((runs / "fold1/seed42/train_metrics.json").read_text())
    assert m0["n_params"] == PAPER_N_PARAMS
    assert (m0["window"], m0["stride"], m1["window"], m1["stride"]) == (1000, 800, 300, 200)
    if not torch.cuda.is_available():  # on a GPU (docs/gpu.md) the same test runs with CUDA
        assert m0["scan_backend"].startswith("numba") and m0["device"] == "cpu"
    else:
        assert m0["device"] != "cpu"
    ev = json.loads((root / "outputs/runs/mae/mamba_va/fold0/metrics.json").read_text())
    assert (ev["inference"], ev["window"]) == ("windows", 500)


def test_the_book_is_built_and_clean(project):
    root, _, _, out = project
    pages = sorted((root / "book/notebooks").glob("*.ipynb"))
    assert {p.stem for p in pages} == set(book.PAGES)
    assert [p for nb in pages for p in book.notebook_problems(nb)] == []
    r = subprocess.run([str(BIN / "mambava"), "book", "check", "book/_build/html"], cwd=root, env=env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "up to date" in dvc(root, "status").stdout
    assert "Traceback" not in out
