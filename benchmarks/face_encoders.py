"""Which face encoder and pretraining recipe learn to read expressions on a CPU? Side by side.

    python benchmarks/face_encoders.py --candidate resnet-both --steps 1200 --eval-every 300
    python benchmarks/face_encoders.py --summary      # the table of every candidate measured so far

Each candidate (an encoder family and an objective of :mod:`mambava.features.facepretrain`) is
pretrained on the face population (:mod:`mambava.data.population`: people who are not in the study),
and at step 0 and every ``--eval-every`` steps its frozen features are probed
(:mod:`mambava.features.probe`): a ridge regression fitted on 300 pretraining people's frames and
scored on the study's validation people for the drawn mouth curve, brow tilt and eye opening.
Needs the twin (`dvc repro data`). One candidate per process (run two at once with --threads 1 on
2 cores); each writes benchmarks/results/face_encoders/<candidate>.json, and --summary gathers them
into benchmarks/results/face_encoders.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = RESULTS / "face_encoders"

ENCODERS = {
    # the pipeline's ViT (params.yaml before the face pretraining)
    "vit": dict(arch="vit", img_size=112, patch_size=16, embed_dim=192, depth=6, num_heads=3),
    # a timm ResNet of basic blocks, one per stage, 192-d like the ViT, output stride 16 (7x7 grid)
    "resnet": dict(arch="resnet", img_size=112, patch_size=16, embed_dim=192, channels=(32, 64, 128, 192),
                   layers=(1, 1, 1, 1)),
}
CANDIDATES = {f"{e}-{o}": (e, o) for e in ENCODERS for o in ("supervised", "masked", "both")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", choices=sorted(CANDIDATES))
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3 (resnet), 1e-3 (vit)")
    ap.add_argument("--people", type=int, default=3000)
    ap.add_argument("--size", type=int, default=112, help="encoder input size (the crops are resized to it)")
    ap.add_argument("--stride", type=int, default=16, help="ViT patch / ResNet output stride (= masked square)")
    ap.add_argument("--augment", default="colour", choices=("none", "flip", "colour"))
    ap.add_argument("--tag", default="", help="suffix of the result file (several settings of one candidate)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(ROOT / "outputs" / "face_population" / "bench.npz"))
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--probe-only", metavar="CHECKPOINT", help="probe a finished `mambava pretrain-faces` result "
                    "(its face_encoder.safetensors; the encoder is read from its metadata) instead of training; "
                    "--candidate and --tag name the row")
    ap.add_argument("--readouts", metavar="ROWS", help="with --probe-only (a ResNet): probe the last map averaged over "
                    "each of these numbers of horizontal bands (e.g. 1,2,4), one row each: which readout keeps the cues")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.summary:
        return summary()
    if not args.candidate:
        ap.error("--candidate or --summary")

    import numpy as np
    import torch

    from mambava.config import load_config
    from mambava.data.affwild2 import load_index
    from mambava.data.oracle import truth_dir
    from mambava.data.population import DRAWN, PopulationSpec, population, split_people
    from mambava.features import facepretrain as FP
    from mambava.features.learnability import load_frames
    from mambava.features.mae import EncoderSpec, build_encoder
    from mambava.features.probe import encoder_probe
    from mambava.io import write_json

    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "params.yaml")
    if cfg.data.source != "synthetic":
        print("face_encoders: the probe needs the twin's drawn parameters (data.source: synthetic)")
        return 2
    enc_name, objective = CANDIDATES[args.candidate]
    spec = EncoderSpec(**{**ENCODERS[enc_name], "img_size": args.size, "patch_size": args.stride})
    mean, std = cfg.mae_pretrain.encoder.mean, cfg.mae_pretrain.encoder.std
    t0 = time.perf_counter()
    pspec = PopulationSpec(n_people=args.people)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    pop = population(pspec, args.cache, workers=args.threads)
    logging.info("population: %s in %.0f s", pspec.describe(), time.perf_counter() - t0)
    images = torch.from_numpy(pop.images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(pop.labels)
    _, probe_people = split_people(pspec.n_people, 0.1, 0)
    sel = np.isin(pop.person, probe_people)
    index = load_index(cfg.data.index)
    study = load_frames(index, truth_dir(cfg), "validation", max_frames=3000, columns=DRAWN)
    logging.info("probe: %d population frames of %d people -> %d study validation frames",
                 int(sel.sum()), len(probe_people), len(study))

    if args.probe_only:
        from safetensors import safe_open

        with safe_open(args.probe_only, "pt") as f:  # the checkpoint's own encoder (what pretrain-faces trained)
            spec = EncoderSpec(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in json.loads(json.loads(f.metadata()["mambava"])["encoder"]).items()})
    torch.manual_seed(0)
    encoder = build_encoder(spec)
    if args.probe_only:
        return probe_only(args, spec, encoder, images[sel], pop.drawn[sel], pop.person[sel], study, mean, std, objective)
    model = FP.FacePretrainer(encoder, spec.embed_dim, spec.patch_size)
    lr = args.lr or (2e-3 if enc_name == "resnet" else 1e-3)
    recipe = FP.Recipe(objective=objective, steps=args.steps, batch_size=args.batch, lr=lr,
                       warmup_steps=min(100, args.steps // 10), save_every=10**9, mask_patch=args.stride,
                       augment=args.augment)

    def on_eval(step):
        return encoder_probe(encoder, spec.img_size, mean, std, images[sel], pop.drawn[sel], pop.person[sel],
                             study.images, study.drawn)

    first = {"step": 0, "seconds": 0.0, **on_eval(0)}
    logging.info("%s", first)
    hist = FP.train(model, images, labels, recipe, spec.img_size, mean, std, on_eval=on_eval,
                    eval_every=args.eval_every)
    hist["evals"].insert(0, first)
    name = args.candidate + (f"-{args.tag}" if args.tag else "")
    out = {"candidate": name, "encoder": spec.describe(), "objective": objective,
           "params": int(sum(p.numel() for p in encoder.parameters())), "population": pspec.describe(),
           "recipe": {k: v for k, v in vars(recipe).items()}, "threads": args.threads, "machine": machine(),
           "evals": hist["evals"], "loss": hist["loss"][::4] + hist["loss"][-1:],
           "seconds_per_step": round(hist["seconds"] / max(1, args.steps), 3)}
    write_json(OUT_DIR / f"{name}.json", out)
    print_table(["step", "seconds", *DRAWN], [[str(e["step"]), str(e["seconds"]), *(f'{e[f"r_{c}"]:.3f}' for c in DRAWN)]
                                             for e in hist["evals"]])
    return 0


def probe_only(args, spec, encoder, images, drawn, groups, study, mean, std, objective) -> int:
    """One row for a finished pretraining run: the probe of its final weights."""
    from safetensors import safe_open

    from mambava.features.mae import load_encoder_weights
    from mambava.features.probe import encoder_probe
    from mambava.io import write_json

    load_encoder_weights(encoder, args.probe_only)
    with safe_open(args.probe_only, "pt") as f:
        meta = json.loads(f.metadata()["mambava"])
    recipe = json.loads(meta["recipe"])
    metrics_file = Path(args.probe_only).with_name("metrics.json")
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if args.readouts:
        return readouts(args, spec, encoder, images, drawn, groups, study, mean, std, meta, recipe)
    scores = encoder_probe(encoder, spec.img_size, mean, std, images, drawn, groups, study.images, study.drawn)
    name = args.candidate + (f"-{args.tag}" if args.tag else "")
    seconds = metrics.get("train_seconds", 0.0)
    out = {"candidate": name, "encoder": spec.describe(), "objective": objective, "population": meta["population"],
           "recipe": recipe, "threads": metrics.get("threads"), "machine": machine(), "checkpoint": args.probe_only,
           "evals": [{"step": recipe["steps"], "seconds": seconds, **scores}],
           "seconds_per_step": round(seconds / recipe["steps"], 3), "loss": [metrics.get("loss_last")]}
    write_json(OUT_DIR / f"{name}.json", out)
    print(name, scores)
    return 0


def readouts(args, spec, encoder, images, drawn, groups, study, mean, std, meta, recipe) -> int:
    """The probe of one checkpoint's last feature map under several readouts: the map averaged over
    1 (timm's global average), 2, ... horizontal bands (:class:`mambava.features.resnet.BandPool`).
    Writes benchmarks/results/face_readouts-<tag>.json (not a candidate row)."""
    import torch

    from mambava.features.facepretrain import prepare
    from mambava.features.resnet import BandPool
    from mambava.features.probe import probe_scores
    from mambava.io import write_json

    encoder.eval()

    @torch.inference_mode()
    def last_map(x):
        return torch.cat([encoder.forward_features(prepare(x[i:i + 256], spec.img_size, mean, std))
                          for i in range(0, len(x), 256)])

    train_map, test_map = last_map(images), last_map(study.images)
    rows = []
    for k in (int(r) for r in args.readouts.split(",")):
        pool = BandPool(k)
        scores = probe_scores(pool(train_map).numpy(), drawn, groups, pool(test_map).numpy(), study.drawn)
        rows.append({"bands": k, "dim": int(k * train_map.shape[1]), **scores})
        print(f"{k} band(s), {rows[-1]['dim']}-d:", {c: v for c, v in scores.items() if c.startswith("r_")})
    out = {"checkpoint": args.probe_only, "encoder": spec.describe(), "population": meta["population"], "recipe": recipe,
           "machine": machine(), "probe_frames": int(len(images)), "study_frames": int(len(study)), "rows": rows}
    write_json(OUT_DIR.parent / f"face_readouts-{args.tag or 'checkpoint'}.json", out)
    return 0


def summary() -> int:
    rows = []
    for path in sorted(OUT_DIR.glob("*.json")):
        r = json.loads(path.read_text())
        last = r["evals"][-1]
        rows.append({"candidate": r["candidate"], "steps": last["step"], "seconds": last["seconds"],
                     "s/step": r["seconds_per_step"],
                     **{k[2:]: last[k] for k in last if k.startswith("r_")},
                     **{f"{k[2:]}@0": (r["evals"][0][k] if r["evals"][0]["step"] == 0 else None)
                        for k in r["evals"][0] if k.startswith("r_")}})
    if rows:
        print_table(list(rows[0]), [[str(v) for v in r.values()] for r in rows])
    from mambava.io import write_json

    write_json(RESULTS / "face_encoders.json", {"rows": rows, "runs": [json.loads(p.read_text()) for p in sorted(OUT_DIR.glob("*.json"))]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
