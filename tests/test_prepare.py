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
