"""Frame-level valence/arousal fine-tuning of the MAE encoder (the `mae_finetune` stage).

A linear head on the CLS token after the final norm predicts (valence, arousal) for one frame.
The patch embedding, the CLS token, the positional embedding and the first ``freeze_blocks``
transformer blocks are frozen (``requires_grad=False`` and left out of the optimiser), as the
paper says (16 of 24; the authors' misspelt flag froze nothing, so the number of frozen
parameters is written to the metrics where it can be seen). Loss: MSE (the authors) or
1 - CCC per dimension.

Writes to ``mae_finetune.out``:
    checkpoint.pt   {"model": encoder keys + va_head.*}: loads with mae.load_encoder
    metrics.json    frame-level validation CCC (no temporal model: the floor to beat)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from mambava.features.frames import FrameDataset, load_index, split_frames
from mambava.features.mae import EncoderSpec, load_encoder, save_checkpoint
from mambava.features.pretrain import checkpoint_file as pretrain_checkpoint
from mambava.schedules import param_groups, warmup_cosine
from mambava.io import write_json, write_timing
from mambava.runtime import resolve_device, resolve_workers

log = logging.getLogger(__name__)


def checkpoint_file(cfg) -> Path:
    return Path(cfg.mae_finetune.out) / "checkpoint.pt"


class FrameVA(nn.Module):
    """encoder (timm ViT, CLS after final norm) -> Linear(dim, 2): (B, 3, H, W) -> (B, 2)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.va_head = nn.Linear(encoder.embed_dim, 2)
        nn.init.zeros_(self.va_head.bias)
        nn.init.normal_(self.va_head.weight, std=0.01)

    def forward(self, x):
        return self.va_head(self.encoder(x))

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder keys at the top level (as fb/mae and timm), the head as ``va_head.*``."""
        sd = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        sd.update({f"va_head.{k}": v.detach().cpu() for k, v in self.va_head.state_dict().items()})
        return sd


def n_blocks(encoder: nn.Module) -> int:
    """The blocks ``freeze_blocks`` counts: a ViT's transformer blocks, a ResNet's stages."""
    if hasattr(encoder, "blocks"):
        return len(encoder.blocks)
    return sum(1 for name, _ in encoder.named_children() if name.startswith("layer"))


def freeze(encoder: nn.Module, k: int) -> list[str]:
    """Freeze the patch embedding, CLS token, positions and the first ``k`` blocks of a ViT (of a
    ResNet: the stem and the first ``k`` stages); return their names."""
    depth = n_blocks(encoder)
    if hasattr(encoder, "blocks"):
        prefixes = ("patch_embed.", "cls_token", "pos_embed") + tuple(f"blocks.{i}." for i in range(k))
    else:  # timm ResNet: conv1/bn1 (stem), layer1..layerN (stages)
        prefixes = ("conv1.", "bn1.") + tuple(f"layer{i + 1}." for i in range(k))
    if not 0 <= k <= depth:
        from mambava.checks import InputError

        raise InputError(f"mae_finetune.freeze_blocks = {k}, but the encoder has {depth} blocks")
    frozen = []
    for name, p in encoder.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def va_loss(kind: str, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(pred, true)
    if kind == "ccc":
        from mambava.metrics import ccc_loss

        return ccc_loss(pred, true)
    raise ValueError(f"unknown loss {kind!r} (mse | ccc)")


def train_steps(model: FrameVA, loader, steps: int, lr: float, weight_decay: float, warmup: int,
                loss_kind: str, device: torch.device, progress: bool = True) -> list[float]:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(param_groups(model.named_parameters(), weight_decay), lr=lr)
    sched = warmup_cosine(opt, warmup, steps - warmup, restarts=False)
    model.train()
    losses = []
    bar = tqdm(total=steps, desc="mae finetune", unit="step", disable=not progress)
    it = iter(loader)
    for step in range(steps):
        x, y = next(it)
        loss = va_loss(loss_kind, model(x.to(device, non_blocking=True)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    bar.close()
    return losses


@torch.inference_mode()
def predict(model: FrameVA, loader, device: torch.device, progress: bool = True) -> np.ndarray:
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for x, _ in tqdm(loader, desc="validation", unit="batch", disable=not progress):
        out.append(model(x.to(device)).float().cpu().numpy())
    return np.clip(np.concatenate(out), -1, 1)


def within_video(labels: np.ndarray, video_of: np.ndarray) -> np.ndarray:
    """Each video's labels minus that video's mean label: (N, 2) -> (N, 2).

    With a few dozen people, a frame regressor learns who is in the frame and predicts that
    person's average mood: identity explains a large share of the labels and is easy to see. The
    within-video targets leave identity nothing to explain, so the gradient only rewards what
    changes within a video: the expression. A smile still maps to positive valence (the slope is
    the same), so the features keep the absolute reading a temporal model needs."""
    out = np.asarray(labels, dtype=np.float32).copy()
    for k in np.unique(video_of):
        sel = video_of == k
        out[sel] -= out[sel].mean(axis=0)
    return out


def fine_tune_videos(cfg) -> list[str]:
    """The videos whose labels fine-tune the encoder: the ``encoder`` column of the folds file
    (protocol clean: a seeded part of the official training videos that never validate; protocol
    paper: every official training video)."""
    from mambava.data.windows import read_folds

    folds = read_folds(cfg.folds.file)
    return list(folds.loc[folds["encoder"].astype(bool), "video"])


def run(cfg) -> dict:
    """The `mae_finetune` stage (module doc)."""
    from mambava.metrics import ccc_va

    fc = cfg.mae_finetune
    enc_cfg = cfg.mae_pretrain.encoder
    spec = EncoderSpec.from_config(enc_cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = FrameVA(load_encoder(spec, pretrain_checkpoint(cfg)))
    frozen = freeze(model.encoder, fc.freeze_blocks)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("fine-tuning: %d of %d blocks frozen (%d tensors, %.2fM params frozen, %.2fM trained)",
             fc.freeze_blocks, n_blocks(model.encoder), len(frozen), n_frozen / 1e6, n_train / 1e6)
    model.to(device)

    index = load_index(cfg.data.index)
    encoder_videos = fine_tune_videos(cfg)
    dirs, frames, video_of, labels = split_frames(index, "train", labelled=True, videos=encoder_videos)
    log.info("fine-tuning on the labels of %d videos (protocol %s): %d frames", len(dirs), cfg.protocol, len(frames))
    if fc.target == "within_video":
        labels = within_video(labels, video_of)
    ds = FrameDataset(dirs, frames, video_of, spec.img_size, enc_cfg.mean, enc_cfg.std, labels=labels, hflip=True,
                      colour_seed=cfg.seed if fc.colour_augment else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=fc.batch_size, num_workers=resolve_workers(fc.num_workers, 0), drop_last=True,
                        sampler=RandomSampler(ds, replacement=True, num_samples=max(1, fc.steps) * fc.batch_size, generator=gen),
                        pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    losses = train_steps(model, loader, fc.steps, fc.lr, fc.weight_decay, fc.warmup_steps, fc.loss, device) if fc.steps else []
    train_seconds = time.perf_counter() - t0
    save_checkpoint(model.export_state_dict(), checkpoint_file(cfg), spec=asdict(spec), freeze_blocks=fc.freeze_blocks)

    vdirs, vframes, vvideo_of, vlabels = split_frames(index, "validation", labelled=True)
    if fc.val_max_frames and len(vframes) > fc.val_max_frames:
        pick = np.linspace(0, len(vframes) - 1, fc.val_max_frames).round().astype(int)
        vframes, vvideo_of, vlabels = vframes[pick], vvideo_of[pick], vlabels[pick]
    vds = FrameDataset(vdirs, vframes, vvideo_of, spec.img_size, enc_cfg.mean, enc_cfg.std)
    vloader = DataLoader(vds, batch_size=256, num_workers=resolve_workers(fc.num_workers, 0))
    pred = predict(model, vloader, device)
    scores = ccc_va(pred, vlabels)
    metrics = {
        **{k: round(v, 4) for k, v in scores.items()},
        "n_frames": int(len(vlabels)),
        "protocol": cfg.protocol,
        "n_encoder_videos": len(dirs),
        "n_encoder_frames": int(len(frames)),
        "loss": fc.loss,
        "target": fc.target,
        "colour_augment": fc.colour_augment,
        "freeze_blocks": fc.freeze_blocks,
        "depth": n_blocks(model.encoder),
        "frozen_params": int(n_frozen),
        "trainable_params": int(n_train),
        "steps": fc.steps,
        "train_loss_first": round(float(np.mean(losses[:20])), 5) if losses else None,
        "train_loss_last": round(float(np.mean(losses[-20:])), 5) if losses else None,
        "device": str(device),
    }
    write_json(Path(fc.out) / "metrics.json", metrics)
    write_timing(fc.out, "mae_finetune", {"train_seconds": round(train_seconds, 1)})
    log.info("frame-level validation: CCC_v %.4f, CCC_a %.4f, P_VA %.4f on %d frames",
             scores["ccc_valence"], scores["ccc_arousal"], scores["p_va"], len(vlabels))
    return metrics
