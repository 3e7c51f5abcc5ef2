"""Settings a machine cannot run fail at once with one line (issue 24): `device: cuda` or
`model.scan_backend: cuda` where torch sees no GPU, before any training run starts; `device: cpu`
with the CUDA scan is refused when params.yaml is read, at its line."""

from __future__ import annotations

import pytest
import torch
import yaml

from _tiny_project import make_project
from mambava.cli import main
from mambava.config import ConfigError, load_config
from mambava.errors import DeviceError, UserError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _set(root, **changes):
    p = root / "params.yaml"
    raw = yaml.safe_load(p.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, key = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[key] = value
    p.write_text(yaml.safe_dump(raw, sort_keys=False))


@no_gpu
def test_device_errors_are_one_line_user_errors():
    from mambava.models.ssm import resolve_backend
    from mambava.runtime import resolve_device

    for call in (lambda: resolve_device("cuda"), lambda: resolve_backend("cuda", torch.device("cpu"))):
        with pytest.raises(DeviceError) as e:
            call()
        assert isinstance(e.value, UserError) and isinstance(e.value, RuntimeError)
        assert "\n" not in str(e.value) and "cuda" in str(e.value)


@no_gpu
@pytest.mark.parametrize("changes,what", [
    ({"device": "cuda"}, "device: cuda was asked for but torch sees no CUDA device"),
    ({"device": "auto", "model.scan_backend": "cuda"}, "model.scan_backend: cuda needs a CUDA device"),
])
def test_train_refuses_before_any_run(tmp_path, monkeypatch, capsys, changes, what):
    make_project(tmp_path)
    _set(tmp_path, **changes)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-progress", "--variant", "mamba_va"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and what in err[0]
    assert not (tmp_path / "runs").exists()  # nothing was trained or written


def test_cpu_with_the_cuda_scan_is_a_settings_error(tmp_path):
    make_project(tmp_path)
    _set(tmp_path, **{"device": "cpu", "model.scan_backend": "cuda"})
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "params.yaml")
    line = next(i for i, ln in enumerate((tmp_path / "params.yaml").read_text().splitlines(), 1) if "scan_backend" in ln)
    assert f"params.yaml:{line}: model.scan_backend: cuda (mamba-ssm's kernel) cannot run with device: cpu" in str(e.value)
