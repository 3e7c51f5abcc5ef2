"""params.yaml through the typed layer: typos and wrong types are errors naming file and line."""

import shutil
import subprocess
import sys

import pytest
import yaml

from mambava.config import ConfigError, load_config


@pytest.fixture
def params(tmp_path, repo):
    dst = tmp_path / "params.yaml"
    shutil.copy(repo / "params.yaml", dst)
    return dst


def _line_of(path, text):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return i
    raise AssertionError(text)


def test_repository_params_load_in_every_profile(repo):
    cfg = load_config(repo / "params.yaml")
    assert cfg.profile == "default" and cfg.data.source == "synthetic"
    paper = load_config(repo / "params.yaml", profile="paper")
    assert paper.profile == "paper" and paper.data.source == "affwild2"
    assert paper.model.input_dim == 1024 and paper.model.d_model == 256
    # The overlay changes only what it names.
    assert paper.data.index == cfg.data.index


def test_unknown_key_names_file_line_and_key(params):
    params.write_text(params.read_text().replace("  n_pairs: 3", "  n_pairs: 3\n    n_pair: 3"))
    with pytest.raises(ConfigError) as e:
        load_config(params)
    line = _line_of(params, "n_pair: 3")
    assert f"{params}:{line}: data.synthetic.n_pair: unknown key" in str(e.value)


def test_wrong_type_names_file_line_and_value(params):
    params.write_text(params.read_text().replace("  n_videos: 40", "  n_videos: many"))
    with pytest.raises(ConfigError) as e:
        load_config(params)
    line = _line_of(params, "n_videos: many")
    msg = str(e.value)
    assert f"{params}:{line}: data.synthetic.n_videos" in msg and "'many'" in msg


def test_bad_choice_is_rejected(params):
    params.write_text(params.read_text().replace("  source: synthetic", "  source: affwild"))
    with pytest.raises(ConfigError, match="data.source"):
        load_config(params)


def test_typo_inside_a_profile_is_caught_without_selecting_it(params):
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["paper"]["data"]["rot"] = "x"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"profile 'paper'.*\n.*data.rot: unknown key"):
        load_config(params)


def test_unknown_profile(params):
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        load_config(params, profile="gpu")


def test_profile_key_switches(params):
    params.write_text(params.read_text().replace("profile: default", "profile: paper", 1))
    assert load_config(params).model.input_dim == 1024


def test_cli_reports_config_errors_with_exit_code_2(params):
    params.write_text(params.read_text().replace("seed: 42", "sed: 42"))
    r = subprocess.run([sys.executable, "-m", "mambava.cli", "--params", str(params), "where"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "sed: unknown key" in r.stderr
