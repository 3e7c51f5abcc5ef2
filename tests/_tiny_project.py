"""A tiny, self-contained mambava project for stage-level tests: features, labels, index and folds
written directly (no images, no encoder), a params.yaml of a small model and short training, and
a dvc.yaml whose `train` stage is the repository's (one entry per variant and fold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mambava.data.affwild2 import write_annotation, write_index
from mambava.data.windows import make_folds, write_folds

DIM = 8
SPLITS = ["train"] * 6 + ["validation"] * 2 + ["test"]


def params(**train) -> dict:
    return {
        "device": "cpu",
        "data": {"index": "data/index.csv"},
        "features": {"dir": "data/features"},
        "mae_pretrain": {"encoder": {"embed_dim": DIM, "num_heads": 2}},  # = model.input_dim (checked)
        "folds": {"file": "data/folds.csv", "n_splits": 2},
        "model": {"input_dim": DIM, "tcn_channels": [8, 8], "tcn_kernel": 3, "d_model": 8, "n_layers": 1,
                  "d_state": 4, "n_heads": 2, "head_hidden": 8, "dropout": 0.0},
        "train": {"seed": 0, "epochs": 3, "warmup_epochs": 1, "restart_epochs": 2, "batch_size": 5, "lr": 1e-2,
                  "window": 32, "stride": 32, "window_fold0": 48, "stride_fold0": 48, "evals_per_epoch": 2,
                  "threads": 1, "out": "runs", "seeds": 1, "workers": 1, **train},
        "evaluate": {"n_boot": 0},
    }


def make_project(root: Path, seed: int = 0, **train) -> Path:
    """Write the data and params.yaml under ``root`` (paths inside are relative to it)."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(DIM, 2))
    rows = []
    for i, split in enumerate(SPLITS):
        name = f"vid{i}"
        n = int(rng.integers(70, 160))
        f = rng.normal(size=(n, DIM)).astype(np.float32)
        z = np.stack([np.convolve((f @ proj)[:, j], np.ones(3) / 2, "full")[:n] for j in range(2)], 1)
        y = np.tanh(0.5 * z).astype(np.float32)
        feats = root / "data" / "features"
        feats.mkdir(parents=True, exist_ok=True)
        np.save(feats / f"{name}.npy", f.astype(np.float16))
        np.save(feats / f"{name}.mask.npy", np.ones(n, bool))
        ann = ""
        if split != "test":
            ann = f"data/annotations/{name}.txt"
            write_annotation(root / ann, y)
        rows.append({"video": name, "split": split, "n_frames": n, "n_frames_on_disk": n,
                     "n_annotated": n if ann else 0, "path": "", "annotation": ann})
    index = pd.DataFrame(rows)
    write_index(index, root / "data" / "index.csv")
    write_folds(make_folds(index, n_splits=2, seed=0), root / "data" / "folds.csv")
    (root / "params.yaml").write_text(yaml.safe_dump(params(**train), sort_keys=False))
    return root


DVC_YAML = """\
stages:
  train:
    matrix:
      variant: [mamba_va, no_mamba]
      fold: [0, 1]
    cmd: mambava train --no-progress --variant ${item.variant} --fold ${item.fold}
    deps:
      - data
    params:
      - device
      - model
      - train
    outs:
      - runs/mae/${item.variant}/fold${item.fold}/seed${train.seed}/best.pt
    metrics:
      - runs/mae/${item.variant}/fold${item.fold}/seed${train.seed}/train_metrics.json
"""
