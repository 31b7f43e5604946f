"""The server's download jobs (LM Studio's /api/v1/models/download), against a stand-in hub."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, install_default_model, start_server
from tests.hf_standin import HubStandIn

REPO = "someone/Tiny-Chat-GGUF"
FILE = "Tiny-Chat.Q4_1.gguf"


@pytest.fixture()
def hub(default_model_file: Path) -> Iterator[HubStandIn]:
    data = default_model_file.read_bytes()
    with HubStandIn() as standin:
        standin.add_file(REPO, FILE, data, sha256=hashlib.sha256(data).hexdigest())
        standin.add_file("someone/Liar-GGUF", "Liar.Q4_1.gguf", data, advertise_sha256="0" * 64)
        yield standin


@pytest.fixture()
def server(tmp_path: Path, default_model_file: Path, hub: HubStandIn) -> Iterator[Server]:
    install_default_model(tmp_path, default_model_file)
    env = hub.env(tmp_path / "hf")
    server = start_server(tmp_path, env=env)
    yield server
    server.stop()


def wait_for(server: Server, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.base_url}/api/v1/models/download/status/{job_id}").json()
        if job["status"] != "downloading":
            return job
        time.sleep(0.1)
    raise AssertionError("the download did not finish")


def test_download_job_fetches_and_the_model_becomes_usable(server: Server) -> None:
    started = httpx.post(f"{server.base_url}/api/v1/models/download", json={"model": REPO})
    assert started.status_code == 200
    job = started.json()
    assert job["status"] == "downloading" and job["job_id"].startswith("job_")
    assert job["total_size_bytes"] == 98_362_432
    done = wait_for(server, job["job_id"])
    assert done["status"] == "completed" and done["completed_at"]
    assert done["downloaded_bytes"] == done["total_size_bytes"]
    target = server.home / "models" / "someone" / "Tiny-Chat-GGUF" / FILE
    assert target.stat().st_size == 98_362_432
    groups = httpx.get(f"{server.base_url}/api/v1/models/download/status").json()
    assert [item["job_id"] for item in groups["completed"]] == [job["job_id"]]
    keys = [m["key"] for m in httpx.get(f"{server.base_url}/api/v1/models").json()["models"]]
    assert "tiny-chat" in keys
    answer = httpx.post(
        f"{server.api_url}/completions",
        timeout=120,
        json={"model": "tiny-chat", "prompt": "Hello", "max_tokens": 3},
    )
    assert answer.status_code == 200
    again = httpx.post(f"{server.base_url}/api/v1/models/download", json={"model": REPO})
    assert again.json()["status"] == "already_downloaded"


def test_a_checksum_mismatch_fails_the_job_and_leaves_nothing(server: Server) -> None:
    job = httpx.post(
        f"{server.base_url}/api/v1/models/download", json={"model": "someone/Liar-GGUF"}
    ).json()
    done = wait_for(server, job["job_id"])
    assert done["status"] == "failed" and "sha256" in done["error"].lower()
    assert not (server.home / "models" / "someone").exists()


@pytest.mark.parametrize(
    ("model", "status"),
    [("../../etc", 400), ("not a repo", 400), ("someone/Missing-GGUF", 502), (f"{REPO}@Q9_Z", 400)],
)
def test_bad_download_requests(server: Server, model: str, status: int) -> None:
    response = httpx.post(f"{server.base_url}/api/v1/models/download", json={"model": model})
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_job_is_404(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/api/v1/models/download/status/job_nope").status_code == 404
