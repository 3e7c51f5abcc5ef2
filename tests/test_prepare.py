"""The data stage end to end on a small twin, then on that twin read as if it were real Aff-Wild2."""

import json
import os
import shutil

import pandas as pd
import pytest
import yaml

from mambava.config import load_config
from mambava.data.prepare import prepare


@pytest.fixture
def small_params(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["data"]["synthetic"].update(n_videos=6, n_pairs=1, min_frames=40, max_frames=200, workers=1)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_synthetic_then_affwild2_source(small_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare(load_config(small_params))
    index = pd.read_csv("data/index.csv")
    assert list(index.columns[:6]) == ["video", "split", "n_frames", "n_frames_on_disk", "n_annotated", "path"]
    assert set(index.split) == {"train", "validation", "test"}
    assert (index.n_annotated[index.split == "test"] > 0).all()  # the twin's test labels are known
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert summary["frames"] == index.n_frames.sum()
    # the twin passes validation as it is: its test list sits at the root under the official name
    from mambava.data.validate import validate_layout

    assert validate_layout("data/twin/affwild2") == []

    # A user with "real" data: copy the layout elsewhere, point data.root at it, no test labels.
    shutil.copytree("data/twin/affwild2", tmp_path / "real")
    raw = yaml.safe_load(small_params.read_text())
    raw["data"].update(source="affwild2", root=str(tmp_path / "real"), test_labels=None, index="data/index_real.csv")
    small_params.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(load_config(small_params))
    real = pd.read_csv("data/index_real.csv")
    assert len(real) == len(index)
    assert (real.n_annotated[real.split == "test"] == 0).all()
    assert (real.n_frames[real.split != "test"].values == index.n_frames[index.split != "test"].values).all()


def test_affwild2_source_without_data_says_what_to_set(small_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(small_params.read_text())
    raw["data"].update(source="affwild2", root=str(tmp_path / "nowhere"))
    small_params.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(FileNotFoundError, match="Point data.root in params.yaml"):
        prepare(load_config(small_params))


def test_a_profile_with_another_data_root_is_refused_at_once(tmp_path, repo, monkeypatch):
    """dvc.yaml's paths read the top-level data.root (DVC applies no profile): the paper profile's
    data/affwild2 with the top level's twin root would index one folder and give the MAE stages
    another; the data stage refuses it before validating any frame, at the top-level key's line."""
    from mambava.checks import InputError

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["profile"] = "paper"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    line = next(n for n, ln in enumerate(p.read_text().splitlines(), 1) if ln.strip().startswith("root:"))
    with pytest.raises(InputError) as e:
        prepare(load_config(p), p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}: data.root is data/twin/affwild2, but profile paper reads the data from data/affwild2")
    assert "\n" not in msg and "set the top-level data.root to data/affwild2" in msg
    raw["data"]["root"] = "data/affwild2"  # as real-data.md says: then the missing copy is the error
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(FileNotFoundError, match="Point data.root in params.yaml"):
        prepare(load_config(p), p)


def test_twin_digest_follows_every_file_of_the_twin(small_params, tmp_path, monkeypatch):
    """data/twin.json (what the twin-only stages depend on) against hashlib over the files read here:
    equal for an identical copy elsewhere, different after one changed byte, a renamed file or a
    new file; the data stage writes it, and writes the same digest when run again."""
    import hashlib

    from mambava.data.prepare import write_twin_digest
    from mambava.io import tree_sha256

    monkeypatch.chdir(tmp_path)
    prepare(load_config(small_params))
    written = json.loads((tmp_path / "data" / "twin.json").read_text())
    files = sorted(p for p in (tmp_path / "data" / "twin").rglob("*") if p.is_file())
    assert written["files"] == len(files) > 6 * 40
    assert written["bytes"] == sum(p.stat().st_size for p in files)
    assert written["folder"] == "data/twin"
    prepare(load_config(small_params))  # the twin is drawn again: the same bytes, the same digest
    assert json.loads((tmp_path / "data" / "twin.json").read_text()) == written

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data" / "twin", copy)
    assert tree_sha256(copy)["sha256"] == written["sha256"]
    frame = next(p for p in sorted(copy.rglob("*.jpg")))
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 1
    frame.write_bytes(bytes(data))
    changed = tree_sha256(copy)["sha256"]
    assert changed != written["sha256"]
    frame.rename(frame.with_name("99999.jpg"))
    renamed = tree_sha256(copy)["sha256"]
    assert renamed not in (changed, written["sha256"])
    (copy / "extra.txt").write_text("x")
    assert tree_sha256(copy)["sha256"] != renamed
    # one file: the digest is SHA-256 over path, size and bytes, as the docstring says
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_bytes(b"abc")
    assert tree_sha256(one)["sha256"] == hashlib.sha256(b"a.txt\x003\x00abc").hexdigest()
    assert write_twin_digest(one, tmp_path / "d.json")["files"] == 1


def test_frames_digest_is_the_sha256_of_the_frame_folder(small_params, tmp_path, monkeypatch):
    """data/frames.json (what mae_pretrain, mae_finetune and features depend on) against hashlib
    over cropped_aligned's files, read here in sorted path order; one changed byte changes it."""
    import hashlib

    from mambava.data.prepare import write_frames_digest

    monkeypatch.chdir(tmp_path)
    cfg = load_config(small_params)
    with pytest.raises(FileNotFoundError, match="no cropped_aligned"):
        write_frames_digest(cfg)
    prepare(cfg)
    frames = tmp_path / cfg.data.root / "cropped_aligned"
    files = sorted((p for p in frames.rglob("*") if p.is_file()), key=lambda p: p.relative_to(frames).parts)
    h = hashlib.sha256()
    for p in files:
        data = p.read_bytes()
        h.update(p.relative_to(frames).as_posix().encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    write_frames_digest(cfg, small_params)
    written = json.loads((tmp_path / "data" / "frames.json").read_text())
    assert written == {"folder": f"{cfg.data.root}/cropped_aligned", "files": len(files),
                       "bytes": sum(p.stat().st_size for p in files), "sha256": h.hexdigest()}
    data = bytearray(files[-1].read_bytes())
    data[len(data) // 2] ^= 1
    files[-1].write_bytes(bytes(data))
    assert write_frames_digest(cfg)["sha256"] != written["sha256"]


def test_only_the_frames_stage_lists_the_frame_folder(repo):
    """DVC walks a listed folder for every stage that lists it, before and after the stage runs;
    the frame folder (270,000 files in the twin) is listed by `frames` alone, and the stages that
    read frames depend on its digest, data/frames.json."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert stages["frames"]["outs"] == ["data/frames.json"]
    listing = {name for name, st in stages.items() if any("cropped_aligned" in str(d) for d in st.get("deps") or [])}
    assert listing == {"frames"}
    for name in ("mae_pretrain", "mae_finetune", "features"):
        assert "data/frames.json" in stages[name]["deps"], name


def test_twin_only_stages_depend_on_the_digest_not_the_frames(repo):
    """No stage but `data` lists the twin's folder (270k files DVC would walk twice per stage);
    the twin-only stages list its digest, which the data stage writes."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["data"]["outs"]]
    assert "data/twin" in outs and "data/twin.json" in outs
    for name in ("face_probe", "oracle_features", "ladder", "notebook_data"):
        assert "data/twin.json" in stages[name]["deps"], name
    for name, st in stages.items():
        assert "data/twin" not in (st.get("deps") or []), name
