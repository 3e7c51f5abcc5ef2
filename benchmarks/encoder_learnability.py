"""Why the MAE rung is empty: can a frame encoder learn to read the twin's faces in the CPU budget?

    python benchmarks/encoder_learnability.py            # 23 minutes on 2 cores shared with a dvc repro
    python benchmarks/encoder_learnability.py --quick    # a fifth of the steps

Needs the twin and the `mae_pretrain` output of the pipeline (`dvc repro mae_pretrain`). Trains
frame regressors for a fixed number of steps on the frames of the encoder videos (every second
frame) and scores them on 4,000 frames of the validation videos (`mambava.features.learnability`):

* a small CNN and the pipeline's ViT (from its MAE checkpoint, `mae_finetune`'s learning rate) on
  what the twin drew (mouth curve, eye opening): can the encoder read the pixels at all?
* the same ViT at 64x64 with 8-pixel patches (the grid of a 112/16 ViT, finer patches);
* the CNN at 112x112 (the crops' size);
* the CNN on the labels as `mae_finetune` uses them (within-video targets).

Writes benchmarks/results/encoder_learnability.json (the Features page of the book plots it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "encoder_learnability.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import os
    from dataclasses import asdict, replace

    import torch

    from mambava.config import load_config
    from mambava.data.affwild2 import load_index
    from mambava.data.oracle import truth_dir
    from mambava.features import learnability as L
    from mambava.features.finetune import fine_tune_videos
    from mambava.features.mae import EncoderSpec
    from mambava.features.pretrain import checkpoint_file
    from mambava.io import write_json

    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    cfg = load_config("params.yaml")
    if cfg.data.source != "synthetic":
        print(f"encoder_learnability: needs the twin's drawn parameters; data.source is {cfg.data.source}", file=sys.stderr)
        return 2
    index = load_index(cfg.data.index)
    enc_cfg, fc = cfg.mae_pretrain.encoder, cfg.mae_finetune
    spec = EncoderSpec.from_config(enc_cfg)
    ckpt = checkpoint_file(cfg)
    if not ckpt.exists():
        print(f"encoder_learnability: {ckpt} is missing; run `dvc repro mae_pretrain` first", file=sys.stderr)
        return 2
    train = L.load_frames(index, truth_dir(cfg), "train", videos=fine_tune_videos(cfg), every=2)
    val = L.load_frames(index, truth_dir(cfg), "validation", max_frames=4000)
    scale = 0.2 if args.quick else 1.0
    s = lambda n: max(10, int(n * scale))  # noqa: E731
    common = dict(batch=fc.batch_size, mean=enc_cfg.mean, std=enc_cfg.std, seed=cfg.seed)
    small = replace(spec, img_size=64, patch_size=8)
    plan = [
        ("cnn_drawn_64", "cnn", "drawn", dict(size=64, steps=s(600), lr=1e-3)),
        ("vit_drawn", "vit", "drawn", dict(size=spec.img_size, steps=s(600), lr=fc.lr, spec=spec, checkpoint=ckpt)),
        ("vit_drawn_64_p8", "vit", "drawn", dict(size=64, steps=s(600), lr=fc.lr, spec=small)),
        ("cnn_drawn_112", "cnn", "drawn", dict(size=112, steps=s(600), lr=1e-3)),
        ("cnn_labels_64", "cnn", "labels", dict(size=64, steps=s(1500), lr=1e-3)),
    ]
    runs = []
    for name, encoder, target, kw in plan:
        r = L.run_one(name, encoder, target, train, val, **common, **kw)
        if encoder == "vit":
            r["spec"] = asdict(kw["spec"])
        runs.append(r)
    payload = {"machine": machine(), "train_frames": len(train), "train_videos": int(len(set(train.video_of))),
               "val_frames": len(val), "val_videos": int(len(set(val.video_of))), "drawn": list(L.DRAWN),
               "quick": args.quick, "runs": runs}
    write_json(Path(args.out), payload)
    rows = []
    for r in runs:
        last = r["curve"][-1]
        rows.append([r["name"], r["encoder"], r["target"], f"{r['size']}", f"{r['steps']}", f"{last['train_loss']:.3f}",
                     f"{last['r_mouth_curve']:+.3f}", f"{last['r_eye_open']:+.3f}",
                     f"{last['ccc_valence']:+.3f}" if "ccc_valence" in last else "", f"{last['seconds']:.0f}"])
    print_table(["run", "encoder", "target", "px", "steps", "loss", "r mouth", "r eye", "CCC_v", "s"], rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
