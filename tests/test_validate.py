"""`mambava data validate`: every kind of broken copy is reported with its file (and line)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambava.data.affwild2 import ANNOTATIONS, CROPS, validate_layout


def _jpeg(path: Path, value: int = 128):
    Image.fromarray(np.full((112, 112, 3), value, np.uint8)).save(path, quality=90)


def _video(root: Path, name: str, n: int, split="Train_Set", frames=None, lines=None):
    vdir = root / CROPS / name
    vdir.mkdir(parents=True, exist_ok=True)
    for i in frames if frames is not None else range(1, n + 1):
        _jpeg(vdir / f"{i:05d}.jpg", i % 255)
    ann = root / ANNOTATIONS / split / f"{name}.txt"
    ann.parent.mkdir(parents=True, exist_ok=True)
    body = lines if lines is not None else [f"{0.01 * i:.2f},{-0.01 * i:.2f}" for i in range(n)]
    ann.write_text("\n".join(["valence,arousal", *body]) + "\n")
    return vdir, ann


@pytest.fixture
def clean(tmp_path):
    root = tmp_path / "aw"
    _video(root, "a", 6)
    _video(root, "b", 5, split="Validation_Set", frames=[1, 2, 4])
    (root / ANNOTATIONS / "Validation_Set").mkdir(parents=True, exist_ok=True)
    return root


def test_clean_copy_passes(clean):
    assert validate_layout(clean) == []


def _one(problems, *needles):
    hits = [p for p in problems if all(n in p for n in needles)]
    assert hits, f"no problem mentions {needles}: {problems}"
    return hits[0]


def test_missing_header(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    ann.write_text("\n".join(ann.read_text().splitlines()[1:]) + "\n")
    _one(validate_layout(clean), f"{ann}:1:", "header")


def test_wrong_header(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    ann.write_text(ann.read_text().replace("valence,arousal", "arousal,valence"))
    _one(validate_layout(clean), f"{ann}:1:", "wrong or missing header")


def test_non_numeric_value_names_line(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    lines = ann.read_text().splitlines()
    lines[3] = "0.1,abc"
    ann.write_text("\n".join(lines) + "\n")
    _one(validate_layout(clean), f"{ann}:4:", "non-numeric")


def test_value_out_of_range_names_line(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    lines = ann.read_text().splitlines()
    lines[5] = "1.5,0.2"
    lines[2] = "-5,-5"  # -5 is legal
    ann.write_text("\n".join(lines) + "\n")
    problems = validate_layout(clean)
    _one(problems, f"{ann}:6:", "valence 1.5 outside")
    assert not any(f"{ann}:3:" in p for p in problems)


def test_annotation_shorter_than_frames(clean):
    _jpeg(clean / CROPS / "a" / "00009.jpg")
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    _one(validate_layout(clean), str(ann), "shorter than the frames on disk", "00009.jpg")


def test_unreadable_jpeg(clean):
    bad = clean / CROPS / "a" / "00003.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    png = clean / CROPS / "a" / "00004.jpg"
    Image.new("RGB", (8, 8)).save(png, format="PNG")  # a PNG named .jpg
    problems = validate_layout(clean)
    _one(problems, str(bad), "not a readable JPEG")
    _one(problems, str(png), "not a readable JPEG")


def test_misnamed_frame(clean):
    _jpeg(clean / CROPS / "a" / "7.jpg")
    _one(validate_layout(clean), "7.jpg", "unexpected file name")


def test_empty_video_folder(clean):
    (clean / CROPS / "c").mkdir()
    _one(validate_layout(clean), str(clean / CROPS / "c"), "empty video folder")


def test_annotation_without_frames(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "ghost.txt"
    ann.write_text("valence,arousal\n0.1,0.1\n")
    _one(validate_layout(clean), str(ann), "annotation file without frames")


def test_frames_without_annotations(clean, tmp_path):
    vdir = clean / CROPS / "orphan"
    vdir.mkdir()
    _jpeg(vdir / "00001.jpg")
    _one(validate_layout(clean), str(vdir), "frames without annotations")
    # listed as a test video, the same folder is fine
    (clean / "test.txt").write_text("orphan\n")
    assert validate_layout(clean, test_list="test.txt") == []


def test_cli_lists_all_problems_and_exits_nonzero(clean):
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    lines = ann.read_text().splitlines()
    lines[2], lines[4] = "x,0", "0,-2"
    ann.write_text("\n".join(lines) + "\n")
    (clean / CROPS / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "mambava.cli", "data", "validate", "--root", str(clean)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{ann}:3:" in r.stdout and f"{ann}:5:" in r.stdout and "empty video folder" in r.stdout
    assert "3 problem(s)" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "mambava.cli", "data", "validate", "--root", str(clean.parent / "nope")],
                        capture_output=True, text=True)
    assert ok.returncode == 1 and "does not exist" in ok.stdout
