"""``mambava export``: a shareable model bundle, and its loader (``predict --model DIR``).

A bundle is a folder holding everything :mod:`mambava.predict` needs, with no pickled code::

    encoder.safetensors     the fine-tuned ViT encoder (timm VisionTransformer state dict)
    temporal.safetensors    the temporal model (MambaVA state dict)
    bundle.json             format, variant and fold; the model, encoder (with the image
                            normalisation), crop, inference and feature-batch settings; the
                            metrics the run reached (validation, and test where labelled); a
                            SHA-256 of the data it was trained on; the SHA-256 of both weight files
    params.yaml             the full effective parameters of the run that built it
    MODEL_CARD.md           a short model card generated from the above

The data hash covers, for the fold's training and validation videos in name order, the video
name, its role, its frame count and the SHA-256 of its annotation file (the labels), and the
SHA-256 of the data index: two bundles with one data hash were trained on the same labelled
videos. Weights are read with ``safetensors`` (tensors only) and the settings from JSON, so
loading a bundle from someone else runs none of their code. The folder is written beside its
target and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from mambava.errors import UserError
from mambava.io import replace_dir

FORMAT = "mambava-bundle/1"
FILES = ("encoder.safetensors", "temporal.safetensors")


class BundleError(UserError):
    """A bundle that cannot be used; the message names the file."""


def _sha256(path: Path) -> str:
    from mambava.io import file_sha256

    return file_sha256(path)


def data_hash(cfg, fold: int) -> str:
    """SHA-256 of the labelled videos a (fold's) run was trained and selected on (module doc)."""
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import fold_videos, read_folds

    index = load_index(cfg.data.index).set_index("video")
    train, val = fold_videos(read_folds(cfg.folds.file), fold)
    items = []
    for role, names in (("train", train), ("validation", val)):
        for v in sorted(names):
            ann = index.at[v, "annotation"]
            items.append([v, role, int(index.at[v, "n_frames"]),
                          _sha256(Path(ann)) if isinstance(ann, str) and ann else None])
    h = hashlib.sha256(json.dumps({"index": _sha256(Path(cfg.data.index)), "videos": items}).encode())
    return h.hexdigest()


def _metrics(run: Path) -> dict:
    keep = ("ccc_valence", "ccc_arousal", "p_va", "n_frames", "n_videos", "ccc_valence_lo", "ccc_valence_hi",
            "ccc_arousal_lo", "ccc_arousal_hi", "p_va_lo", "p_va_hi", "n_params", "best_step")
    out = {}
    for split, path in (("validation", run / "metrics.json"), ("test", run / "test" / "metrics.json")):
        if path.exists():
            m = json.loads(path.read_text())
            out[split] = {k: m[k] for k in keep if k in m}
    if not out:
        raise BundleError(f"{run / 'metrics.json'}: the run has no metrics (run `dvc repro evaluate` first)")
    return out


def model_card(meta: dict) -> str:
    m, e, c = meta["model"], meta["encoder"], meta["crop"]
    lines = [
        f"# Mamba-VA model: {meta['variant']}, fold {meta['fold']}",
        "",
        f"Per-frame valence and arousal (each in [-1, 1]) from face video: a {'ViT' if e.get('arch', 'vit') == 'vit' else 'ResNet'} "
        "frame encoder (pretrained, fine-tuned on",
        "frame-level valence/arousal) gives one feature per aligned face crop; a temporal model",
        f"(TCN {m['tcn_channels'] if m['tcn'] else 'off'}, {m['temporal']} x {m['n_layers']}, d_model {m['d_model']})",
        "turns the sequence into per-frame predictions. Made with `mambava export`; use it with",
        "`mambava predict VIDEO --model THIS_FOLDER`.",
        "",
        "## Inputs",
        f"- Face crops {c['size']}x{c['size']}, eyes level, {c['eye_distance']:.3f} of the side apart at height "
        f"{c['eye_y']:.3f} (what `mambava data crop` makes with these settings).",
        f"- Encoder: {_encoder_text(e)}; normalisation mean {e['mean']}, std {e['std']}.",
        f"- Inference: {meta['evaluate']['inference']}"
        + (f" ({meta['evaluate']['window']}/{meta['evaluate']['stride']} windows)" if meta["evaluate"]["inference"] == "windows" else "")
        + ".",
        "",
        "## Results of this run",
        "| split | CCC valence | CCC arousal | P_VA | frames | videos |",
        "|---|---|---|---|---|---|",
    ]
    for split, r in meta["metrics"].items():
        if "ccc_valence" in r:
            lines.append(f"| {split} | {r['ccc_valence']:.4f} | {r['ccc_arousal']:.4f} | {r['p_va']:.4f} | "
                         f"{r.get('n_frames', '')} | {r.get('n_videos', '')} |")
        else:
            lines.append(f"| {split} | (no labels) | | | {r.get('n_frames', '')} | {r.get('n_videos', '')} |")
    lines += [
        "",
        "## Training data",
        f"- Data source: `{meta['data_source']}` (profile `{meta['profile']}`); data hash (labels and frame counts of",
        f"  the training and validation videos of fold {meta['fold']}): `{meta['data_sha256']}`.",
        "- The twin (`synthetic`) is a generated stand-in for Aff-Wild2: a model trained on it has learnt cartoon",
        "  faces and is a demonstration, not a model of real emotion.",
        "",
        "## Limits",
        "- Valence and arousal are what annotators perceived in the face; they are not a measure of what a person feels.",
        "- Crops come from OpenCV's Haar cascades: frontal faces; profiles and small faces are missed (no value is given).",
        "",
        "## Files",
    ]
    lines += [f"- `{name}`: SHA-256 `{h}`" for name, h in meta["files"].items()]
    return "\n".join(lines) + "\n"


def export(cfg, variant: str, fold: int, out: str | Path) -> Path:
    """Write the bundle of a pipeline run (module doc) to ``out``; returns ``out``."""
    from safetensors.torch import save_file

    import mambava
    from mambava.runtime import eval_dir
    from mambava.predict import from_run

    pred = from_run(cfg, variant, fold)
    run = eval_dir(cfg, "mae", variant, fold)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "bundle.json").exists():
        raise BundleError(f"{out}: exists and is not a bundle; choose an empty or new folder")
    staging = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, module in zip(FILES, (pred.encoder, pred.model)):
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(staging / name), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "variant": variant,
            "fold": fold,
            "profile": cfg.profile,
            "data_source": cfg.data.source,
            "model": pred.model.cfg.model_dump(),
            "encoder": cfg.mae_pretrain.encoder.model_dump(),
            "crop": cfg.crop.model_dump(),
            "evaluate": {"inference": cfg.evaluate.inference, "window": cfg.evaluate.window, "stride": cfg.evaluate.stride},
            "features": {"batch_size": cfg.features.batch_size},
            "metrics": _metrics(run),
            "data_sha256": data_hash(cfg, fold),
            "encoder_checkpoint_sha256": _sha256(Path(cfg.mae_finetune.out) / "checkpoint.pt"),
            "files": {name: _sha256(staging / name) for name in FILES},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"mambava": mambava.__version__ if hasattr(mambava, "__version__") else "",
                         "torch": torch.__version__},
        }
        (staging / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
        (staging / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        (staging / "MODEL_CARD.md").write_text(model_card(meta))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out)
    return out


def _encoder_text(e: dict) -> str:
    if e.get("arch", "vit") == "resnet":
        return (f"ResNet, stages {e['channels']} x {e['layers']} blocks, {e['img_size']} px, output stride "
                f"{e['patch_size']}, width {e['embed_dim']}")
    return f"ViT patch {e['patch_size']}, {e['img_size']} px, width {e['embed_dim']}, depth {e['depth']}"


def load_bundle(path: str | Path, device: str | torch.device = "cpu"):
    """The :class:`mambava.predict.Predictor` of a bundle; BundleError naming the file when the
    bundle is incomplete, altered, or its encoder and temporal model do not fit together."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mambava.config import CropConfig, EncoderConfig, ModelConfig
    from mambava.features.mae import EncoderSpec, build_encoder
    from mambava.models.mamba_va import MambaVA
    from mambava.predict import Predictor

    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: not found ({path} is not a model bundle; make one with `mambava export`)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format {meta.get('format')!r}, this mambava reads {FORMAT!r}")
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle")
        want = meta.get("files", {}).get(name)
        if want and _sha256(f) != want:
            raise BundleError(f"{f}: SHA-256 differs from bundle.json (the file was changed or damaged)")
    try:
        mcfg = ModelConfig.model_validate(meta["model"])
        ecfg = EncoderConfig.model_validate(meta["encoder"])
        ccfg = CropConfig.model_validate(meta["crop"])
    except (KeyError, ValidationError) as exc:
        raise BundleError(f"{meta_path}: bad settings ({str(exc).splitlines()[0]})") from None
    if ecfg.embed_dim != mcfg.input_dim:
        raise BundleError(f"{meta_path}: the encoder gives {ecfg.embed_dim}-d features but the temporal model reads "
                          f"{mcfg.input_dim}-d (encoder and temporal model do not belong together)")
    device = torch.device(device)
    encoder = build_encoder(EncoderSpec.from_config(ecfg))
    model = MambaVA(mcfg)
    for name, module in zip(FILES, (encoder, model)):
        try:
            state = load_file(str(path / name), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{path / name}: cannot be read as safetensors ({exc})") from None
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:2] or [str(exc)[:200]]
            raise BundleError(f"{path / name}: does not fit the model described in bundle.json ({first[0]})") from None
    ev = meta.get("evaluate", {})
    return Predictor(encoder.to(device).eval(), model.to(device).eval(), ecfg, ccfg, ev.get("inference", "whole"),
                     ev.get("window", 500), ev.get("stride", 500), meta.get("features", {}).get("batch_size", 256),
                     device, f"bundle {path.name}: {meta.get('variant')} fold {meta.get('fold')}")
