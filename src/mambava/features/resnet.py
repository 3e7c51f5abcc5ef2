"""The CPU default's frame encoder: timm's ResNet of basic blocks, read out in horizontal bands.

``build_resnet(spec)`` gives an encoder whose ``encoder(images)`` is its last feature map averaged
over ``spec.pool_rows`` horizontal bands, top to bottom (:class:`BandPool`), concatenated:

    images (B, 3, S, S) -> ResNet -> map (B, C, g, g) -> BandPool -> (B, pool_rows * C)

With two bands on an aligned face crop the upper half holds the eyes and brows, the lower half the
mouth; one global average (``pool_rows: 1``, timm's own) mixes them. The band pool has no weights,
so a checkpoint loads into either readout.
"""

from __future__ import annotations

import torch
from torch import nn


class BandPool(nn.Module):
    """The mean of a feature map (B, C, H, W) over ``rows`` horizontal bands, top to bottom, as one
    vector (B, rows * C): band 0's channels first. ``rows=1`` is the global average. On an aligned
    face crop two bands keep the eyes and brows apart from the mouth, which one global average mixes
    (benchmarks/face_encoders.py --readouts measures it)."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows = int(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        if self.rows > h:
            raise ValueError(f"BandPool: {self.rows} bands of a map {h} rows high")
        edges = [round(i * h / self.rows) for i in range(self.rows + 1)]
        return torch.cat([x[:, :, a:b].mean((2, 3)) for a, b in zip(edges[:-1], edges[1:])], dim=1)

    def extra_repr(self) -> str:
        return f"rows={self.rows}"


def build_resnet(spec):
    """timm's ResNet of basic blocks for ``spec`` (a :class:`mambava.features.mae.EncoderSpec`):
    widths ``spec.channels``, output stride ``spec.patch_size`` (dilated last stages), no
    classifier; forward gives the last map averaged over ``spec.pool_rows`` horizontal bands
    (:class:`BandPool`; 1 = timm's global average)."""
    from timm.models.resnet import BasicBlock, ResNet

    if not spec.channels or len(spec.channels) != len(spec.layers):
        raise ValueError(f"resnet encoder: channels {spec.channels} and layers {spec.layers} must have one entry per stage")
    if spec.channels[-1] * spec.pool_rows != spec.embed_dim:
        raise ValueError(f"resnet encoder: embed_dim {spec.embed_dim} must equal the last stage width "
                         f"{spec.channels[-1]} x pool_rows {spec.pool_rows}")
    enc = ResNet(BasicBlock, layers=tuple(spec.layers), channels=tuple(spec.channels), stem_width=spec.channels[0],
                 output_stride=spec.patch_size, num_classes=0, global_pool="avg")
    if spec.pool_rows != 1:
        enc.global_pool = BandPool(spec.pool_rows)
    enc.embed_dim = spec.embed_dim
    enc.map_dim = spec.channels[-1]
    return enc
