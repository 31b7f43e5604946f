"""What the in-process tests of the chat page's HTTP side share: an app around an empty
models folder (no model needed), with LMSERVE_HOME in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from lmserve.api.app import create_app
from lmserve.config import Settings
from lmserve.models.manager import ModelManager

LOOPBACK = "http://127.0.0.1:1234"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends


def make_app(home: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> FastAPI:
    monkeypatch.setenv("LMSERVE_HOME", str(home))
    config = Settings(**settings)
    return create_app(ModelManager(home / "models", config), settings=config)


@pytest.fixture(name="client")
def client_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path, monkeypatch), base_url=LOOPBACK) as test_client:
        yield test_client
