"""MambaVA: per-frame valence/arousal from per-frame features; the ablations are settings.

    features (B, L, input_dim)
      -> TCN (model.tcn; widths model.tcn_channels, kernel model.tcn_kernel)  (B, L, c_last)
      -> Linear to d_model, only where the width differs (always when the TCN is off)
      -> frame norm: each frame standardised over its channels, no affine parameters
      -> temporal stack (model.temporal): n_layers post-norm residual blocks
           mamba:       x = LayerNorm(x + Mamba(x))       (d_state, d_conv, expand)
           transformer: see mambava.models.transformer
           none:        nothing
      -> Linear(d_model, d_model) -> Linear(d_model, head_hidden) - ReLU - Linear(head_hidden, 2)
      -> (B, L, 2): valence, arousal

With the paper profile (input 1024, TCN 1024-768-512-256, d_model 256, 4 Mamba layers, d_state 8,
d_conv 4, expand 1, head 128) this is the authors' model, 67,155,086 parameters.

The frame norm is what the authors' ``nn.InstanceNorm1d(256)`` computes: it is applied to a
(B, L, 256) tensor, which PyTorch reads as L channels of 256 samples, so each frame is
normalised over its 256 features (not each channel over time). Kept so, it is causal and does
not depend on the window length, which whole-video inference needs.

Every part is causal (TCN by left padding, Mamba by construction, the Transformer when
``model.causal``), so a whole video runs in one pass of any length: linear time for Mamba.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mambava.config import ModelConfig
from mambava.models.mamba import Mamba
from mambava.models.tcn import TCN
from mambava.models.transformer import TransformerEncoder


class FrameNorm(nn.Module):
    """(B, L, C): standardise each frame over its C channels (biased variance, eps 1e-5)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)


class MambaLayer(nn.Module):
    """Post-norm residual Mamba block: x = LayerNorm(x + Mamba(x)), (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, scan_backend: str | None):
        super().__init__()
        self.mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mixer(x))


class MambaStack(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        backend = None if cfg.scan_backend == "auto" else cfg.scan_backend
        self.layers = nn.ModuleList(
            MambaLayer(cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, backend) for _ in range(cfg.n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layers or not self.layers[0].mixer.uses_pieces(x):
            for layer in self.layers:
                x = layer(x)
            return x
        # Inference over a long video: the whole stack runs piece by piece, each layer carrying its
        # (conv, scan) state, so no (B, L, d) tensor of a layer outlives its piece and the time
        # per frame does not grow with the length (the layers' norms and residuals are per frame).
        chunk = self.layers[0].mixer.chunk_frames
        states = [None] * len(self.layers)
        out = None
        for start in range(0, x.shape[1], chunk):
            h = x[:, start:start + chunk]
            for i, layer in enumerate(self.layers):
                y, states[i] = layer.mixer.forward_from(h, states[i])
                h = layer.norm(h + y)
            if out is None:
                out = h.new_empty(h.shape[0], x.shape[1], h.shape[2])
            out[:, start:start + h.shape[1]] = h
        return out


class MambaVA(nn.Module):
    """The configurable model: (batch, length, input_dim) -> (batch, length, 2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tcn = TCN(cfg.input_dim, cfg.tcn_channels, cfg.tcn_kernel, cfg.dropout) if cfg.tcn else None
        width = cfg.tcn_channels[-1] if cfg.tcn else cfg.input_dim
        self.proj_in = nn.Linear(width, cfg.d_model) if width != cfg.d_model else nn.Identity()
        self.norm_in = FrameNorm()
        if cfg.temporal == "mamba":
            self.temporal = MambaStack(cfg)
        elif cfg.temporal == "transformer":
            self.temporal = TransformerEncoder(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.dropout, cfg.causal,
                                               cfg.attention_window)
        else:
            self.temporal = nn.Identity()
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.head = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.head_hidden), nn.ReLU(), nn.Linear(cfg.head_hidden, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, length, input_dim) features -> (batch, length, 2) valence, arousal."""
        x = x.to(self.proj.weight.dtype)
        if self.tcn is not None:
            x = self.tcn(x)
        x = self.norm_in(self.proj_in(x))
        x = self.temporal(x)
        return self.head(self.proj(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The temporal encoder alone (frame norm, stack, projection): (B, L, d_model) -> same."""
        return self.proj(self.temporal(self.norm_in(x)))


def settings_read(cfg: ModelConfig) -> dict:
    """The settings of ``cfg`` that :class:`MambaVA`'s constructor reads (keep the two together).

    A run's fingerprint holds these and no more, so that a setting of one variant (the
    Transformer's heads, Mamba's state size) does not retrain the variants that never read it.
    """
    keys = {"input_dim", "tcn", "temporal", "d_model", "head_hidden"}
    if cfg.tcn:
        keys |= {"tcn_channels", "tcn_kernel", "dropout"}
    if cfg.temporal == "mamba":
        keys |= {"n_layers", "d_state", "d_conv", "expand", "scan_backend"}
    elif cfg.temporal == "transformer":
        keys |= {"n_layers", "n_heads", "causal", "attention_window", "dropout"}
    values = cfg.model_dump()
    return {k: values[k] for k in sorted(keys)}


def code_read(cfg: ModelConfig) -> list[str]:
    """The modules of :mod:`mambava.models` whose code :class:`MambaVA` runs for ``cfg`` (keep with
    the constructor, as :func:`settings_read`).

    A run's fingerprint holds the content of these and no other model file, so that an edit of
    the Transformer's code does not retrain the variants that never run it. A test traces every
    variant's forward, backward and inference and fails if the model runs code in a file not listed.
    """
    names = ["__init__", "mamba_va"]
    if cfg.tcn:
        names.append("tcn")
    if cfg.temporal == "mamba":
        names += ["mamba", "ssm"]
    elif cfg.temporal == "transformer":
        names.append("transformer")
    return names
