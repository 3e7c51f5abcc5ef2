"""The DVC stage `data`: generate the synthetic twin or index a local Aff-Wild2 copy."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mambava.checks import InputError
from mambava.config import Config
from mambava.data.affwild2 import build_index, write_index
from mambava.data.validate import validate_layout
from mambava.io import tree_sha256, write_json, write_timing

log = logging.getLogger("mambava.data")


def check_dvc_root(cfg: Config, params: str | Path) -> None:
    """dvc.yaml's stages depend on ``${data.root}/cropped_aligned`` and ``/annotations``, which DVC
    reads from the top level of params.yaml: it knows nothing of profiles. A profile whose
    ``data.root`` differs would index one folder and hand the later stages another (the first of
    them failing only after this stage has validated every frame): refused here, at once."""
    import yaml

    text = Path(params).read_text()
    top = ((yaml.safe_load(text) or {}).get("data") or {}).get("root", "data/twin/affwild2")
    if Path(str(top)) != Path(cfg.data.root):
        line = next((n for n, ln in enumerate(text.splitlines(), 1) if ln.strip().startswith("root:")), None)
        where = f"{params}:{line}" if line else str(params)
        raise InputError(f"{where}: data.root is {top}, but profile {cfg.profile} reads the data from "
                         f"{cfg.data.root}; dvc.yaml's paths take data.root from the top level (DVC does not "
                         f"apply profiles): set the top-level data.root to {cfg.data.root}")


TWIN_DIGEST = "twin.json"  # beside data.index: the digest the twin-only stages depend on
FRAMES_DIGEST = "frames.json"  # beside data.index: the digest the image stages depend on


def write_twin_digest(twin_dir: Path, out: Path) -> dict:
    """``data/twin.json``: the SHA-256 of everything under ``data/twin`` (the twin's frames, labels,
    test labels and truth; with real data, the note). The twin-only stages (face_probe,
    oracle_features, ladder, notebook_data) depend on this small file instead of the folder, so
    that DVC does not walk 270,000 frame files for each of them before and after it runs (about
    45 s a stage on 2 cores); the data stage still owns ``data/twin`` as its output, so a changed
    or missing frame reruns it."""
    return _write_digest(twin_dir, out)


def _write_digest(folder: Path, out: Path, progress: str | None = None) -> dict:
    """``out``: the folder's :func:`~mambava.io.tree_sha256` and its path, logged with the time taken."""
    t0 = time.perf_counter()
    digest = {"folder": folder.as_posix(), **tree_sha256(folder, progress=progress)}
    write_json(out, digest)
    log.info("%s: %d files, %.1f MB, sha256 %s (%.1f s)", out, digest["files"], digest["bytes"] / 1e6,
             digest["sha256"][:12], time.perf_counter() - t0)
    return digest


def write_frames_digest(cfg: Config, params: str | Path | None = None) -> dict:
    """The `frames` stage: ``data/frames.json``, the SHA-256 of ``${data.root}/cropped_aligned``
    (the twin's or a real copy's). Only this stage lists the frame folder as a DVC dependency;
    mae_pretrain, mae_finetune and features depend on this small file, so DVC walks the frames
    (270,000 files in the twin, about 2.6 million in Aff-Wild2) once per `dvc status` or `dvc repro`
    instead of before and after each of those three stages (about 20-40 s a walk on 2 cores). A
    changed, added or removed frame reruns this stage, which writes another digest, which reruns them.
    ``params``: the file ``cfg`` was read from (:func:`check_dvc_root`)."""
    if params is not None:
        check_dvc_root(cfg, params)
    frames = Path(cfg.data.root) / "cropped_aligned"
    if not frames.is_dir():
        raise FileNotFoundError(f"data.root = {cfg.data.root}: no cropped_aligned/ folder there (run `mambava data prepare`)")
    return _write_digest(frames, Path(cfg.data.index).with_name(FRAMES_DIGEST), progress="frames digest")


def prepare(cfg: Config, params: str | Path | None = None) -> None:
    """The `data` stage; ``params``: the file ``cfg`` was read from (:func:`check_dvc_root`)."""
    if params is not None:
        check_dvc_root(cfg, params)
    d = cfg.data
    t0 = time.perf_counter()
    if d.source == "synthetic":
        from mambava.data.synthetic import generate_twin

        twin_dir = Path(d.root).parent
        generate_twin(d.synthetic, d.root, d.test_labels, twin_dir / "truth", d.test_list)
        log.info("synthetic twin written to %s in %.1f s", d.root, time.perf_counter() - t0)
    else:
        root = Path(d.root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"data.root = {root}: no such folder. Point data.root in params.yaml at your Aff-Wild2 copy "
                "(the folder holding cropped_aligned/ and annotations/); nothing is downloaded."
            )
        problems = validate_layout(root, test_list=d.test_list if (root / d.test_list).is_file() else None)
        if problems:
            for p in problems[:50]:
                log.error(p)
            raise InputError(f"{root}: {len(problems)} problem(s) in the Aff-Wild2 copy (see `mambava data validate --root {root}`)")
        # DVC tracks data/twin as this stage's output; with real data it holds only this note.
        twin_dir = Path("data/twin")
        twin_dir.mkdir(parents=True, exist_ok=True)
        (twin_dir / "README.txt").write_text(f"data.source is affwild2: the data is read from {root}.\n")
    write_twin_digest(twin_dir, Path(d.index).with_name(TWIN_DIGEST))
    index = build_index(d.root, d.test_labels, d.test_list)
    write_index(index, d.index)
    summary = {
        "source": d.source,
        "videos": {s: int((index.split == s).sum()) for s in ("train", "validation", "test")},
        "frames": int(index.n_frames.sum()),
        "frames_on_disk": int(index.n_frames_on_disk.sum()),
        "frames_annotated": int(index.n_annotated.sum()),
    }
    write_json(Path(d.index).with_name("summary.json"), summary)
    write_timing(Path(d.index).parent, "data", {"seconds": round(time.perf_counter() - t0, 1)})
    log.info("index of %d videos written to %s: %s", len(index), d.index, summary)
