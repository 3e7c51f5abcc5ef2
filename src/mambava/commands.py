"""What each ``mambava`` subcommand does (:mod:`mambava.cli` parses the command line and calls
these): read ``params.yaml`` through :mod:`mambava.config` and call library code; nothing here does
the work itself. Heavy modules are imported inside the handlers so ``mambava --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mambava.config import load_config
from mambava.errors import UserError


def _cfg(args):
    return load_config(args.params, profile=args.profile)


# --------------------------------------------------------------------------- data
def cmd_data_generate(args) -> int:
    from mambava.data.prepare import prepare

    prepare(_cfg(args), args.params)
    return 0


def cmd_data_digest(args) -> int:
    from mambava.data.prepare import write_frames_digest

    write_frames_digest(_cfg(args), args.params)
    return 0


def cmd_data_validate(args) -> int:
    from mambava.data.validate import validate_layout

    problems = validate_layout(Path(args.root), test_list=args.test_list)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.root}", file=sys.stderr)
        return 1
    from mambava.data.validate import accepted_quirks

    print(f"{args.root}: OK")
    for note in accepted_quirks(Path(args.root), test_list=args.test_list):
        print(note)
    return 0


def cmd_data_user_copy(args) -> int:
    from mambava.data.usercopy import write_user_copy

    cfg = _cfg(args).data
    syn = cfg.synthetic.model_copy(update={k: v for k, v in {
        "n_videos": args.videos, "image_size": args.image_size, "workers": args.workers,
        "min_frames": args.frames[0] if args.frames else None, "max_frames": args.frames[1] if args.frames else None,
    }.items() if v is not None})
    try:  # the overrides checked like params.yaml's values, and the splits planned
        from mambava.data.synthetic import plan_videos

        syn = type(syn).model_validate(syn.model_dump())
        plan_videos(syn)
    except ValueError as exc:  # pydantic's ValidationError is one
        msgs = [f"{'.'.join(map(str, e['loc'])) or 'data.synthetic'}: {e['msg']}" for e in exc.errors()] if hasattr(exc, "errors") else [str(exc)]
        raise UserError(f"data user-copy: {'; '.join(msgs)}") from None
    s = write_user_copy(syn, args.out, cfg.test_list)
    print(f"{args.out}: {s['videos']} videos, {s['frames_on_disk']:,} frames on disk, no test labels; quirks: "
          f"{len(s['byte_order_mark'])} byte-order marks, {len(s['crlf'])} CRLF files, "
          f"{len(s['hidden_files'])} hidden files, {s['unannotated_rows']:,} unannotated rows, "
          f"frames removed in {'; '.join(s['frames_removed'])}")
    print(f"next: mambava data validate --root {args.out}; then in params.yaml set data.source: affwild2, "
          f"data.root: {args.out}, data.test_labels: null")
    return 0


def cmd_data_crop(args) -> int:
    from mambava.video.crop import run

    cfg = _cfg(args).crop
    summaries, errors = run(args.videos, args.out, cfg, n_faces=args.faces,
                            workers=args.workers or cfg.workers, progress=not args.no_progress)
    for s in summaries:
        for f in s["faces"]:
            print(f"{f['video']}: {f['frames']} frames, face in {f['frames_with_face']} "
                  f"(detected {f['frames_detected']}, tracked {f['frames_tracked']}), {f['frames_per_second']} frames/s")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


# --------------------------------------------------------------------------- model
def cmd_model_summary(args) -> int:
    from mambava.models.summary import print_summary

    print_summary(_cfg(args).model)
    return 0


# --------------------------------------------------------------------------- MAE features
def cmd_mae_pretrain(args) -> int:
    from mambava.features.pretrain import run

    run(_cfg(args))
    return 0


def cmd_pretrain_faces(args) -> int:
    from mambava.features.facepretrain import run

    m = run(_cfg(args), ship=args.ship, max_minutes=args.max_minutes)
    print(f"{'done' if m['done'] else 'stopped'}: step {m['steps_done']} of {m['steps']}"
          + (f"; sha256 {m['sha256']}" if m.get("sha256") else ""))
    return 0


def cmd_face_probe(args) -> int:
    from mambava.features.probe import run

    run(_cfg(args))
    return 0


def cmd_mae_finetune(args) -> int:
    from mambava.features.finetune import run

    run(_cfg(args))
    return 0


def cmd_features(args) -> int:
    from mambava.features.extract import run

    run(_cfg(args))
    return 0


# --------------------------------------------------------------------------- folds, train, evaluate
def cmd_folds(args) -> int:
    from mambava.data.windows import run_folds

    run_folds(_cfg(args))
    return 0


def cmd_oracle(args) -> int:
    from mambava.data.oracle import run

    run(_cfg(args))
    return 0


def cmd_train(args) -> int:
    from mambava.train_runs import run_all

    run_all(_cfg(args), args.variant, args.level, folds=args.fold, progress=not args.no_progress)
    return 0


def cmd_evaluate(args) -> int:
    from mambava.evaluate import run_all

    run_all(_cfg(args), args.variant, args.level, folds=args.fold)
    return 0


def cmd_leakage(args) -> int:
    from mambava.leakage import run

    run(_cfg(args))
    return 0


def cmd_ladder(args) -> int:
    from mambava.ladder import run

    run(_cfg(args))
    return 0


def cmd_plots(args) -> int:
    from mambava.plots import run

    run(_cfg(args), args.out)
    return 0


# --------------------------------------------------------------------------- own videos
def _predictor(args):
    if args.model:
        from mambava.export import load_bundle
        from mambava.runtime import resolve_device

        return load_bundle(args.model, resolve_device(_cfg(args).device if Path(args.params).exists() else "auto"))
    if args.variant is None or args.fold is None:
        raise SystemExit("error: give --model DIR (a bundle) or --variant and --fold (a run of this pipeline)")
    from mambava.predict import from_run

    return from_run(_cfg(args), args.variant, args.fold)


def cmd_predict(args) -> int:
    from mambava import predict

    pred = _predictor(args)
    if args.stream:
        for src in args.inputs:
            path = predict.run_stream(pred, src, args.out, n_faces=args.faces, overlay=args.overlay, echo=not args.quiet)
            print(path)
        return 0
    for path in predict.run(pred, args.inputs, args.out, n_faces=args.faces, overlay=args.overlay,
                            progress=not args.no_progress):
        print(path)
    return 0


def cmd_export(args) -> int:
    from mambava.export import export

    out = export(_cfg(args), args.variant, args.fold, args.out)
    print(f"{out}: bundle written ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


# --------------------------------------------------------------------------- book
def cmd_book_strip(args) -> int:
    from mambava.book import strip_notebook

    for path in args.notebooks:
        strip_notebook(path)
    return 0


def cmd_book_check(args) -> int:
    from mambava.book import check_book, pages_for

    # the pages' contents depend on the data source (the book stage lists data.source among its params)
    source = _cfg(args).data.source if Path(args.params).exists() else "synthetic"
    problems = check_book(args.html, pages_for(source))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in the book at {args.html}", file=sys.stderr)
        return 1
    print(f"{args.html}: OK")
    return 0


def cmd_book_screenshots(args) -> int:
    from mambava.book import screenshots

    for png in screenshots(args.html, args.out):
        print(png)
    return 0


# --------------------------------------------------------------------------- misc
def cmd_where(args) -> int:
    """Say where the results of `dvc repro` are."""
    cfg = _cfg(args)
    book = Path("book/_build/html/index.html")
    if book.exists():
        print(f"The book: {book.resolve()}")
    print(f"Data index: {Path(cfg.data.index).resolve()}")
    for extra in ("outputs",):
        if Path(extra).exists():
            print(f"Stage outputs: {Path(extra).resolve()}")
    return 0
