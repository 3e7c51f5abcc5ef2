"""The model of ``mambava predict``: the fine-tuned encoder and the temporal model, with the
settings they were used with (from a pipeline run, or from a bundle: :mod:`mambava.export`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mambava.errors import UserError


@dataclass
class Predictor:
    """Everything prediction needs: encoder, temporal model and the settings they were used with."""

    encoder: nn.Module
    model: nn.Module
    encoder_cfg: object  # mambava.config.EncoderConfig (img_size, mean, std, ...)
    crop: object  # mambava.config.CropConfig
    inference: str = "whole"
    window: int = 500
    stride: int = 500
    batch_size: int = 256  # the features stage's batch: same batches, same numbers
    device: torch.device = torch.device("cpu")
    source: str = ""

    def features(self, folder: str | Path, n_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, dim) float16, face mask (n,)) of a cropped folder, by the features stage's
        own function; ``n_frames`` defaults to the highest frame number on disk."""
        from mambava.features.extract import extract_features
        from mambava.features.store import load_features
        from mambava.features.frames import frames_on_disk

        folder = Path(folder)
        on_disk = frames_on_disk(folder)
        if n_frames is None:
            if len(on_disk) == 0:
                raise UserError(f"{folder}: no face crops (00001.jpg ...) in this folder")
            n_frames = int(on_disk.max())
        index = pd.DataFrame({"video": ["v"], "n_frames": [int(n_frames)], "path": [str(folder)]})
        e = self.encoder_cfg
        with tempfile.TemporaryDirectory(prefix="mambava-predict-") as tmp:
            extract_features(index, self.encoder, tmp, e.img_size, e.mean, e.std, batch_size=self.batch_size,
                             num_workers=0, device=self.device, precision="fp32", fingerprint=None, progress=False)
            feats, mask = load_features(tmp, "v", mmap=False)
        return feats, mask

    def temporal(self, features: np.ndarray) -> np.ndarray:
        """(n, 2) float32 valence/arousal of every row (the evaluate stage's inference)."""
        from mambava.inference import predict_video

        self.model.eval()
        return predict_video(self.model, features, self.device, self.inference, self.window, self.stride)

    def predict_folder(self, folder: str | Path, n_frames: int | None = None) -> pd.DataFrame:
        """frame, valence, arousal (NaN where the folder has no crop) of a cropped folder."""
        feats, mask = self.features(folder, n_frames)
        out = self.temporal(feats).astype(np.float64)
        out[~mask] = np.nan
        return pd.DataFrame({"frame": np.arange(1, len(out) + 1), "valence": out[:, 0], "arousal": out[:, 1]})


def from_run(cfg, variant: str, fold: int) -> Predictor:
    """The Predictor of a pipeline run: ``mae_finetune.out``'s encoder and the run's best.pt."""
    from mambava.features.mae import EncoderSpec, load_encoder
    from mambava.runtime import load_best, resolve_device, train_dir

    device = resolve_device(cfg.device)
    ckpt = Path(cfg.mae_finetune.out) / "checkpoint.pt"
    if not ckpt.exists():
        raise UserError(f"{ckpt}: no fine-tuned encoder (run `dvc repro mae_finetune`, or use --model DIR)")
    best = train_dir(cfg, "mae", variant, fold, cfg.train.seed) / "best.pt"
    if not best.exists():
        raise UserError(f"{best}: no trained model (run `dvc repro train@mae-{variant}`, or use --model DIR)")
    enc_cfg = cfg.mae_pretrain.encoder
    encoder = load_encoder(EncoderSpec.from_config(enc_cfg), ckpt).to(device).eval()
    model, _ = load_best(best, device)
    check_widths(encoder, model, enc_cfg, str(best))
    e = cfg.evaluate
    return Predictor(encoder, model, enc_cfg, cfg.crop, e.inference, e.window, e.stride, cfg.features.batch_size,
                     device, f"{best}")


def check_widths(encoder, model, enc_cfg, where: str) -> None:
    dim = int(getattr(encoder, "embed_dim", enc_cfg.embed_dim))
    want = int(model.cfg.input_dim)
    if dim != want:
        raise UserError(f"{where}: the encoder gives {dim}-d features but the temporal model reads {want}-d "
                        "(encoder and temporal model do not belong together)")
