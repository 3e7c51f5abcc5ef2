"""Masked-autoencoder pretraining on the training frames (the `mae_pretrain` stage).

Either from scratch (random timm ViT, fixed sin-cos positions) or from a local checkpoint
(``mae_pretrain.checkpoint``: facebookresearch/mae or timm MAE ViT weights), for
``mae_pretrain.steps`` steps (0 = keep the checkpoint as it is). Frames are drawn uniformly,
with replacement, from every face image of the training videos; held-out reconstructions come
from the validation videos, which pretraining never sees.

Writes to ``mae_pretrain.out``:
    checkpoint.pt         {"model": state dict in the facebookresearch/mae layout, "spec": ...}
    reconstructions.png   rows: input, masked input, reconstruction (visible patches pasted)
    metrics.json          losses (first/last training steps, held-out), steps, time
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from mambava.features.frames import FrameDataset, load_index, split_frames
from mambava.io import atomic_path, write_json, write_timing
from mambava.runtime import resolve_device, resolve_workers
from mambava.schedules import param_groups, warmup_cosine
from mambava.features.mae import (
    EncoderSpec,
    MaskedAutoencoder,
    build_encoder,
    load_encoder_weights,
    read_state_dict,
    save_checkpoint,
)

log = logging.getLogger(__name__)


def checkpoint_file(cfg) -> Path:
    return Path(cfg.mae_pretrain.out) / "checkpoint.pt"


def save_reconstructions(mae: MaskedAutoencoder, imgs: torch.Tensor, mask_ratio: float, mean, std,
                         path: Path, seed: int = 0) -> float:
    """A PNG grid (input / masked / reconstruction, one column per frame); returns the loss."""
    from PIL import Image

    mae.eval()
    with torch.no_grad():
        loss, pred, mask = mae(imgs, mask_ratio, torch.Generator(device=imgs.device).manual_seed(seed))
        recon = mae.reconstruct(imgs, pred, mask)
        masked = imgs * (1 - mae.unpatchify(mask[..., None].expand_as(pred)))
    m = torch.tensor(mean, device=imgs.device)[:, None, None]
    s = torch.tensor(std, device=imgs.device)[:, None, None]

    def to_uint8(x):
        return ((x * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    rows = [np.concatenate(list(to_uint8(x)), axis=1) for x in (imgs, masked, recon)]
    grid = np.concatenate(rows, axis=0)
    with atomic_path(path, ".tmp.png") as tmp:
        Image.fromarray(grid).save(tmp)
    return float(loss)


def pretrain(mae: MaskedAutoencoder, loader, steps: int, lr: float, weight_decay: float, warmup: int,
             mask_ratio: float, device: torch.device, progress: bool = True) -> list[float]:
    """Train ``mae`` for ``steps`` batches of ``loader`` (an endless or long enough iterable)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(param_groups(mae.named_parameters(), weight_decay), lr=lr, betas=(0.9, 0.95))
    sched = warmup_cosine(opt, warmup, steps - warmup, restarts=False)
    mae.train()
    losses = []
    bar = tqdm(total=steps, desc="mae pretrain", unit="step", disable=not progress)
    it = iter(loader)
    for step in range(steps):
        imgs, _ = next(it)
        loss, _, _ = mae(imgs.to(device, non_blocking=True), mask_ratio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    bar.close()
    return losses


def verified_checkpoint(pc) -> str | None:
    """``mae_pretrain.checkpoint``, after checking its SHA-256 against ``checkpoint_sha256`` when
    that is set (a corrupted or replaced file is refused, naming both hashes)."""
    from mambava.io import file_sha256

    if not pc.checkpoint:
        return None
    path = Path(pc.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mae_pretrain.checkpoint not found (weights are only read from local files)")
    if pc.checkpoint_sha256:
        got = file_sha256(path)
        if got != pc.checkpoint_sha256.lower():
            from mambava.errors import UserError

            raise UserError(f"{path}: SHA-256 {got} is not mae_pretrain.checkpoint_sha256 ({pc.checkpoint_sha256}) "
                             "in params.yaml: the file is corrupted or was replaced. Restore it (`git checkout -- "
                             f"{path}`) or remake it with `mambava pretrain-faces --ship` and record its hash")
    return str(path)


def run_from_checkpoint(cfg, spec: EncoderSpec) -> dict:
    """The `mae_pretrain` stage for a non-ViT encoder: the checkpoint as it is (no MAE on the
    study's frames), its reconstruction head (``mim_head.*``, if present) drawing the book's
    held-out reconstructions."""
    from mambava.features.facepretrain import FacePretrainer, masked_loss, random_mask

    pc = cfg.mae_pretrain
    out = Path(pc.out)
    ckpt = verified_checkpoint(pc)
    if ckpt is None:
        from mambava.checks import InputError

        raise InputError(f"mae_pretrain: arch {spec.arch} starts from a checkpoint; set mae_pretrain.checkpoint")
    model = FacePretrainer(build_encoder(spec), spec.embed_dim, spec.patch_size)
    load_encoder_weights(model.encoder, ckpt)
    state = read_state_dict(ckpt)
    head = {k[len("mim_head."):]: v for k, v in state.items() if k.startswith("mim_head.")}
    if head:
        model.mim_head.load_state_dict(head)
    sd = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    sd.update({f"mim_head.{k}": v for k, v in head.items()})
    save_checkpoint(sd, checkpoint_file(cfg), spec=asdict(spec))
    metrics = {"steps": 0, "from_checkpoint": True, "checkpoint": ckpt, "checkpoint_sha256": pc.checkpoint_sha256,
               "decoder_trained": bool(head)}
    if head and pc.n_reconstructions:
        index = load_index(cfg.data.index)
        dirs, frames, video_of, _ = split_frames(index, "validation")
        pick = np.linspace(0, len(frames) - 1, pc.n_reconstructions).round().astype(int)
        ds = FrameDataset(dirs, frames[pick], video_of[pick], spec.img_size, pc.encoder.mean, pc.encoder.std)
        imgs = torch.stack([ds[i][0] for i in range(len(ds))])
        gen = torch.Generator().manual_seed(cfg.seed)
        grid = spec.img_size // spec.patch_size
        mask = random_mask(len(imgs), grid, cfg.face_pretrain.mask_ratio, gen)
        pix = mask.repeat_interleave(spec.patch_size, 1).repeat_interleave(spec.patch_size, 2)[:, None]
        model.eval()
        with torch.no_grad():
            _, fmap = model(imgs * (1 - pix))
            pred = model.reconstruct(fmap)
            metrics["heldout_loss"] = round(float(masked_loss(pred, imgs, mask, spec.patch_size)), 5)
        # back to each square's own statistics (the targets are per-square normalised)
        p = spec.patch_size

        def squares(x):
            return x.reshape(len(x), 3, grid, p, grid, p)

        sq = squares(imgs)
        mu = sq.mean(dim=(1, 3, 5), keepdim=True)
        sd_ = sq.var(dim=(1, 3, 5), keepdim=True).add(1e-6).sqrt()
        recon = (squares(pred) * sd_ + mu).reshape_as(imgs)
        recon = imgs * (1 - pix) + recon * pix
        _save_grid([imgs, imgs * (1 - pix), recon], pc.encoder.mean, pc.encoder.std, out / "reconstructions.png")
    else:
        index = load_index(cfg.data.index)
        dirs, frames, video_of, _ = split_frames(index, "validation")
        pick = np.linspace(0, len(frames) - 1, max(1, pc.n_reconstructions)).round().astype(int)
        ds = FrameDataset(dirs, frames[pick], video_of[pick], spec.img_size, pc.encoder.mean, pc.encoder.std)
        imgs = torch.stack([ds[i][0] for i in range(len(ds))])
        _save_grid([imgs], pc.encoder.mean, pc.encoder.std, out / "reconstructions.png")
    write_json(out / "metrics.json", metrics)
    write_timing(out, "mae_pretrain", {"seconds": 0.0, "frames_per_second": None})
    log.info("mae_pretrain: %s from %s (no pretraining on the study's frames); %s", spec.describe(), ckpt, metrics)
    return metrics


def _save_grid(rows, mean, std, path: Path) -> None:
    """A PNG with one row per tensor of normalised images (one column per frame)."""
    from PIL import Image

    m = torch.tensor(mean)[:, None, None]
    s = torch.tensor(std)[:, None, None]

    def to_uint8(x):
        return ((x * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    grid = np.concatenate([np.concatenate(list(to_uint8(x)), axis=1) for x in rows], axis=0)
    with atomic_path(path, ".tmp.png") as tmp:
        Image.fromarray(grid).save(tmp)


def run(cfg) -> dict:
    """The `mae_pretrain` stage (module doc)."""
    pc = cfg.mae_pretrain
    out = Path(pc.out)
    spec = EncoderSpec.from_config(pc.encoder)
    if spec.arch != "vit":
        return run_from_checkpoint(cfg, spec)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    mae = MaskedAutoencoder(spec, pc.decoder_dim, pc.decoder_depth, pc.decoder_heads, pc.norm_pix_loss)
    decoder_from_checkpoint = False
    if pc.checkpoint:
        load_encoder_weights(mae.encoder, verified_checkpoint(pc))
        state = read_state_dict(pc.checkpoint)
        if any(k.startswith("decoder_") for k in state):
            mae.load_mae_state_dict(state)
            decoder_from_checkpoint = True
    mae.to(device)

    index = load_index(cfg.data.index)
    enc = pc.encoder
    losses: list[float] = []
    t0 = time.perf_counter()
    if pc.steps > 0:
        dirs, frames, video_of, _ = split_frames(index, "train")
        ds = FrameDataset(dirs, frames, video_of, spec.img_size, enc.mean, enc.std, hflip=True)
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = RandomSampler(ds, replacement=True, num_samples=pc.steps * pc.batch_size, generator=gen)
        loader = DataLoader(ds, batch_size=pc.batch_size, sampler=sampler, num_workers=resolve_workers(pc.num_workers, 0),
                            pin_memory=device.type == "cuda", drop_last=True)
        log.info("MAE pretraining: %s, %d training frames, %d steps of %d", spec.describe(), len(ds), pc.steps, pc.batch_size)
        losses = pretrain(mae, loader, pc.steps, pc.lr, pc.weight_decay, pc.warmup_steps, pc.mask_ratio, device)
    seconds = time.perf_counter() - t0
    save_checkpoint(mae.mae_state_dict(), checkpoint_file(cfg), spec=asdict(spec))

    # Held-out frames: evenly spaced over the validation split (never trained on).
    metrics = {
        "steps": pc.steps,
        "mask_ratio": pc.mask_ratio,
        "norm_pix_loss": pc.norm_pix_loss,
        "from_checkpoint": bool(pc.checkpoint),
        "decoder_trained": pc.steps > 0 or decoder_from_checkpoint,
        "train_loss_first": round(float(np.mean(losses[:20])), 5) if losses else None,
        "train_loss_last": round(float(np.mean(losses[-20:])), 5) if losses else None,
    }
    timing = {"seconds": round(seconds, 1),
              "frames_per_second": round(pc.steps * pc.batch_size / seconds, 1) if losses else None}
    if pc.n_reconstructions:
        dirs, frames, video_of, _ = split_frames(index, "validation")
        pick = np.linspace(0, len(frames) - 1, pc.n_reconstructions).round().astype(int)
        ds = FrameDataset(dirs, frames[pick], video_of[pick], spec.img_size, enc.mean, enc.std)
        imgs = torch.stack([ds[i][0] for i in range(len(ds))]).to(device)
        metrics["heldout_loss"] = round(
            save_reconstructions(mae, imgs, pc.mask_ratio, enc.mean, enc.std, out / "reconstructions.png", cfg.seed), 5
        )
    write_json(out / "metrics.json", metrics)
    write_timing(out, "mae_pretrain", timing)
    log.info("MAE pretraining done: %s; %s", metrics, timing)
    return metrics
