"""Does a frozen face encoder read expressions? A linear probe across people.

A ridge regression (:func:`mambava.features.learnability.linear_probe`, its penalty chosen by
cross-validation grouped by person) maps an encoder's frozen per-frame features (exactly what the
pipeline extracts: ``encoder(frame)``) to the parameters the twin drew into each frame (mouth
curve, brow tilt, eye opening; :data:`mambava.data.population.DRAWN`). It is fitted on frames of
*pretraining* people (:mod:`mambava.data.population`) and scored, as Pearson r, on frames of the
*study's* validation people, read from their JPEG crops with the drawn parameters from the twin's
truth files: people the encoder and the probe never saw. The drawn parameters are the probe's
targets only; no encoder is trained on them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mambava.data.population import DRAWN
from mambava.features.learnability import pearson  # noqa: F401  (re-exported for the probe's users)


@torch.inference_mode()
def frozen_features(encoder: nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 256) -> np.ndarray:
    """``encoder(frame)`` of uint8 images (N, 3, S, S) in eval mode: (N, D) float32."""
    from mambava.features.facepretrain import prepare

    was_training = encoder.training
    encoder.eval()
    out = [encoder(prepare(images[i:i + batch], size, mean, std)).float().numpy() for i in range(0, len(images), batch)]
    encoder.train(was_training)
    return np.concatenate(out)


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, groups: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, columns=DRAWN) -> dict:
    """Ridge from ``train_x`` to each column of ``train_y`` (penalty chosen per column across the
    ``groups``), scored as Pearson r on ``test_x`` / ``test_y``: {"r_<col>": r, "alpha_<col>": a}."""
    from mambava.features.learnability import linear_probe

    out = {}
    for j, c in enumerate(columns):
        pred, alpha = linear_probe(train_x, train_y[:, j], groups, test_x)
        out[f"r_{c}"] = round(pearson(pred, test_y[:, j]), 4)
        out[f"alpha_{c}"] = alpha
    return out


def encoder_probe(encoder: nn.Module, size: int, mean, std, train_images: torch.Tensor, train_drawn: np.ndarray,
                  train_groups: np.ndarray, test_images: torch.Tensor, test_drawn: np.ndarray) -> dict:
    """:func:`probe_scores` of ``encoder``'s frozen features (uint8 images, (N, 3, S, S))."""
    fx = frozen_features(encoder, train_images, size, mean, std)
    tx = frozen_features(encoder, test_images, size, mean, std)
    return probe_scores(fx, train_drawn, train_groups, tx, test_drawn)


PROBE_PEOPLE = 0.1  # the share of the population whose frames fit the probe (seeded split)
STUDY_FRAMES = 3000  # study validation frames scored, evenly spaced


def run(cfg, progress: bool = True) -> dict:
    """The `face_probe` stage (twin only): the probe of the encoder at random initialisation, of the
    pretrained checkpoint (``mae_pretrain.checkpoint``, hash checked) and of the fine-tuned encoder
    (``mae_finetune``), written to ``<mae_finetune.out>/../face_probe/probe.json``. On real data
    (no drawn parameters) it writes a file that says so."""
    import logging
    import time
    from pathlib import Path

    from mambava.data.affwild2 import load_index
    from mambava.data.oracle import truth_dir
    from mambava.data.population import build_population, split_people
    from mambava.features.facepretrain import population_spec
    from mambava.features.learnability import load_frames
    from mambava.features.mae import EncoderSpec, load_encoder
    from mambava.features.pretrain import verified_checkpoint
    from mambava.features.finetune import checkpoint_file as finetuned
    from mambava.io import write_json, write_timing

    log = logging.getLogger(__name__)
    out = Path(cfg.face_probe.out)
    if cfg.data.source != "synthetic":
        msg = "skipped: the probe needs the twin's drawn parameters (data.source is not synthetic)"
        log.info("face_probe %s", msg)
        write_json(out / "probe.json", {"skipped": msg, "rows": []})
        return {"skipped": msg}
    t0 = time.perf_counter()
    enc_cfg = cfg.mae_pretrain.encoder
    spec = EncoderSpec.from_config(enc_cfg)
    pspec = population_spec(cfg)
    _, people = split_people(pspec.n_people, PROBE_PEOPLE, cfg.face_pretrain.seed)
    pop = build_population(pspec, workers=1, progress=progress, people=people)
    train_images = torch.from_numpy(pop.images).permute(0, 3, 1, 2)
    study = load_frames(load_index(cfg.data.index), truth_dir(cfg), "validation", max_frames=STUDY_FRAMES, columns=DRAWN)
    encoders = [("random initialisation", None), ("pretrained (shipped checkpoint)", verified_checkpoint(cfg.mae_pretrain)),
                ("fine-tuned (mae_finetune)", str(finetuned(cfg)))]
    rows = []
    for name, path in encoders:
        torch.manual_seed(cfg.seed)
        enc = load_encoder(spec, path)
        scores = encoder_probe(enc, spec.img_size, enc_cfg.mean, enc_cfg.std, train_images, pop.drawn, pop.person,
                               study.images, study.drawn)
        rows.append({"encoder": name, "checkpoint": path, **scores})
        log.info("face probe, %s: %s", name, {k: v for k, v in scores.items() if k.startswith("r_")})
    result = {"encoder": spec.describe(), "population": pspec.describe(), "probe_people": int(len(people)),
              "probe_frames": int(len(pop)), "study_frames": int(len(study)),
              "study_videos": int(len(np.unique(study.video_of))), "targets": list(DRAWN), "rows": rows}
    write_json(out / "probe.json", result)  # no timing inside: the same run gives the same bytes
    write_timing(out, "face_probe", {"seconds": round(time.perf_counter() - t0, 1)})
    return result
