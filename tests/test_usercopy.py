"""`mambava data user-copy`: the twin written as a licensed Aff-Wild2 copy looks, checked against
the twin itself (same seed, written by the twin's own writer): the same labels and frames but for
the quirks added, no test labels or truth anywhere, and a copy that `mambava data validate`
accepts and the data stage indexes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mambava.checks import BOM
from mambava.cli import main
from mambava.config import load_config
from mambava.data.affwild2 import ANNOTATIONS, CROPS, SPLIT_DIRS, build_index, frames_on_disk, read_annotation
from mambava.data.synthetic import generate_twin
from mambava.data.usercopy import missing_frames, write_user_copy
from mambava.data.validate import validate_layout

TINY = dict(n_videos=8, n_pairs=1, min_frames=60, max_frames=140, image_size=32, workers=1,
            split_fractions=[0.5, 0.25, 0.25])


@pytest.fixture(scope="module")
def copies(tmp_path_factory, repo):
    tmp = tmp_path_factory.mktemp("usercopy")
    cfg = load_config(repo / "params.yaml").data.synthetic.model_copy(update=TINY)
    summary = write_user_copy(cfg, tmp / "copy")
    generate_twin(cfg, tmp / "twin", tmp / "test_labels", tmp / "truth", "test_set_release.txt")
    return tmp / "copy", tmp, summary


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_the_copy_holds_the_official_layout_and_nothing_else(copies):
    copy, tmp, _ = copies
    top = {p.name for p in copy.iterdir()}
    assert top == {"cropped_aligned", "annotations", "test_set_release.txt", ".DS_Store"}
    assert {p.name for p in (copy / ANNOTATIONS).iterdir()} == set(SPLIT_DIRS.values())
    test_videos = (tmp / "twin" / "test_set_release.txt").read_text().split()
    assert test_videos and sorted(p.stem for p in (tmp / "test_labels").glob("*.txt")) == sorted(test_videos)
    annotated = {p.stem for p in (copy / ANNOTATIONS).rglob("*.txt") if not p.name.startswith(".")}
    assert not annotated & set(test_videos)  # no test labels in the copy
    for v in test_videos:  # but the test videos' frames are there
        assert len(frames_on_disk(copy / CROPS / v)) > 0
    assert not (tmp / ".copy.work").exists() and not any(p.suffix == ".npz" for p in copy.rglob("*"))
    assert (copy / "test_set_release.txt").read_bytes() == (tmp / "twin" / "test_set_release.txt").read_bytes().replace(b"\n", b"\r\n")


def test_labels_and_frames_are_the_twins_but_for_the_quirks(copies):
    copy, tmp, summary = copies
    twin = tmp / "twin"
    stretches = {s.split(":")[0] for s in summary["unannotated_stretches"]}
    removed = {s.split(":")[0] for s in summary["frames_removed"]}
    assert len(stretches) == len(removed) == 2
    for sub in SPLIT_DIRS.values():
        for ann in sorted((twin / ANNOTATIONS / sub).glob("*.txt")):
            mine = copy / ANNOTATIONS / sub / ann.name
            want, got = read_annotation(ann), read_annotation(mine)
            changed = (want != got).any(axis=1)
            assert len(want) == len(got)
            if ann.stem in stretches:
                idx = np.flatnonzero(changed)
                assert len(idx) >= 2 and (got[idx.min():idx.max() + 1] == -5).all()  # one stretch of -5 rows
            else:
                assert not changed.any()
            frames_twin, frames_copy = frames_on_disk(twin / CROPS / ann.stem), frames_on_disk(copy / CROPS / ann.stem)
            assert set(frames_copy) <= set(frames_twin)
            assert (len(frames_copy) < len(frames_twin)) == (ann.stem in removed)
    assert missing_frames(copy) > missing_frames(twin) > 0


def test_the_copy_carries_real_quirks(copies):
    copy, _, summary = copies
    anns = sorted((p for p in (copy / ANNOTATIONS).rglob("*.txt") if not p.name.startswith(".")), key=lambda p: p.name)
    raw = {p.name: p.read_bytes() for p in anns}
    assert {n for n, b in raw.items() if b.startswith(BOM)} == set(summary["byte_order_mark"]) != set()
    assert {n for n, b in raw.items() if b"\r\n" in b} == set(summary["crlf"]) - {"test_set_release.txt"} != set()
    hidden = [f for f in _files(copy) if Path(f).name.startswith(".")]
    assert ".DS_Store" in hidden and "cropped_aligned/.DS_Store" in hidden and any(Path(f).name.startswith("._") for f in hidden)
    assert sorted(hidden) == sorted(summary["hidden_files"])
    assert summary["unannotated_rows"] == sum(int((read_annotation(p) == -5).all(axis=1).sum()) for p in anns) > 0


def test_validate_accepts_the_copy_and_the_index_has_no_test_labels(copies):
    copy, _, summary = copies
    assert validate_layout(copy) == []
    index = build_index(copy, None, "test_set_release.txt")
    assert {s: int((index.split == s).sum()) for s in ("train", "validation", "test")} == summary["videos"]
    assert (index.n_annotated[index.split == "test"] == 0).all() and (index.annotation[index.split == "test"] == "").all()
    assert index.n_frames_on_disk.sum() == summary["frames_on_disk"]


def test_validate_notes_exactly_the_quirks_the_copy_carries(copies):
    """`mambava data validate` accepts the copy and notes its quirks, counted here from the files;
    the twin itself (no BOM, LF only, no hidden files) gets notes only for what it carries."""
    from mambava.data.validate import accepted_quirks

    copy, tmp, summary = copies
    labelled = [p for p in (copy / ANNOTATIONS).rglob("*.txt") if not p.name.startswith(".")]
    missing = sum(len(read_annotation(p)) - len(frames_on_disk(copy / CROPS / p.stem)) for p in labelled)
    assert accepted_quirks(copy) == [
        f"note: {len(summary['byte_order_mark'])} text files start with a UTF-8 byte-order mark",
        f"note: {len(summary['crlf'])} text files have CRLF line ends",
        f"note: {len(summary['hidden_files'])} hidden files (.DS_Store, ._*, ...) are ignored",
        f"note: {missing} annotated frames have no face crop (no face found: their features are filled in)",
        f"note: {summary['unannotated_rows']} label lines are -5 (not annotated: left out of training and scoring)"]
    twin_notes = accepted_quirks(tmp / "twin")
    assert not any("byte-order" in n or "CRLF" in n or "hidden" in n for n in twin_notes)


def test_cli_writes_a_copy_that_validates(tmp_path, repo, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["data", "user-copy", "--out", "copy", "--videos", "8", "--frames", "40", "60", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "no test labels" in out and "data.source: affwild2" in out
    assert main(["data", "validate", "--root", "copy"]) == 0
    index = build_index("copy", None, "test_set_release.txt")
    assert len(index) == 8 and index.n_frames.between(40, 60).all()
    assert pd.Series([len(frames_on_disk(p)) for p in sorted((tmp_path / "copy" / CROPS).iterdir()) if p.is_dir()]).gt(0).all()
    assert main(["data", "user-copy", "--out", "copy2", "--frames", "60", "40"]) == 2  # max < min: a clear error
    assert "max_frames must be >= min_frames" in capsys.readouterr().err
    assert main(["data", "user-copy", "--out", "copy2", "--image-size", "8"]) == 2
    assert "error: data user-copy: image_size: Input should be greater than or equal to" in capsys.readouterr().err
    assert not (tmp_path / "copy2").exists()
