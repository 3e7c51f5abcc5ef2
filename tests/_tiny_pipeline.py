"""A tiny but real pipeline in a folder: twin data (48x48 crops), a small random 'fine-tuned'
encoder, features, folds, a tiny MambaVA trained for one epoch and evaluated, all through the
stages' own functions. For the tests of predict, export and streaming."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from mambava.config import load_config


def build(root: Path, variant: str = "mamba_va", train: bool = True):
    from mambava.data.prepare import prepare
    from mambava.data.windows import run_folds
    from mambava.features import extract
    from mambava.features.mae import EncoderSpec, build_encoder, save_checkpoint

    enc = {"img_size": 48, "patch_size": 16, "embed_dim": 24, "depth": 1, "num_heads": 2}
    params = {
        "device": "cpu",
        "data": {"root": str(root / "twin" / "affwild2"), "test_labels": str(root / "twin" / "test_labels"),
                 "index": str(root / "index.csv"),
                 "synthetic": {"n_videos": 5, "n_pairs": 0, "min_frames": 40, "max_frames": 70, "image_size": 48,
                               "missing_rate": 0.05, "missing_runs_per_1k": 2.0, "workers": 1}},
        "model": {"input_dim": 24, "tcn_channels": [8, 8], "tcn_kernel": 3, "d_model": 8, "n_layers": 2,
                  "d_state": 4, "head_hidden": 8, "dropout": 0.1},
        "mae_pretrain": {"encoder": enc, "out": str(root / "pretrain")},
        "mae_finetune": {"out": str(root / "finetune")},
        "features": {"dir": str(root / "features"), "batch_size": 16, "num_workers": 0},
        "folds": {"file": str(root / "folds.csv"), "n_splits": 2},
        "train": {"out": str(root / "runs"), "epochs": 1, "warmup_epochs": 0, "restart_epochs": 1, "batch_size": 4,
                  "window": 32, "stride": 32, "window_fold0": 32, "stride_fold0": 32, "evals_per_epoch": 1,
                  "seeds": 1},
        "evaluate": {"n_boot": 0, "sweep": [16], "out": str(root / "eval")},
        "crop": {"size": 48},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = load_config(path)
    prepare(cfg)
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec(**{k: v for k, v in enc.items()}))
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(encoder.state_dict(), root / "finetune" / "checkpoint.pt")
    extract.run(cfg)
    run_folds(cfg)
    if train:
        from mambava import evaluate
        from mambava import train_runs as train_stage

        train_stage.run(cfg, variant, 0, progress=False)
        evaluate.run(cfg, variant, 0)
    return cfg
