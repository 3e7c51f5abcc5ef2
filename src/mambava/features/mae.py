"""The MAE encoder (timm's ViT), a light MAE decoder for pretraining, and checkpoint loading.

The encoder is ``timm.models.vision_transformer.VisionTransformer`` with no classifier
(``num_classes=0``, ``global_pool="token"``), so ``encoder(images)`` is the CLS token after the
final norm, the paper's per-frame feature::

    images (B, 3, H, W) -> encoder -> (B, embed_dim)

:class:`MaskedAutoencoder` wraps that encoder with the decoder of He et al. (2022) for
pretraining; its parameter names follow facebookresearch/mae (``decoder_embed``,
``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``)
so that our checkpoints are in the facebookresearch/mae format ``{"model": state_dict}``
and theirs load into ours.

Weights only ever come from a local file (:func:`load_encoder_weights`); nothing is fetched
from a hub. Two formats are read:

* facebookresearch/mae: ``{"model": state_dict}`` (``mae_pretrain_vit_large.pth``), the
  decoder keys are ignored;
* timm's MAE ViT weights (``vit_large_patch16_224.mae``): a plain state dict, as
  ``.pth/.pt/.bin`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from mambava.checks import InputError

log = logging.getLogger(__name__)

# Keys of a checkpoint that never belong to the encoder: the MAE decoder, a classifier head,
# our valence-arousal head, the face pretraining's reconstruction head. They are dropped silently (and listed in the load report).
IGNORED_PREFIXES = ("decoder_", "mask_token", "head.", "va_head.", "mim_head.")


@dataclass(frozen=True)
class EncoderSpec:
    """The architecture of a ViT encoder (mirrors ``mambava.config.EncoderConfig``)."""

    img_size: int = 112
    patch_size: int = 16  # ViT: the patch side; resnet: the stride of the last feature map (16)
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    arch: str = "vit"  # vit | resnet
    channels: tuple[int, ...] = ()  # resnet: the width of each stage (embed_dim = the last)
    layers: tuple[int, ...] = ()  # resnet: basic blocks per stage
    pool_rows: int = 1  # resnet: horizontal bands of the last map, averaged and concatenated

    @classmethod
    def from_config(cls, cfg) -> "EncoderSpec":
        return cls(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            arch=getattr(cfg, "arch", "vit"),
            channels=tuple(getattr(cfg, "channels", ()) or ()),
            layers=tuple(getattr(cfg, "layers", ()) or ()),
            pool_rows=int(getattr(cfg, "pool_rows", 1) or 1),
        )

    def describe(self) -> str:
        if self.arch == "resnet":
            pool = "global average" if self.pool_rows == 1 else f"averaged over {self.pool_rows} horizontal bands"
            return (f"ResNet, {self.img_size}x{self.img_size}, stages {'-'.join(map(str, self.channels))} "
                    f"x {'-'.join(map(str, self.layers))} blocks, output stride {self.patch_size}, last map {pool}, "
                    f"dim {self.embed_dim}")
        return (
            f"ViT patch {self.patch_size}, {self.img_size}x{self.img_size}, dim {self.embed_dim}, "
            f"depth {self.depth}, heads {self.num_heads}"
        )


def build_encoder(spec: EncoderSpec):
    """The frame encoder of ``spec.arch``: timm's VisionTransformer without a classifier (forward
    gives the CLS after the final norm) or :func:`build_resnet`."""
    from timm.models.vision_transformer import VisionTransformer

    if spec.arch == "resnet":
        from mambava.features.resnet import build_resnet

        return build_resnet(spec)
    if spec.arch != "vit":
        raise ValueError(f"encoder arch {spec.arch!r}: vit | resnet")

    if spec.img_size % spec.patch_size:
        raise ValueError(f"img_size {spec.img_size} is not a multiple of patch_size {spec.patch_size}")
    return VisionTransformer(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        class_token=True,
    )


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sine-cosine positional embedding, (1 + grid*grid, dim) with a zero CLS row.

    Half of the channels encode the row, half the column, each as sin/cos of the position at
    geometrically spaced frequencies (as in MAE; this is our own implementation).
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def enc(pos):
        out = np.outer(pos.ravel(), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([enc(xs), enc(ys)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ViT encoder (``self.encoder``), with a light transformer decoder.

    Encoder parameters keep timm's names under ``encoder.``; :meth:`mae_state_dict` returns the
    facebookresearch/mae layout (encoder keys at the top level, decoder keys beside them).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.spec = spec
        self.norm_pix_loss = norm_pix_loss
        self.encoder = build_encoder(spec)
        grid = spec.img_size // spec.patch_size
        self.grid = grid
        n_patches = grid * grid
        # MAE keeps positional embeddings fixed (sin-cos) during pretraining.
        with torch.no_grad():
            self.encoder.pos_embed.copy_(torch.from_numpy(sincos_pos_embed_2d(spec.embed_dim, grid))[None])
        self.encoder.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(spec.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(sincos_pos_embed_2d(decoder_dim, grid))[None], requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, spec.patch_size**2 * 3)
        assert self.decoder_pos_embed.shape[1] == n_patches + 1
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, p*p*3), patches in row-major order, channels last."""
        p, g = self.spec.patch_size, self.grid
        x = imgs.reshape(imgs.shape[0], 3, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], g * g, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*3) -> (B, 3, H, W)."""
        p, g = self.spec.patch_size, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, g * p, g * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """Keep a random subset of ``round(L * (1 - mask_ratio))`` tokens per sample.

        x: (B, L, D). Returns kept tokens (B, L_keep, D), mask (B, L) with 1 = masked (removed),
        and ids_restore (B, L) that undoes the shuffle.
        """
        b, n, d = x.shape
        n_keep = int(round(n * (1 - mask_ratio)))
        noise = torch.rand(b, n, device=x.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :n_keep]
        kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    # ------------------------------------------------------------------ forward
    def forward_encoder(self, imgs, mask_ratio: float, generator=None):
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        b, n_vis, d = x[:, 1:].shape
        n = ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - n_vis, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, d))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward(self, imgs, mask_ratio: float = 0.75, generator=None):
        """Returns (loss on masked patches, predictions (B, L, p*p*3), mask (B, L), 1 = masked)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)
        loss = (loss * mask).sum() / mask.sum().clamp_min(1)
        return loss, pred, mask

    def reconstruct(self, imgs, pred, mask) -> torch.Tensor:
        """Images (normalised space) with masked patches replaced by the decoder's prediction."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:  # bring predictions back to the patch's own statistics
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = mask[..., None]
        return self.unpatchify(target * (1 - m) + pred * m)

    def mae_state_dict(self) -> dict[str, torch.Tensor]:
        """The facebookresearch/mae layout: encoder keys at the top, decoder keys beside them."""
        out = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        for k, v in self.state_dict().items():
            if not k.startswith("encoder."):
                out[k] = v.detach().cpu()
        return out

    def load_mae_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load decoder keys of a facebookresearch/mae state dict (the encoder is loaded apart)."""
        own = self.state_dict()
        dec = {k: v for k, v in state.items() if not k.startswith("encoder.") and k in own}
        for k, v in dec.items():
            if v.shape != own[k].shape:
                raise InputError(f"decoder key {k!r}: shape {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here")
        self.load_state_dict(dec, strict=False)


# --------------------------------------------------------------------------- checkpoints
@dataclass
class LoadReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict (``{"model": ...}`` and ``module.`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (weights are only read from local files)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors ships with timm
            raise ImportError(f"{path}: reading .safetensors needs the `safetensors` package") from None
        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: cannot read as a torch checkpoint ({exc})") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict", "module"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict (expected tensors, or {{'model': state_dict}})")
    out = {}
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Copy a checkpoint's encoder weights into a timm ViT ``encoder``, checking every shape.

    Decoder keys, classifier and valence-arousal heads are ignored. ``pos_embed`` is resampled
    (bicubic) when the checkpoint was trained at another image size. Any other missing,
    unexpected or wrongly shaped key raises ValueError naming the key and the file.
    """
    from timm.layers import resample_abs_pos_embed

    path = Path(path)
    state = read_state_dict(path)
    report = LoadReport(path=str(path))
    own = encoder.state_dict()
    new: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if _ignored(key):
            report.ignored.append(key)
            continue
        if key not in own:
            unexpected.append(key)
            continue
        want = own[key].shape
        if key == "fc.weight" or key == "fc.bias":  # a timm ResNet's classifier (num_classes=0 here)
            report.ignored.append(key)
            continue
        if key == "pos_embed" and value.shape != want and value.ndim == 3 and value.shape[-1] == want[-1]:
            old_grid = int(math.isqrt(value.shape[1] - 1))
            new_grid = int(math.isqrt(want[1] - 1))
            if old_grid * old_grid + 1 == value.shape[1]:
                value = resample_abs_pos_embed(
                    value.float(), new_size=[new_grid, new_grid], old_size=[old_grid, old_grid], num_prefix_tokens=1
                ).to(value.dtype)
                report.resized.append(f"pos_embed {old_grid}x{old_grid} -> {new_grid}x{new_grid}")
        if value.shape != want:
            raise InputError(
                f"{path}: key {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(want)} in the encoder ({getattr(encoder, '_mambava_desc', type(encoder).__name__)})"
            )
        new[key] = value.to(own[key].dtype)
    missing = sorted(set(own) - set(new))
    if unexpected or missing:  # one line: a renamed key shows as both
        parts = [f"keys not in the encoder: {', '.join(sorted(unexpected)[:10])}" if unexpected else "",
                 f"encoder keys missing from the checkpoint: {', '.join(missing[:10])}" if missing else ""]
        raise InputError(f"{path}: {'; '.join(p for p in parts if p)} "
                         f"(the encoder is {getattr(encoder, '_mambava_desc', type(encoder).__name__)})")
    encoder.load_state_dict(new, strict=True)
    report.loaded = sorted(new)
    if report.resized:
        log.info("%s: %s", path, "; ".join(report.resized))
    log.info("loaded %d encoder tensors from %s (%d ignored)", len(new), path, len(report.ignored))
    return report


def load_encoder(spec: EncoderSpec, path: str | Path | None = None) -> nn.Module:
    """Build the encoder for ``spec`` and, if ``path`` is given, load its weights from that file."""
    enc = build_encoder(spec)
    enc._mambava_desc = spec.describe()
    if path is not None:
        load_encoder_weights(enc, path)
    return enc


def save_checkpoint(state: Mapping[str, torch.Tensor], path: str | Path, **extra) -> None:
    """Write ``{"model": state, **extra}`` atomically (:func:`mambava.io.write_torch`)."""
    from mambava.io import write_torch

    write_torch({"model": dict(state), **extra}, path)
