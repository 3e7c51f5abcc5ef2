"""Can a frame encoder learn to read the twin's faces in the CPU budget? A measured control.

The MAE rung of the signal ladder is empty: the fine-tuned ViT's frame-level CCC is about 0. That
can have three causes, and this module separates them by training frame regressors for a fixed
number of steps on the frames of the encoder videos and scoring them on the validation videos:

* **the images**: if nothing can read the drawn parameters from the pixels, the renderer hides
  them. The control is a small CNN trained on the parameters the twin drew (``drawn`` targets:
  its mouth curve and eye opening, from the twin's truth files; no labels);
* **the encoder**: the configured ViT (the `mae_pretrain` encoder, optionally from its MAE
  checkpoint) trained on the same drawn targets, for the same number of steps;
* **the labels**: the CNN trained on the labels as `mae_finetune` uses them (within-video
  targets): label noise and the temporal smoothness of both labels and nuisances let a
  regressor memorise frames instead of reading expressions.

A second question is whether the autoencoder's own objective puts the cues into its features:
:func:`linear_probe` fits a ridge regression from frozen features (:func:`encoder_features`,
:func:`pixel_features`) to the drawn parameters, its penalty chosen across the training videos.

Twin only (the drawn parameters are its ground truth). ``benchmarks/encoder_learnability.py`` and
``benchmarks/mae_probe.py`` run them and write ``benchmarks/results/encoder_learnability.json``
and ``benchmarks/results/mae_probe.json``; the Features page of the book shows both files.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

DRAWN = ("mouth_curve", "eye_open")  # the strongest static cue of valence and of arousal


@dataclass
class FrameSet:
    """Frames held in memory: uint8 images (N, 3, S, S), the video of each (N,), drawn parameters
    (N, 2) and labels (N, 2)."""

    images: torch.Tensor
    video_of: np.ndarray
    drawn: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def load_frames(index, truth_dir: str | Path, split: str, videos=None, every: int = 1,
                max_frames: int | None = None, size: int = 112, columns=DRAWN) -> FrameSet:
    """Labelled on-disk frames of ``split`` (optionally only ``videos``), every ``every``-th one,
    at most ``max_frames`` spread evenly, with the drawn parameters read from the twin's truth
    file of each video (``<truth_dir>/<video>.npz``, row = frame number - 1): the ``columns``."""
    from mambava.data.affwild2 import frame_path
    from mambava.data.oracle import load_truth
    from mambava.features.frames import read_image, split_frames

    dirs, frames, video_of, labels = split_frames(index, split, labelled=True, videos=videos)
    pick = np.arange(0, len(frames), max(1, every))
    if max_frames and len(pick) > max_frames:
        pick = pick[np.linspace(0, len(pick) - 1, max_frames).round().astype(int)]
    drawn = np.empty((len(pick), len(columns)), dtype=np.float32)
    truths: dict[int, dict] = {}
    images = np.empty((len(pick), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(pick):
        k = int(video_of[i])
        if k not in truths:
            truths[k] = load_truth(Path(truth_dir) / f"{Path(dirs[k]).name}.npz")
        drawn[j] = [truths[k][c][frames[i] - 1] for c in columns]
        images[j] = read_image(frame_path(dirs[k], int(frames[i])), size)
    return FrameSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), video_of[pick], drawn, labels[pick])


class SmallCNN(nn.Module):
    """Four stride-2 blocks of two 3x3 convolutions (BatchNorm, GELU), global average pool:
    (B, 3, H, W) -> (B, width). The control encoder."""

    def __init__(self, width: int = 64):
        super().__init__()
        chans = [3, width // 4, width // 2, width, width]
        layers = []
        for i, o in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.GELU(), nn.Conv2d(o, o, 3, 1, 1), nn.BatchNorm2d(o), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = width

    def forward(self, x):
        return self.body(x)


class Regressor(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, n_out: int = 2):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(dim, n_out)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x):
        return self.head(self.encoder(x))


def prepare(images: torch.Tensor, size: int, mean, std, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> normalised float at ``size`` (antialiased). With ``gen``: the fine-tuning
    augmentations (:func:`mambava.features.facepretrain.augment`: colour, then horizontal flips)."""
    from mambava.features.facepretrain import augment

    x = images.float() / 255.0
    if gen is not None:
        x = augment(x, gen)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(prepare(images[i:i + batch], size, mean, std)).numpy() for i in range(0, len(images), batch)]
    model.train()
    return np.concatenate(out)


def fit(model: nn.Module, train: np.ndarray, images: torch.Tensor, steps: int, lr: float, batch: int, size: int,
        mean, std, seed: int, on_eval=None, n_evals: int = 5, weight_decay: float = 0.05, warmup: int = 20,
        augment: bool = True) -> list[dict]:
    """AdamW with linear warm-up then cosine decay, MSE against ``train`` (N, k), the augmentations
    of :func:`prepare` unless ``augment`` is False; calls ``on_eval(step) -> dict`` ``n_evals``
    times, evenly spaced; returns the learning curve."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    target = torch.from_numpy(np.asarray(train, dtype=np.float32))
    every = max(1, steps // n_evals)
    curve, losses, t0 = [], [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(images), (batch,), generator=gen)
        loss = F.mse_loss(model(prepare(images[idx], size, mean, std, gen if augment else None)), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            row = {"step": step, "train_loss": round(float(np.mean(losses[-every:])), 5),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if on_eval is not None:
                row.update(on_eval(step))
            curve.append(row)
            log.info("%s", row)
    return curve


def standardise(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return ((y - ref.mean(0)) / np.where(ref.std(0) > 0, ref.std(0), 1.0)).astype(np.float32)


def run_one(name: str, encoder: str, target: str, train: FrameSet, val: FrameSet, *, spec=None, checkpoint=None,
            size: int, steps: int, lr: float, batch: int, mean, std, seed: int = 0, n_evals: int = 5,
            cnn_width: int = 64) -> dict:
    """Train one regressor (``encoder``: ``vit`` | ``cnn``; ``target``: ``drawn`` | ``labels``) and
    score it on ``val`` at ``n_evals`` points: Pearson r against the drawn parameters, and CCC and
    within-video r against the labels."""
    from mambava.features.finetune import within_video
    from mambava.metrics import ccc_va

    torch.manual_seed(seed)
    if encoder == "vit":
        from mambava.features.mae import load_encoder

        enc = load_encoder(spec, checkpoint)
        dim = spec.embed_dim
    elif encoder == "cnn":
        enc, dim = SmallCNN(cnn_width), cnn_width
    else:
        raise ValueError(f"encoder {encoder!r}: vit | cnn")
    model = Regressor(enc, dim)
    if target == "drawn":
        y = standardise(train.drawn, train.drawn)
    elif target == "labels":
        y = within_video(train.labels, train.video_of)
    else:
        raise ValueError(f"target {target!r}: drawn | labels")
    val_within = within_video(val.labels, val.video_of)

    def on_eval(step):
        p = predict(model, val.images, size, mean, std)
        out = {f"r_{c}": round(pearson(p[:, j], val.drawn[:, j]), 4) for j, c in enumerate(DRAWN)}
        if target == "labels":
            s = ccc_va(np.clip(p, -1, 1), val.labels)
            out.update(ccc_valence=round(s["ccc_valence"], 4), ccc_arousal=round(s["ccc_arousal"], 4))
            pw = within_video(p, val.video_of)
            out.update(r_within_valence=round(pearson(pw[:, 0], val_within[:, 0]), 4),
                       r_within_arousal=round(pearson(pw[:, 1], val_within[:, 1]), 4))
        return out

    log.info("%s: %s encoder, %s targets, %dx%d, %d steps", name, encoder, target, size, size, steps)
    curve = fit(model, y, train.images, steps, lr, batch, size, mean, std, seed, on_eval, n_evals)
    return {"name": name, "encoder": encoder, "target": target, "size": size, "steps": steps, "lr": lr,
            "batch": batch, "checkpoint": str(checkpoint) if checkpoint else None,
            "params": int(sum(p.numel() for p in model.parameters())), "curve": curve}


# --- linear read-out of frozen features: does MAE pretraining alone encode the drawn cues? ---

@torch.inference_mode()
def encoder_features(encoder: nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 256) -> np.ndarray:
    """Frozen features of a timm ViT: its CLS token and the mean of its patch tokens after the final
    norm (``forward_features``), concatenated: (N, 2 * width) float32."""
    encoder.eval()
    out = []
    for i in range(0, len(images), batch):
        t = encoder.forward_features(prepare(images[i:i + batch], size, mean, std))
        out.append(torch.cat([t[:, 0], t[:, 1:].mean(1)], 1).float().numpy())
    return np.concatenate(out)


def pixel_features(images: torch.Tensor, size: int = 32) -> np.ndarray:
    """The raw pixels as features: grey levels at ``size`` x ``size`` (antialiased), (N, size**2)."""
    x = F.interpolate(images.float() / 255.0, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.mean(1).reshape(len(images), -1).numpy()


def linear_probe(X: np.ndarray, y: np.ndarray, groups: np.ndarray, X_new: np.ndarray,
                 alphas=(1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6), n_splits: int = 3) -> tuple[np.ndarray, float]:
    """Ridge regression from standardised features ``X`` to ``y`` (N,) or (N, k), its penalty chosen
    by grouped ``n_splits``-fold cross-validation on the training rows (``groups``: the video of each
    row; mean squared error over targets), refitted on every training row; returns the predictions
    for ``X_new`` and the chosen penalty. Nothing of ``X_new`` takes part in the choice."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(a, rows):
        return make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(X[rows], y[rows])

    folds = list(GroupKFold(n_splits=min(n_splits, len(np.unique(groups)))).split(X, y, groups))
    errors = [np.mean([np.mean((fit(a, tr).predict(X[te]) - y[te]) ** 2) for tr, te in folds]) for a in alphas]
    best = float(alphas[int(np.argmin(errors))])
    return fit(best, np.arange(len(X))).predict(X_new), best
