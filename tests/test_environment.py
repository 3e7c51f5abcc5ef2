"""The pins of pyproject.toml and environment.yml agree, and the lock file agrees with both."""

import re
import tomllib

import yaml


def _pins(reqs):
    out = {}
    for r in reqs:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^;\s]+)", r.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _pyproject(repo):
    data = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    base = data["dependencies"]
    dev = data["optional-dependencies"]["dev"]
    return base, dev


def test_every_direct_dependency_is_pinned(repo):
    base, dev = _pyproject(repo)
    for r in base + dev:
        assert "==" in r, f"pyproject.toml: {r!r} is not pinned with =="


# conda-forge's names of the pip packages (the same code; the -base packages leave out GUI extras)
CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib", "seaborn-base": "seaborn"}
# What conda-forge does not ship under the pip package's name and version: pip installs these.
PIP_ONLY = {"opencv-python-headless", "audmetric"}


def _environment(repo):
    """(conda pins with pip's names, pip pins, python spec) of environment.yml."""
    env = yaml.safe_load((repo / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {CONDA_NAMES.get(k, k): v for k, v in _pins(conda).items()}
    return conda_pins, _pins([p for p in pip_block if not p.startswith("-")]), [d for d in conda if d.startswith("python")]


def test_environment_yml_matches_pyproject(repo):
    base, dev = _pyproject(repo)
    want = _pins(base + dev)
    conda, pip, pythons = _environment(repo)
    assert not set(conda) & set(pip), "a package installed twice"
    have = {**conda, **pip}
    assert have == want, f"differences: {set(have.items()) ^ set(want.items())}"
    assert pythons == ["python=3.11"]


def test_environment_yml_takes_the_scientific_stack_from_conda_forge(repo):
    conda, pip, _ = _environment(repo)
    assert set(pip) == PIP_ONLY, f"from pip but on conda-forge: {set(pip) - PIP_ONLY}; missing: {PIP_ONLY - set(pip)}"
    for name in ("torch", "numpy", "scipy", "pandas", "numba", "scikit-learn", "matplotlib", "dvc"):
        assert name in conda, f"{name} is not installed from conda-forge"


def test_lock_agrees_with_pins(repo):
    base, dev = _pyproject(repo)
    lock = _pins((repo / "requirements" / "lock.txt").read_text().splitlines())
    for name, version in _pins(base + dev).items():
        assert lock.get(name) == version, f"requirements/lock.txt has {name}=={lock.get(name)}, pyproject {version}"
