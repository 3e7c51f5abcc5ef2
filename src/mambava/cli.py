"""The ``mambava`` command: one subcommand per DVC stage, plus tools.

Every subcommand reads ``params.yaml`` (``--params``) through :mod:`mambava.config`, optionally
with another profile (``--profile``), and calls library code (its handler in :mod:`mambava.commands`);
nothing here does the work itself. Heavy modules are imported inside the handlers so ``mambava
--help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# torch and numba each bring an OpenMP runtime; with the default (active) wait policy their idle
# threads spin against each other and on a 2-core machine every stage runs 2-10x slower
# (benchmarks/README.md). Must be set before either library is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mambava import commands as c
from mambava.checks import InputError
from mambava.config import ConfigError
from mambava.errors import UserError
from mambava.variants import VARIANTS

log = logging.getLogger("mambava")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, choices=VARIANTS, help="model variant (ablation)")
    p.add_argument("--level", default="mae", choices=("mae", "oracle"),
                   help="features: mae (the MAE encoder's) or oracle (the twin's rendered parameters)")
    p.add_argument("--fold", type=int, action="append", default=None,
                   help="only this fold (repeatable; 0 = official split, 1..5 = CV folds); default: every fold")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambava", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile to apply over the defaults (e.g. paper)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _encoder_commands, _study_commands, _video_commands, _report_commands):
        add(sub)
    return parser


def _data_commands(sub) -> None:
    """``data prepare | digest | validate | user-copy | crop`` and ``model summary``."""
    data = sub.add_parser("data", help="the data stage and tools").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("prepare", help="DVC stage `data`: generate the twin or index a real copy")
    p.set_defaults(func=c.cmd_data_generate)
    p = data.add_parser("digest", help="DVC stage `frames`: the SHA-256 of data.root's cropped_aligned/ (data/frames.json)")
    p.set_defaults(func=c.cmd_data_digest)
    p = data.add_parser("validate", help="check a copy in the official Aff-Wild2 layout")
    p.add_argument("--root", required=True, help="folder holding cropped_aligned/ and annotations/")
    p.add_argument("--test-list", default=None,
                   help="test video list to check against the frames (default: test_set_release.txt at the root, if there)")
    p.set_defaults(func=c.cmd_data_validate)
    p = data.add_parser("user-copy", help="write the twin as a licensed Aff-Wild2 copy looks (to rehearse the real-data path)")
    p.add_argument("--out", required=True, help="folder to write (cropped_aligned/, annotations/, test_set_release.txt)")
    p.add_argument("--videos", type=int, default=None, help="number of videos (default: data.synthetic.n_videos)")
    p.add_argument("--frames", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="video lengths (default: data.synthetic.min_frames, max_frames)")
    p.add_argument("--image-size", type=int, default=None, help="crop side (default: data.synthetic.image_size)")
    p.add_argument("--workers", type=int, default=None, help="videos drawn at once (default: data.synthetic.workers)")
    p.set_defaults(func=c.cmd_data_user_copy)
    p = data.add_parser("crop", help="raw videos -> aligned face crops in the official layout (ROOT/cropped_aligned/)")
    p.add_argument("--videos", required=True, help="a folder of videos (mp4, avi, mov, mkv) or one video file")
    p.add_argument("--out", required=True, help="ROOT: crops go to ROOT/cropped_aligned/<video>/, logs to ROOT/crop_log/")
    p.add_argument("--faces", type=int, default=1, choices=(1, 2), help="2: <video>_left and <video>_right")
    p.add_argument("--workers", type=int, default=None, help="videos in parallel (default: crop.workers, else all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=c.cmd_data_crop)

    model = sub.add_parser("model", help="the temporal model").add_subparsers(dest="model_cmd", required=True)
    p = model.add_parser("summary", help="print the layer table and parameter count of a profile's model")
    p.set_defaults(func=c.cmd_model_summary)


def _encoder_commands(sub) -> None:
    """The frame encoder's stages and tools, from pretraining to features."""
    p = sub.add_parser("mae-pretrain", help="DVC stage `mae_pretrain`: masked-autoencoder pretraining (or a local checkpoint)")
    p.set_defaults(func=c.cmd_mae_pretrain)
    p = sub.add_parser("pretrain-faces", help="pretrain the face encoder on the population (once, outside dvc repro; resumable)")
    p.add_argument("--ship", action="store_true", help="when done, copy the result to mae_pretrain.checkpoint")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this long (at a saved step); run again to resume")
    p.set_defaults(func=c.cmd_pretrain_faces)
    p = sub.add_parser("face-probe", help="DVC stage `face_probe` (twin only): a linear probe of the frozen encoders for the drawn cues")
    p.set_defaults(func=c.cmd_face_probe)
    p = sub.add_parser("mae-finetune", help="DVC stage `mae_finetune`: frame-level valence/arousal fine-tuning")
    p.set_defaults(func=c.cmd_mae_finetune)
    p = sub.add_parser("features", help="DVC stage `features`: per-video CLS features of every frame")
    p.set_defaults(func=c.cmd_features)


def _study_commands(sub) -> None:
    """Folds, training, evaluation and the ladder and leakage stages."""
    p = sub.add_parser("folds", help="DVC stage `folds`: fold 0 = official split, folds 1-5 = grouped CV")
    p.set_defaults(func=c.cmd_folds)
    p = sub.add_parser("oracle", help="DVC stage `oracle_features`: the twin's rendered parameters as features")
    p.set_defaults(func=c.cmd_oracle)
    p = sub.add_parser("train", help="DVC stage `train`: one variant on every fold and seed (finished runs are kept)")
    _run_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=c.cmd_train)
    p = sub.add_parser("evaluate", help="DVC stage `evaluate`: predictions, CCCs, test submission of every run of a variant")
    _run_args(p)
    p.set_defaults(func=c.cmd_evaluate)
    p = sub.add_parser("ladder", help="DVC stage `ladder`: label ceiling, oracle and face-encoder features, by variant")
    p.set_defaults(func=c.cmd_ladder)
    p = sub.add_parser("leakage", help="DVC stage `leakage`: how optimistic the paper's protocol is (randomised)")
    p.set_defaults(func=c.cmd_leakage)


def _video_commands(sub) -> None:
    """Own videos: ``predict`` and the bundles it reads (``export``)."""
    p = sub.add_parser("predict", help="valence and arousal of your own videos (or cropped folders): CSV, PNG [, MP4]")
    p.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files, cropped folders (00001.jpg ...), or with --stream a camera (/dev/video0, camera:0)")
    p.add_argument("--model", default=None, help="a bundle folder written by `mambava export`")
    p.add_argument("--variant", default=None, help="or a run of this pipeline: its variant ...")
    p.add_argument("--fold", type=int, default=None, help="... and fold")
    p.add_argument("--out", default="predictions", help="folder for <video>.csv, .png, .mp4 and crops/ (default: predictions)")
    p.add_argument("--faces", type=int, default=1, choices=(1, 2), help="2: the left and right person of each frame")
    p.add_argument("--overlay", action="store_true", help="also <video>.mp4 with the face box and the values drawn")
    p.add_argument("--stream", action="store_true", help="one frame at a time (latency one frame); a file or a camera")
    p.add_argument("--quiet", action="store_true", help="with --stream: do not print each frame's values")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=c.cmd_predict)

    p = sub.add_parser("export", help="a shareable bundle of a run: safetensors weights, settings, metrics, model card")
    p.add_argument("--variant", required=True, choices=VARIANTS, help="model variant (ablation)")
    p.add_argument("--fold", type=int, required=True, help="0 = official split, 1..5 = CV folds (face-encoder features, primary seed)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.set_defaults(func=c.cmd_export)


def _report_commands(sub) -> None:
    """The plots stage, the book's tools and ``where``."""
    p = sub.add_parser("plots", help="DVC stage `plots`: static PNGs of the training logs, results.csv")
    p.add_argument("--out", default="outputs/plots", help="folder for the images and results.csv")
    p.set_defaults(func=c.cmd_plots)

    book = sub.add_parser("book", help="the Jupyter Book: strip, check, screenshots").add_subparsers(
        dest="book_cmd", required=True)
    p = book.add_parser("strip", help="remove volatile metadata from executed notebooks (in place)")
    p.add_argument("notebooks", nargs="+")
    p.set_defaults(func=c.cmd_book_strip)
    p = book.add_parser("check", help="check the built HTML: errors, images, tables, network assets")
    p.add_argument("html", nargs="?", default="book/_build/html")
    p.set_defaults(func=c.cmd_book_check)
    p = book.add_parser("screenshots", help="PNG of every page in headless Chromium (Debian's chromium)")
    p.add_argument("html", nargs="?", default="book/_build/html")
    p.add_argument("--out", default="outputs/book_screenshots")
    p.set_defaults(func=c.cmd_book_screenshots)

    p = sub.add_parser("where", help="print where the results are")
    p.set_defaults(func=c.cmd_where)


# Stages that run in several processes under torchrun (docs/scaling-out.md); the others would
# only do the same work N times.
DISTRIBUTED_COMMANDS = ("features", "train")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = os.environ.get("WORLD_SIZE", "1")
    if args.command not in DISTRIBUTED_COMMANDS and world.isdigit() and int(world) > 1:
        print(f"error: `mambava {args.command}` runs in one process; start it without torchrun "
              f"(WORLD_SIZE={world}; only {' and '.join(DISTRIBUTED_COMMANDS)} use several processes)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        return report_error(exc, verbose=args.verbose)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# Errors a user can fix: a missing file, bad input data, a setting that cannot work, a diverged
# run. They are printed as `error: <file>[:<line>]: <what>` lines, without a traceback, and exit
# with code 2; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (InputError, UserError, ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                   PermissionError)


def error_message(exc: BaseException) -> str:
    """The message of an expected error; OS errors as `<file>: <reason>`."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def report_error(exc: BaseException, verbose: bool = False) -> int:
    if verbose:
        import traceback

        traceback.print_exception(exc)
    for line in error_message(exc).splitlines():
        if line.strip():
            print(f"error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
