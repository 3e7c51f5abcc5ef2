"""Face-encoder pretraining on the population of :mod:`mambava.data.population` (``mambava
pretrain-faces``): the twin's stand-in for the external face data behind the paper's checkpoint.

Encoders (timm, built by :func:`mambava.features.mae.build_encoder` from the encoder settings):

* ``vit``: the pipeline's ViT (patch embedding, CLS token after the final norm);
* ``resnet``: a timm ResNet of basic blocks with the widths of ``channels`` and output stride 16,
  so that its last feature map has the ViT's grid (``img_size / 16``); the feature is the global
  average of that map.

Objectives (``objective``), each on the same images and the same number of steps:

* ``supervised``: frame-level valence/arousal (MSE) from a linear head on the feature, as ABAW
  entries pretrain on AffectNet;
* ``masked``: masked image modelling (SimMIM-like for both families): random ``patch`` x ``patch``
  squares of the normalised input are set to 0 (the mean face colour) at ``mask_ratio``; a 1x1
  convolution and a pixel shuffle rebuild the pixels from the last feature map, and the loss is the
  MSE on the masked squares against per-square normalised pixels (MAE's ``norm_pix_loss``);
* ``both``: half of every batch clean for the valence/arousal loss, the other half masked for the
  reconstruction loss (the sum of the two; the same compute as either alone).

Training is resumable: every ``save_every`` steps, :func:`train` writes the model, optimiser,
scheduler, random generator and losses to ``<out>/last.pt`` atomically, and a new call with the
same settings continues from there (the same bytes as an uninterrupted run).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

OBJECTIVES = ("supervised", "masked", "both")
AUGMENTS = ("none", "flip", "colour")


@dataclass(frozen=True)
class Recipe:
    """One pretraining run (mirrors ``mambava.config.FacePretrainConfig``, less the population)."""

    objective: str = "both"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    mask_ratio: float = 0.6
    mask_patch: int = 16
    augment: str = "flip"  # none | flip (horizontal flips) | colour (flips and the colour augmentation)
    seed: int = 0
    save_every: int = 200

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: one of {', '.join(OBJECTIVES)}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment {self.augment!r}: one of {', '.join(AUGMENTS)}")


# --------------------------------------------------------------------------- model


def feature_map(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled feature (B, D), last feature map (B, D, g, g)) of a timm ViT or ResNet encoder.
    The pooled feature is exactly ``encoder(x)`` (what the pipeline extracts)."""
    if hasattr(encoder, "blocks"):  # ViT: CLS after the final norm; patch tokens as a grid
        tokens = encoder.forward_features(x)
        pooled = encoder.forward_head(tokens)
        patches = tokens[:, getattr(encoder, "num_prefix_tokens", 1):]
        g = int(math.isqrt(patches.shape[1]))
        return pooled, patches.transpose(1, 2).reshape(len(x), -1, g, g)
    fmap = encoder.forward_features(x)
    return encoder.forward_head(fmap), fmap


class FacePretrainer(nn.Module):
    """An encoder with the heads of the objectives: ``va_head`` (Linear(D, 2)) and ``mim_head``
    (1x1 convolution to ``patch**2 * 3`` channels, then a pixel shuffle back to the image size)."""

    def __init__(self, encoder: nn.Module, dim: int, patch: int = 16):
        super().__init__()
        self.encoder = encoder
        self.patch = patch
        self.va_head = nn.Linear(dim, 2)
        map_dim = getattr(encoder, "map_dim", dim)  # the last map's channels (a ResNet's band pool widens dim)
        self.mim_head = nn.Sequential(nn.Conv2d(map_dim, patch * patch * 3, 1), nn.PixelShuffle(patch))
        nn.init.zeros_(self.va_head.bias)
        nn.init.normal_(self.va_head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, fmap = feature_map(self.encoder, x)
        return self.va_head(pooled), fmap

    def reconstruct(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.mim_head(fmap)


def random_mask(b: int, grid: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(b, grid, grid) float mask, 1 = masked, exactly round(ratio * grid**2) squares per image."""
    n = grid * grid
    k = int(round(ratio * n))
    order = torch.argsort(torch.rand(b, n, generator=gen), dim=1)
    mask = torch.zeros(b, n)
    mask.scatter_(1, order[:, :k], 1.0)
    return mask.reshape(b, grid, grid)


def masked_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """MSE of ``pred`` against ``imgs`` on the masked squares, each square's pixels normalised to
    zero mean and unit variance (per channel set of the square, as MAE's norm_pix_loss)."""
    b, c, h, w = imgs.shape
    g = h // patch

    def squares(x):
        return x.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)

    target = squares(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    err = ((squares(pred) - target) ** 2).mean(-1)
    m = mask.reshape(b, -1)
    return (err * m).sum() / m.sum().clamp_min(1)


def augment(x: torch.Tensor, gen: torch.Generator, colour: bool = True) -> torch.Tensor:
    """Float images in [0, 1] (B, 3, S, S): horizontal flip with probability 0.5 and, with
    ``colour``, random channel order and gains (0.6-1.4), grey with probability 0.2 (the
    fine-tuning's augmentations)."""
    b = len(x)
    if not colour:
        flip = torch.rand(b, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        return x
    perm = torch.argsort(torch.rand(b, 3, generator=gen), dim=1)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    x = x * (0.6 + 0.8 * torch.rand(b, 3, 1, 1, generator=gen))
    grey = torch.rand(b, generator=gen) < 0.2
    x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    x = x.clamp_(0, 1)
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def prepare(images: torch.Tensor, size: int, mean, std, gen: torch.Generator | None = None,
            colour: bool = True) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, size, size); augmented (:func:`augment`) when
    ``gen`` is given."""
    x = images.float() / 255.0
    if gen is not None:
        x = augment(x, gen, colour)
    if x.shape[-1] != size:
        # antialiased bicubic, as PIL's resize of the pipeline's frame reader (features.frames.read_image)
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


# --------------------------------------------------------------------------- training


def _optimiser(model: nn.Module, recipe: Recipe):
    from mambava.schedules import param_groups, warmup_cosine

    opt = torch.optim.AdamW(param_groups(model.named_parameters(), recipe.weight_decay), lr=recipe.lr,
                            betas=(0.9, 0.95))
    sched = warmup_cosine(opt, recipe.warmup_steps, recipe.steps - recipe.warmup_steps, restarts=False)
    return opt, sched


def step_loss(model: FacePretrainer, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, size: int,
              mean, std, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The loss of one batch under ``recipe.objective`` (module doc) and its parts."""
    x = prepare(images, size, mean, std, None if recipe.augment == "none" else gen, colour=recipe.augment == "colour")
    parts = {}
    if recipe.objective == "supervised":
        va, _ = model(x)
        parts["va"] = F.mse_loss(va, labels)
    else:
        half = len(x) // 2 if recipe.objective == "both" else 0
        xm = x[half:]
        grid = size // recipe.mask_patch
        mask = random_mask(len(xm), grid, recipe.mask_ratio, gen)
        pix = mask.repeat_interleave(recipe.mask_patch, 1).repeat_interleave(recipe.mask_patch, 2)[:, None]
        if half:
            va, _ = model(x[:half])
            parts["va"] = F.mse_loss(va, labels[:half])
        _, fmap = model(xm * (1 - pix))
        parts["masked"] = masked_loss(model.reconstruct(fmap), xm, mask, recipe.mask_patch)
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def _state(model, opt, sched, gen, step, history) -> dict:
    return {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step, "history": history}


def train(model: FacePretrainer, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, size: int, mean, std,
          out: str | Path | None = None, fingerprint: dict | None = None, on_eval=None, eval_every: int = 0,
          progress: bool = True, max_seconds: float | None = None) -> dict:
    """Pretrain ``model`` on uint8 ``images`` (N, 3, S, S) with ``labels`` (N, 2) for ``recipe.steps``.

    With ``out``, ``<out>/last.pt`` holds the state every ``recipe.save_every`` steps (and at the
    end); a call that finds it with the same ``fingerprint`` resumes from it, one with another
    fingerprint refuses to (ValueError naming the file). ``on_eval(step) -> dict`` runs every
    ``eval_every`` steps and at the end; ``max_seconds`` stops early after a save (for sessions
    shorter than the run). Returns the history: losses per step block and the evaluations."""
    from tqdm.auto import tqdm

    from mambava.io import write_torch

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    opt, sched = _optimiser(model, recipe)
    history = {"loss": [], "evals": [], "seconds": 0.0, "step": 0}
    start = 0
    fingerprint = {"recipe": asdict(recipe), **(fingerprint or {})}
    last = Path(out) / "last.pt" if out is not None else None
    if last is not None and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if json.loads(state.get("fingerprint", "{}")) != json.loads(json.dumps(fingerprint)):
            raise ValueError(f"{last}: a pretraining state of other settings; remove it to start again")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        log.info("resuming %s at step %d of %d", last, start, recipe.steps)

    def save(step):
        if last is not None:
            st = _state(model, opt, sched, gen, step, json.dumps(history))
            st["fingerprint"] = json.dumps(fingerprint)
            write_torch(st, last)

    model.train()
    t0, block = time.perf_counter(), []
    seconds0 = history["seconds"]
    bar = tqdm(total=recipe.steps, initial=start, desc=f"pretrain faces ({recipe.objective})", unit="step",
               disable=not progress, mininterval=2.0)
    for step in range(start + 1, recipe.steps + 1):
        idx = torch.randint(len(images), (recipe.batch_size,), generator=gen)
        loss, parts = step_loss(model, images[idx], labels[idx], recipe, size, mean, std, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        block.append(parts)
        history["step"] = step
        bar.update(1)
        if step % 25 == 0 or step == recipe.steps:
            mean_parts = {k: round(float(np.mean([b[k] for b in block])), 5) for k in block[0]}
            history["loss"].append({"step": step, **mean_parts})
            bar.set_postfix(mean_parts)
            block = []
        history["seconds"] = round(seconds0 + time.perf_counter() - t0, 1)
        if on_eval is not None and eval_every and (step % eval_every == 0 or step == recipe.steps):
            model.eval()
            history["evals"].append({"step": step, "seconds": history["seconds"], **on_eval(step)})
            model.train()
            log.info("%s", history["evals"][-1])
        if step % recipe.save_every == 0 or step == recipe.steps:
            save(step)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds and step < recipe.steps:
                log.info("stopping at step %d after %.0f s; run again to resume", step, time.perf_counter() - t0)
                break
    bar.close()
    return history


# --------------------------------------------------------------------------- the command


def shipped_state(model: FacePretrainer, objective: str) -> dict[str, torch.Tensor]:
    """What ships: the encoder's keys at the top level (as timm and fb/mae) and, when the objective
    trained it, the reconstruction head as ``mim_head.*`` (ignored by
    :func:`mambava.features.mae.load_encoder_weights`; the `mae_pretrain` stage draws the book's
    reconstructions with it). The population's valence/arousal head does not ship: fine-tuning
    starts a head of its own."""
    out = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
    if objective != "supervised":
        out.update({f"mim_head.{k}": v.detach().cpu().contiguous() for k, v in model.mim_head.state_dict().items()})
    return out


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write ``state`` as safetensors atomically; the same tensors give the same bytes (the metadata
    is one sorted JSON string under the key ``mambava``: safetensors orders several keys at random)."""
    from safetensors.torch import save_file

    from mambava.io import atomic_path

    with atomic_path(Path(path), ".tmp.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"mambava": json.dumps(metadata, sort_keys=True)})


def provenance(metrics: dict, recipe: Recipe) -> dict:
    """The record that ships beside the checkpoint (``<checkpoint>.json``): what made it, from what,
    on what machine, how long it took."""
    import datetime
    import platform

    import timm

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"command": "mambava pretrain-faces --ship", **metrics, "recipe": asdict(recipe), "cpu": cpu,
            "torch": torch.__version__, "timm": timm.__version__,
            "date": datetime.date.today().isoformat()}


def population_spec(cfg):
    from mambava.data.population import PopulationSpec

    return PopulationSpec(**cfg.face_pretrain.population.model_dump())


def recipe_of(cfg) -> Recipe:
    fp = cfg.face_pretrain
    return Recipe(objective=fp.objective, steps=fp.steps, batch_size=fp.batch_size, lr=fp.lr,
                  weight_decay=fp.weight_decay, warmup_steps=fp.warmup_steps, mask_ratio=fp.mask_ratio,
                  mask_patch=cfg.mae_pretrain.encoder.patch_size, augment=fp.augment, seed=fp.seed,
                  save_every=fp.save_every)


def run(cfg, ship: bool = False, max_minutes: float | None = None, progress: bool = True) -> dict:
    """``mambava pretrain-faces``: pretrain ``mae_pretrain.encoder`` on the population (resumable);
    when done, write ``<out>/face_encoder.safetensors`` and ``<out>/metrics.json``, and with ``ship``
    copy the file to ``mae_pretrain.checkpoint`` (its SHA-256 goes into params.yaml by hand)."""
    from mambava.data.population import population
    from mambava.features.mae import EncoderSpec, build_encoder
    from mambava.io import file_sha256, write_bytes, write_json
    from mambava.workers import cpu_count

    fp, enc_cfg = cfg.face_pretrain, cfg.mae_pretrain.encoder
    cores = cpu_count()
    torch.set_num_threads(fp.threads or cores)
    spec = EncoderSpec.from_config(enc_cfg)
    pspec = population_spec(cfg)
    out = Path(fp.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    Path(fp.cache).parent.mkdir(parents=True, exist_ok=True)
    pop = population(pspec, fp.cache, workers=fp.workers or cores, progress=progress)
    render_s = time.perf_counter() - t0
    log.info("population: %s (%.0f s)", pspec.describe(), render_s)
    torch.manual_seed(fp.seed)
    model = FacePretrainer(build_encoder(spec), spec.embed_dim, spec.patch_size)
    recipe = recipe_of(cfg)
    images = torch.from_numpy(pop.images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(pop.labels)
    fingerprint = {"encoder": asdict(spec), "population": asdict(pspec), "mean": list(enc_cfg.mean),
                   "std": list(enc_cfg.std)}
    hist = train(model, images, labels, recipe, spec.img_size, enc_cfg.mean, enc_cfg.std, out=out,
                 fingerprint=fingerprint, progress=progress,
                 max_seconds=None if max_minutes is None else 60.0 * max_minutes)
    done = hist["step"] == recipe.steps
    metrics = {"done": done, "steps_done": hist["step"], "steps": recipe.steps,
               "encoder": spec.describe(), "objective": recipe.objective, "population": pspec.describe(),
               "train_seconds": hist["seconds"], "render_seconds": round(render_s, 1), "threads": torch.get_num_threads(),
               "loss_first": hist["loss"][0] if hist["loss"] else None, "loss_last": hist["loss"][-1] if hist["loss"] else None}
    if not done:
        log.info("pretraining stopped at step %d of %d; `mambava pretrain-faces` resumes it", metrics["steps_done"], recipe.steps)
        write_json(out / "metrics.json", metrics)
        return metrics
    meta = {"what": "mambava pretrain-faces", "encoder": json.dumps(asdict(spec)), "population": json.dumps(asdict(pspec)),
            "recipe": json.dumps(asdict(recipe))}
    final = out / "face_encoder.safetensors"
    write_safetensors(shipped_state(model, recipe.objective), final, meta)
    metrics["sha256"] = file_sha256(final)
    metrics["bytes"] = final.stat().st_size
    write_json(out / "metrics.json", metrics)
    log.info("wrote %s (%.1f MB, sha256 %s)", final, metrics["bytes"] / 1e6, metrics["sha256"])
    if ship:
        target = cfg.mae_pretrain.checkpoint
        if not target:
            raise ValueError("--ship: mae_pretrain.checkpoint is null; name the file to ship to in params.yaml")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, final.read_bytes())
        write_json(Path(target).with_suffix(".json"), provenance(metrics, recipe))
        log.info("shipped to %s: set mae_pretrain.checkpoint_sha256: %s in params.yaml", target, metrics["sha256"])
    return metrics
