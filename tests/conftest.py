"""Shared fixtures. Tests read the device from MAMBAVA_TEST_DEVICE (default cpu), as timm's do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def device() -> str:
    return os.environ.get("MAMBAVA_TEST_DEVICE", "cpu")
