"""Does MAE pretraining on the CPU encode what the twin draws? A linear probe of frozen features.

    python benchmarks/mae_probe.py                 # about 15 minutes on 2 cores
    python benchmarks/mae_probe.py --steps 500     # a shorter extra pretraining

Needs the twin and the `mae_pretrain` output of the pipeline (`dvc repro mae_pretrain`). Reads
every fourth frame of the encoder videos (training rows) and 4,000 frames of the validation videos
(scored rows), and fits a ridge regression from frozen features to the parameters the twin drew
into each frame (mouth curve, eye opening; `mambava.features.learnability.linear_probe`, penalty
chosen by grouped cross-validation over the training videos), once on the features as they are
and once within videos (each video's mean feature and mean target removed: identity, light and
background then explain nothing). Features compared:

* the raw pixels (grey, 32x32): what a straight line through the image reads;
* the configured ViT at random initialisation: what its architecture gives for free;
* the pipeline's MAE checkpoint (`mae_pretrain.steps` steps);
* the same MAE pretrained for ``--steps`` steps (8 times the default), written to a temporary
  folder and deleted afterwards (its losses are recorded).

Writes benchmarks/results/mae_probe.json (the Features page of the book shows it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="steps of the extra MAE pretraining (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "mae_probe.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import json
    import os
    import warnings
    from dataclasses import asdict

    import torch

    from mambava.config import load_config
    from mambava.data.affwild2 import load_index
    from mambava.data.oracle import truth_dir
    from mambava.features import learnability as L
    from mambava.features import pretrain
    from mambava.features.finetune import fine_tune_videos, within_video
    from mambava.features.mae import EncoderSpec, load_encoder
    from mambava.io import write_json

    os.chdir(ROOT)
    from scipy.linalg import LinAlgWarning

    warnings.filterwarnings("ignore", category=LinAlgWarning)  # ridge at the grid's smallest penalties
    torch.set_num_threads(args.threads)
    cfg = load_config("params.yaml")
    if cfg.data.source != "synthetic":
        print(f"mae_probe: needs the twin's drawn parameters; data.source is {cfg.data.source}", file=sys.stderr)
        return 2
    ckpt = pretrain.checkpoint_file(cfg)
    if not ckpt.exists():
        print(f"mae_probe: {ckpt} is missing; run `dvc repro mae_pretrain` first", file=sys.stderr)
        return 2
    index = load_index(cfg.data.index)
    enc_cfg = cfg.mae_pretrain.encoder
    spec = EncoderSpec.from_config(enc_cfg)
    train = L.load_frames(index, truth_dir(cfg), "train", videos=fine_tune_videos(cfg), every=4)
    val = L.load_frames(index, truth_dir(cfg), "validation", max_frames=4000)
    y = L.standardise(train.drawn, train.drawn)

    drawn_within = within_video(train.drawn, train.video_of)
    y_within = L.standardise(drawn_within, drawn_within)
    val_within = within_video(val.drawn, val.video_of)

    def score(name, what, Xtr, Xva, t0, **extra):
        """pooled: features and targets as they are; within: each video's mean feature and mean
        target removed (the per-video normalisation a temporal model could apply without labels)."""
        row = {"name": name, "features": what, "dim": int(Xtr.shape[1])}
        pred, row["alpha"] = L.linear_probe(Xtr, y, train.video_of, Xva)
        row.update({f"r_{c}": round(L.pearson(pred[:, j], val.drawn[:, j]), 4) for j, c in enumerate(L.DRAWN)})
        pred, row["alpha_within"] = L.linear_probe(within_video(Xtr, train.video_of), y_within, train.video_of,
                                                   within_video(Xva, val.video_of))
        row.update({f"r_within_{c}": round(L.pearson(pred[:, j], val_within[:, j]), 4) for j, c in enumerate(L.DRAWN)})
        row.update(seconds=round(time.perf_counter() - t0, 1), **extra)
        logging.info("%s", row)
        return row

    def vit(path):
        torch.manual_seed(cfg.seed)
        enc = load_encoder(spec, path)
        return (L.encoder_features(enc, train.images, spec.img_size, enc_cfg.mean, enc_cfg.std),
                L.encoder_features(enc, val.images, spec.img_size, enc_cfg.mean, enc_cfg.std))

    rows = []
    t0 = time.perf_counter()
    rows.append(score("pixels", "grey pixels 32x32", L.pixel_features(train.images), L.pixel_features(val.images), t0))
    t0 = time.perf_counter()
    rows.append(score("vit_random", "ViT at random initialisation (CLS + mean patch token)", *vit(None), t0))
    t0 = time.perf_counter()
    pipe_metrics = json.loads((Path(cfg.mae_pretrain.out) / "metrics.json").read_text())
    rows.append(score("mae_pipeline", f"the pipeline's MAE checkpoint ({cfg.mae_pretrain.steps} steps)", *vit(ckpt), t0,
                      mae_steps=cfg.mae_pretrain.steps, mae=pipe_metrics))
    if args.steps > 0:
        with tempfile.TemporaryDirectory(prefix="mae_probe_") as tmp:
            pc = cfg.mae_pretrain.model_copy(update={"steps": args.steps, "out": tmp, "checkpoint": None,
                                                     "warmup_steps": max(cfg.mae_pretrain.warmup_steps, args.steps // 20)})
            long_cfg = cfg.model_copy(update={"mae_pretrain": pc})
            t0 = time.perf_counter()
            metrics = pretrain.run(long_cfg)
            rows.append(score("mae_long", f"MAE pretrained for {args.steps} steps", *vit(pretrain.checkpoint_file(long_cfg)),
                              t0, mae_steps=args.steps, mae=metrics))
    payload = {"machine": machine(), "spec": asdict(spec), "train_frames": len(train),
               "train_videos": int(len(set(train.video_of))), "val_frames": len(val),
               "val_videos": int(len(set(val.video_of))), "drawn": list(L.DRAWN), "runs": rows}
    write_json(Path(args.out), payload)
    print_table(["features", "dim", "r mouth", "r eye", "r mouth (within)", "r eye (within)", "MAE loss (train, held out)", "s"],
                [[r["features"], f"{r['dim']}", f"{r['r_mouth_curve']:+.3f}", f"{r['r_eye_open']:+.3f}",
                  f"{r['r_within_mouth_curve']:+.3f}", f"{r['r_within_eye_open']:+.3f}",
                  f"{r['mae'].get('train_loss_last')}, {r['mae'].get('heldout_loss')}" if "mae" in r else "",
                  f"{r['seconds']:.0f}"] for r in rows])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
