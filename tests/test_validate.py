"""`mambava data validate`: every kind of broken copy is reported with its file (and line)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambava.data.affwild2 import ANNOTATIONS, CROPS
from mambava.data.validate import validate_layout


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


def _set_line(root, i: int, text: str) -> Path:
    """Replace line ``i`` (0-based) of video a's annotation file; return the file."""
    ann = root / ANNOTATIONS / "Train_Set" / "a.txt"
    lines = ann.read_text().splitlines()
    lines[i] = text
    ann.write_text("\n".join(lines) + "\n")
    return ann


def test_non_numeric_value_names_line(clean):
    ann = _set_line(clean, 3, "0.1,abc")
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


# --------------------------------------------------------------------------- one malformed copy per input class
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambava.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_frame_zero_is_rejected_by_validation_and_readers(clean):
    from mambava.checks import InputError
    from mambava.data.affwild2 import build_index, frames_on_disk

    zero = clean / CROPS / "a" / "00000.jpg"
    _jpeg(zero)
    _one(validate_layout(clean), str(zero), "frame number 0", "1-based")
    with pytest.raises(InputError, match=r"00000\.jpg: frame number 0"):
        frames_on_disk(clean / CROPS / "a")
    with pytest.raises(InputError, match=r"00000\.jpg: frame number 0"):
        build_index(clean)


def test_non_utf8_annotation_names_file_and_line(clean):
    from mambava.data.affwild2 import AnnotationError, read_annotation

    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    lines = ann.read_bytes().split(b"\n")
    lines[3] = b"0.1,0.\xe92"  # latin-1 e-acute
    ann.write_bytes(b"\n".join(lines))
    _one(validate_layout(clean), f"{ann}:4:", "not UTF-8", "0xe9")
    with pytest.raises(AnnotationError, match=f"{ann}:4: not UTF-8"):
        read_annotation(ann)


def test_non_utf8_test_list_names_file_and_line(clean):
    tl = clean / "test_set_release.txt"
    tl.write_bytes(b"video1\nvid\xff\n")
    _one(validate_layout(clean), f"{tl}:2:", "not UTF-8")
    r = _cli("data", "validate", "--root", str(clean))
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert f"{tl}:2: not UTF-8" in r.stdout


def test_test_list_line_that_is_not_a_name(clean):
    tl = clean / "test_set_release.txt"
    tl.write_text("b\nsome/dir/c.mp4\n")
    _one(validate_layout(clean), f"{tl}:2:", "is not a video name")


def test_test_video_annotated_in_a_split_is_reported(clean):
    (clean / "test_set_release.txt").write_text("a\n")
    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    _one(validate_layout(clean), str(ann), "video a is annotated here but also listed as a test video")


def test_official_test_list_is_picked_up_without_being_named(clean):
    vdir = clean / CROPS / "t1"
    vdir.mkdir()
    _jpeg(vdir / "00001.jpg")
    _one(validate_layout(clean), str(vdir), "frames without annotations")
    (clean / "test_set_release.txt").write_text("t1\n")
    assert validate_layout(clean) == []
    # a listed test video without frames is still reported
    (clean / "test_set_release.txt").write_text("t1\nt2\n")
    _one(validate_layout(clean), str(clean / CROPS / "t2"), "listed in the test list but has no frames")


def test_benign_quirks_are_accepted(clean):
    """Byte-order mark, CRLF, a blank last line, hidden files from macOS/Windows copies."""
    from mambava.data.affwild2 import build_index, read_annotation, read_test_list

    ann = clean / ANNOTATIONS / "Train_Set" / "a.txt"
    want = np.array([[0.01 * i, -0.01 * i] for i in range(6)], np.float32)
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    ann_b = clean / ANNOTATIONS / "Validation_Set" / "b.txt"
    ann_b.write_text(ann_b.read_text() + "\n\n")
    (clean / CROPS / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (clean / CROPS / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (clean / CROPS / "a" / "._00001.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (clean / ANNOTATIONS / "Train_Set" / "._a.txt").write_bytes(b"\x00\x05\x16\x07\xff")
    (clean / "test_set_release.txt").write_bytes(b"\xef\xbb\xbf# test videos\r\n\r\n")
    assert validate_layout(clean) == []
    np.testing.assert_allclose(read_annotation(ann), want, atol=1e-6)
    assert len(read_annotation(ann_b)) == 5
    assert read_test_list(clean / "test_set_release.txt") == []
    index = build_index(clean)
    assert sorted(index.video) == ["a", "b"] and list(index.n_frames) == [6, 5]


def test_blank_line_inside_an_annotation_is_not_skipped(clean):
    from mambava.data.affwild2 import AnnotationError, read_annotation

    ann = _set_line(clean, 3, "")
    _one(validate_layout(clean), f"{ann}:4:", "expected 2 comma-separated values")
    with pytest.raises(AnnotationError, match=f"{ann}:4:"):
        read_annotation(ann)  # pandas alone would skip the line and shift every later frame


def test_unreadable_index_folds_and_features(tmp_path):
    from mambava.checks import InputError
    from mambava.data.affwild2 import load_index
    from mambava.data.windows import read_folds
    from mambava.features.store import load_features

    idx = tmp_path / "index.csv"
    idx.write_text("video,split\na,train\n")
    with pytest.raises(InputError, match=rf"{idx}: index lacks columns"):
        load_index(idx)
    with pytest.raises(FileNotFoundError, match="run `dvc repro data`"):
        load_index(tmp_path / "none.csv")
    folds = tmp_path / "folds.csv"
    folds.write_bytes(b"")
    with pytest.raises(InputError, match=rf"{folds}: not a readable folds table"):
        read_folds(folds)
    np.save(tmp_path / "v.mask.npy", np.ones(4, bool))
    (tmp_path / "v.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"v\.npy: not a readable \.npy array"):
        load_features(tmp_path, "v")
    np.save(tmp_path / "v.npy", np.zeros((5, 3), np.float16))
    with pytest.raises(InputError, match=r"v\.npy: shape \(5, 3\) with a mask of shape \(4,\)"):
        load_features(tmp_path, "v")


def test_cli_expected_errors_are_one_line_exit_2(clean, tmp_path, repo):
    """Missing file, bad input, bad setting: `error: ...` lines, exit 2; --verbose adds the traceback."""
    r = _cli("--params", str(tmp_path / "nope.yaml"), "where")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.yaml'}: parameters file not found (run from the repository root)"]
    # bad input in the data stage: a frame 00000 in a "real" copy
    _jpeg(clean / CROPS / "a" / "00000.jpg")
    params = tmp_path / "params.yaml"
    text = (repo / "params.yaml").read_text().replace("  source: synthetic", "  source: affwild2", 1)
    params.write_text(text.replace("  root: data/twin/affwild2", f"  root: {clean}", 1))
    r = _cli("--params", str(params), "data", "prepare", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {clean}: 1 problem(s) in the Aff-Wild2 copy (see `mambava data validate --root {clean}`)"]
    assert "00000.jpg: frame number 0" in r.stderr  # the problem itself is logged above it
    r = _cli("--verbose", "--params", str(params), "data", "prepare", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    # a bad setting
    params.write_text(text.replace("  batch_size: 16\n", "  batch_size: -1\n", 1))
    r = _cli("--params", str(params), "where", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "train.batch_size" in r.stderr


def test_video_annotated_in_both_splits_is_reported(clean):
    from mambava.checks import InputError
    from mambava.data.affwild2 import build_index

    twin = clean / ANNOTATIONS / "Validation_Set" / "a.txt"
    twin.write_text((clean / ANNOTATIONS / "Train_Set" / "a.txt").read_text())
    _one(validate_layout(clean), str(twin), "video also annotated in", "Train_Set")
    with pytest.raises(InputError, match=r"videos in more than one split: a \(train, validation\)"):
        build_index(clean)
