"""params.yaml through the typed layer: typos and wrong types are errors naming file and line."""

import re
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
    text, n = re.subn(r"  n_videos: \d+", "  n_videos: many", params.read_text(), count=1)
    assert n == 1
    params.write_text(text)
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


# --------------------------------------------------------------------------- settings that cannot work
def _error(params):
    with pytest.raises(ConfigError) as e:
        load_config(params)
    return str(e.value)


def test_duplicate_key_names_both_lines(params):
    text = params.read_text().replace("  lr: 3.0e-3\n", "  lr: 3.0e-3\n  lr: 1.0e-2\n", 1)
    params.write_text(text)
    first = _line_of(params, "lr: 3.0e-3")
    assert f"{params}:{first + 1}: train.lr: duplicate key (first set at line {first}" in _error(params)


def test_duplicate_section_is_caught(params):
    params.write_text(params.read_text() + "\nseed: 7\n")
    n = len(params.read_text().splitlines())
    assert f"{params}:{n}: seed: duplicate key (first set at line {_line_of(params, 'seed: 42')}" in _error(params)


def test_input_dim_must_match_embed_dim(params):
    params.write_text(params.read_text().replace("  input_dim: 192", "  input_dim: 256", 1))
    msg = _error(params)
    line = _line_of(params, "input_dim: 256")
    assert f"{params}:{line}: model.input_dim (256) must equal mae_pretrain.encoder.embed_dim (192)" in msg


def test_input_dim_mismatch_inside_a_profile_points_at_the_overlay(params):
    text = params.read_text()
    params.write_text(text.replace("        embed_dim: 1024\n", "        embed_dim: 768\n        num_heads: 12\n", 1)
                      .replace("        num_heads: 16\n", "", 1))
    msg = _error(params)
    # the overlay sets both keys: the error points at its input_dim line, not at the defaults
    assert f"{params}:{_line_of(params, 'input_dim: 1024')}: model.input_dim (1024) must equal" in msg
    assert "(in profile 'paper')" in msg


@pytest.mark.parametrize("section,window,stride,bad", [
    ("train", "window: 1024", "stride: 512", "stride: 1100"),
    ("train", "window_fold0: 1024", "stride_fold0: 512", "stride_fold0: 1200"),
    ("evaluate", "window: 500", "stride: 500", "stride: 600"),
])
def test_stride_longer_than_window(params, section, window, stride, bad):
    text = params.read_text()
    start = text.index(f"\n{section}:")
    head, tail = text[:start], text[start:]
    params.write_text(head + tail.replace(f"  {stride}", f"  {bad}", 1))
    msg = _error(params)
    key = bad.split(":")[0]
    line = next(i for i, t in enumerate(params.read_text().splitlines(), 1) if t.strip().startswith(bad) and i > head.count("\n"))
    assert f"{params}:{line}: {section}.{key} ({bad.split(': ')[1]}) is longer than {section}.{window.split(':')[0]}" in msg


@pytest.mark.parametrize("key", ["variant", "reference"])
def test_unknown_book_variant(params, key):
    params.write_text(params.read_text().replace(f"  {key}: mamba_va", f"  {key}: mamba", 1))
    msg = _error(params)
    assert f"{params}:{_line_of(params, f'{key}: mamba ')}: book.{key}: unknown variant 'mamba' (one of mamba_va" in msg


def test_cli_prints_setting_errors_as_lines(params):
    params.write_text(params.read_text().replace("  stride: 500", "  stride: 600", 1))
    r = subprocess.run([sys.executable, "-m", "mambava.cli", "--params", str(params), "where"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert all(line.startswith("error: ") for line in r.stderr.splitlines())
    assert f"error: {params}:{_line_of(params, 'stride: 600')}: evaluate.stride (600)" in r.stderr
