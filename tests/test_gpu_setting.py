"""The GPU offload setting: its values, what llama.cpp is asked for, and the CLI's check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmserve.config import check_gpu_setting
from lmserve.engine import worker
from lmserve.engine.worker import gpu_layers


@pytest.mark.parametrize("value", ["auto", "off", "max", "0", "0.5", "1", "1.0"])
def test_valid_settings_pass(value: str) -> None:
    assert check_gpu_setting(value) == value


@pytest.mark.parametrize("value", ["lots", "", "-0.1", "1.5", "nan", "MAX"])
def test_invalid_settings_name_the_choices(value: str) -> None:
    with pytest.raises(ValueError, match="auto, off, max"):
        check_gpu_setting(value)


def test_layers_for_each_setting() -> None:
    assert gpu_layers("off", 30) == 0
    assert gpu_layers("max", 30) == -1
    assert gpu_layers("0.5", 30) == 15
    assert gpu_layers("0", 30) == 0


def test_auto_follows_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "gpu_offload_supported", lambda: True)
    assert gpu_layers("auto", 30) == -1
    monkeypatch.setattr(worker, "gpu_offload_supported", lambda: False)
    assert gpu_layers("auto", 30) == 0


def test_serve_refuses_a_bad_gpu_value_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lmserve", "serve", "--gpu", "lots", "--no-model"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--gpu" in result.stderr and "auto, off, max" in result.stderr
    assert "Traceback" not in result.stderr
