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


def test_environment_yml_matches_pyproject(repo):
    base, dev = _pyproject(repo)
    want = _pins(base + dev)
    env = yaml.safe_load((repo / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = _pins([p for p in pip_block if not p.startswith("-")])
    assert have == want, f"differences: {set(have.items()) ^ set(want.items())}"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"]


def test_lock_agrees_with_pins(repo):
    base, dev = _pyproject(repo)
    lock = _pins((repo / "requirements" / "lock.txt").read_text().splitlines())
    for name, version in _pins(base + dev).items():
        assert lock.get(name) == version, f"requirements/lock.txt has {name}=={lock.get(name)}, pyproject {version}"
