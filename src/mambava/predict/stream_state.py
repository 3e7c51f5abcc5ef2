"""The state of a stream: the temporal model one frame at a time (:class:`StreamingVA`), one face
slot with the whole pass's handling of frames without a face (:class:`FaceStream`), and the
features of one crop as the pipeline would compute them (:func:`encode_crop`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mambava.errors import UserError
from mambava.predict.predictor import Predictor


class StreamingVA:
    """A trained MambaVA run one frame at a time: (input_dim,) features -> (2,) values.

    Each TCN level keeps the last ``(kernel - 1) * dilation`` inputs of each of its two causal
    convolutions (zeros at the start, as the whole pass's left padding); each Mamba layer keeps
    its (conv, scan) state. The transformer variant cannot stream (it attends to all the past).
    """

    def __init__(self, model: nn.Module):
        from mambava.models.mamba_va import MambaStack

        if not (model.temporal.__class__ is MambaStack or isinstance(model.temporal, nn.Identity)):
            raise UserError(f"streaming needs the mamba or none temporal model, not {model.cfg.temporal!r}")
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        m = self.model
        p = next(m.parameters())
        self.bufs = []
        # Each causal convolution gives one output per frame: a matrix-vector product of its
        # weight (out, in * kernel), computed once (the weight-norm parametrisation would
        # recompute g v/|v| on every call), with the buffer's taps (every dilation-th input).
        self.weights = []
        with torch.no_grad():
            for lvl in (m.tcn.levels if m.tcn is not None else []):
                flat = [c.weight.detach().reshape(c.out_channels, -1).contiguous() for c in (lvl.conv1, lvl.conv2)]
                ds = None if lvl.downsample is None else lvl.downsample.weight.detach()[:, :, 0].contiguous()
                self.weights.append((flat[0], flat[1], ds))
        if m.tcn is not None:
            for lvl in m.tcn.levels:
                n_in = lvl.conv1.in_channels
                n_out = lvl.conv1.out_channels
                self.bufs.append([torch.zeros(1, n_in, lvl.pad + 1, dtype=p.dtype, device=p.device),
                                  torch.zeros(1, n_out, lvl.pad + 1, dtype=p.dtype, device=p.device)])
        layers = getattr(m.temporal, "layers", [])
        self.states = [layer.mixer.allocate_state(1, device=p.device, dtype=p.dtype) for layer in layers]

    @staticmethod
    def _push(buf: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([buf[:, :, 1:], x[:, :, None]], dim=2)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One frame's features (input_dim,) -> valence, arousal (2,), clipped to [-1, 1]."""
        m = self.model
        h = x.reshape(1, -1).to(m.proj.weight.dtype)
        if m.tcn is not None:
            for lvl, bufs, (w1, w2, ds) in zip(m.tcn.levels, self.bufs, self.weights):
                d = lvl.conv1.dilation[0]
                bufs[0] = self._push(bufs[0], h)
                o = lvl.act1(F.linear(bufs[0][:, :, ::d].reshape(1, -1), w1, lvl.conv1.bias))
                bufs[1] = self._push(bufs[1], o)
                o = lvl.act2(F.linear(bufs[1][:, :, ::d].reshape(1, -1), w2, lvl.conv2.bias))
                res = h if ds is None else F.linear(h, ds, lvl.downsample.bias)
                h = lvl.act(o + res)
        h = m.norm_in(m.proj_in(h))
        for i, layer in enumerate(getattr(m.temporal, "layers", [])):
            y, self.states[i] = layer.mixer.step(h, self.states[i])
            h = layer.norm(h + y)
        return m.head(m.proj(h))[0].clamp(-1.0, 1.0)


def encode_crop(pred: Predictor, crop: np.ndarray) -> np.ndarray:
    """Features (dim,) float16 of one aligned crop, exactly as if ``data crop`` had written it to
    disk and the features stage had read it back (same JPEG bytes, same decoder and resize)."""
    import io

    from PIL import Image

    from mambava.features.frames import normalise
    from mambava.video.crop import encode_jpeg

    e = pred.encoder_cfg
    with Image.open(io.BytesIO(encode_jpeg(crop, pred.crop.jpeg_quality))) as im:
        im = im.convert("RGB")
        if im.size != (e.img_size, e.img_size):
            im = im.resize((e.img_size, e.img_size), Image.BICUBIC)
        arr = np.array(im, dtype=np.uint8)
    x = normalise(torch.from_numpy(arr).permute(2, 0, 1)[None].to(pred.device), e.mean, e.std)
    with torch.inference_mode():
        return pred.encoder(x)[0].float().cpu().numpy().astype(np.float16)


class FaceStream:
    """One face slot of a stream: features in, values out, with the whole pass's handling of frames
    without a face (forward fill; frames before the first face take its features, so the model is
    held back until it appears and those frames get no value)."""

    def __init__(self, model: nn.Module, device):
        self.net = StreamingVA(model)
        self.device = device
        self.last: np.ndarray | None = None
        self.waiting = 0  # frames before the first face

    def step(self, feats: np.ndarray | None) -> tuple[float, float] | None:
        if feats is None and self.last is None:
            self.waiting += 1
            return None
        if feats is not None:
            if self.last is None:  # backward fill of a leading gap
                x = torch.from_numpy(feats.astype(np.float32)).to(self.device)
                for _ in range(self.waiting):
                    self.net.step(x)
            self.last = feats
        y = self.net.step(torch.from_numpy(self.last.astype(np.float32)).to(self.device)).cpu().numpy()
        return (float(y[0]), float(y[1])) if feats is not None else None
