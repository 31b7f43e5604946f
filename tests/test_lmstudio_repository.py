"""The SDKs' ``repository`` namespace (issue 31, item 4): LM Studio's Python SDK searches,
lists download options and downloads, against a stand-in Hugging Face hub on loopback."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import lmstudio as lms
import pytest
from httpx_ws import connect_ws
from lmstudio import LMStudioServerError
from lmstudio._sdk_models import RepositoryRpcGetModelDownloadOptionsParameter as Options
from lmstudio._sdk_models import RepositoryRpcSearchModelsParameter as Search

from tests.conftest import Server, start_server
from tests.hf_standin import HubStandIn

REPO = "someone/Tiny-Chat-GGUF"


@pytest.fixture(scope="module")
def hub(default_model_file: Path) -> Iterator[HubStandIn]:
    data = default_model_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with HubStandIn() as standin:
        standin.add_file(REPO, "Tiny-Chat.Q4_1.gguf", data, sha256=digest)
        standin.add_file(REPO, "Tiny-Chat.Q8_0.gguf", data, sha256=digest)
        standin.add_file("someone/Other-Thing-GGUF", "Other.Q4_0.gguf", b"GGUF" + bytes(60))
        standin.downloads = {REPO: 10, "someone/Other-Thing-GGUF": 5}
        yield standin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: HubStandIn) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    env = hub.env(home / "hf")
    started = start_server(home, "--no-model", env=env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[lms.Client]:
    with lms.Client(f"127.0.0.1:{server.port}") as sdk:
        yield sdk


def test_search_options_and_download_then_the_model_is_downloaded(
    server: Server, client: lms.Client
) -> None:
    found = client.repository.search_models("tiny-chat")
    assert [m.search_result.name for m in found] == [REPO]
    assert found[0].search_result.identifier.identifier == REPO
    assert found[0].search_result.exact
    assert len(client.repository.search_models("gguf", limit=1)) == 1
    assert client.repository.search_models("tiny", compatibility_types=["safetensors"]) == []

    options = found[0].get_download_options()
    infos = [option.info for option in options]
    # The quantization lmserve takes when nobody chooses comes first, recommended.
    assert [(i.quantization, i.recommended) for i in infos] == [("Q8_0", True), ("Q4_1", False)]
    assert infos[1].download_identifier == f"{REPO}/Tiny-Chat.Q4_1.gguf"
    assert infos[1].size_bytes == 98_362_432 and infos[1].fit_estimation == "fitWithoutGPU"

    updates: list[tuple[int, int]] = []
    finalized: list[bool] = []
    key = options[1].download(
        on_progress=lambda update: updates.append((update.downloaded_bytes, update.total_bytes)),
        on_finalize=lambda: finalized.append(True),
    )
    assert key == "tiny-chat"
    assert updates and updates[-1] == (98_362_432, 98_362_432) and finalized == [True]
    assert [d for d, _ in updates] == sorted(d for d, _ in updates)
    target = server.home / "models" / REPO / "Tiny-Chat.Q4_1.gguf"
    assert target.stat().st_size == 98_362_432
    downloaded = {m.model_key: m for m in client.list_downloaded_models()}
    assert downloaded["tiny-chat"].info.path.endswith("Tiny-Chat.Q4_1.gguf")
    model = client.llm.model("tiny-chat")
    assert model.respond("Hi", config={"maxTokens": 2}).stats.predicted_tokens_count == 2
    model.unload()
    # Downloading it again finds it in place: success alone, no progress and no finalizing, as
    # from LM Studio (lms get then says "You already have this model" instead of downloading).
    again: list[object] = []
    key = options[1].download(on_progress=again.append, on_finalize=lambda: again.append("fin"))
    assert key == "tiny-chat" and again == []


def test_lms_get_with_no_term_a_hub_url_or_a_repo_name_finds_the_repository(
    client: lms.Client,
) -> None:
    # `lms get` alone searches with no term (LM Studio's staff picks), `{"opts": {}}`, which
    # the Python SDK will not send: the most downloaded.
    for opts, expected in (({}, [REPO, "someone/Other-Thing-GGUF"]), ({"limit": 1}, [REPO])):
        found = client.repository.remote_call("searchModels", Search._from_api_dict({"opts": opts}))
        assert [result["name"] for result in found["results"]] == expected
    # `lms get https://huggingface.co/publisher/repo` (and hf.co/..., or publisher/repo from
    # an SDK) sends the URL as the term: that repository alone, an exact match.
    for term in (f"https://huggingface.co/{REPO}", f"hf.co/{REPO}", REPO):
        found = client.repository.search_models(term)
        assert [(m.search_result.name, m.search_result.exact) for m in found] == [(REPO, True)]
    assert found[0].get_download_options()[0].info.quantization == "Q8_0"
    assert client.repository.search_models("https://huggingface.co/someone/Missing-GGUF") == []
    # The repository's name with its "-GGUF" is as exact as without.
    assert client.repository.search_models("Tiny-Chat-GGUF")[0].search_result.exact


def test_what_cannot_be_searched_or_downloaded_is_an_error_naming_it(
    server: Server, client: lms.Client
) -> None:
    cases = [("hf", "someone/Missing-GGUF", "no model repository"), ("catalog", REPO, "catalog")]
    for kind, repo, error in cases:
        identifier = {"type": kind, "identifier": repo}
        parameter = Options._from_api_dict({"modelSearchResultIdentifier": identifier})
        with pytest.raises(LMStudioServerError, match=error):
            client.repository.remote_call("getModelDownloadOptions", parameter)
    with pytest.raises(LMStudioServerError, match="search term"):
        client.repository.search_models("../etc")
    with pytest.raises(LMStudioServerError, match="does not serve the 'repository' namespace"):
        client.repository.remote_call("installPluginDependencies")
    assert "refused an SDK call, repository.searchModels: lmserve searches" in server.log()


def test_a_cancel_on_the_channel_stops_the_download(server: Server, hub: HubStandIn) -> None:
    hub.chunk_delay_s = 0.2  # about 5 MB/s: the download lasts while the test cancels it
    try:
        with (
            httpx.Client() as http,
            connect_ws(f"{server.base_url}/repository", http) as ws,
        ):
            ws.send_json({"authVersion": 1, "clientIdentifier": "tests", "clientPasskey": "x"})
            assert ws.receive_json(timeout=10) == {"success": True}
            identifier = f"{REPO}/Tiny-Chat.Q8_0.gguf"
            parameter = {"downloadIdentifier": identifier}
            ws.send_json(
                {
                    "type": "channelCreate",
                    "endpoint": "downloadModel",
                    "channelId": 1,
                    "creationParameter": parameter,
                }
            )
            progress = ws.receive_json(timeout=60)
            assert progress["message"]["type"] == "downloadProgress"
            assert progress["message"]["update"]["totalBytes"] == 98_362_432
            ws.send_json({"type": "channelSend", "channelId": 1, "message": {"type": "cancel"}})
            while (frame := ws.receive_json(timeout=60))["type"] == "channelSend":
                assert frame["message"]["type"] == "downloadProgress"
            assert frame["type"] == "channelError" and "cancelled" in frame["error"]["title"]
    finally:
        hub.chunk_delay_s = 0.0
    deadline = time.monotonic() + 30
    while True:
        jobs = httpx.get(f"{server.base_url}/api/v1/models/download/status", timeout=10).json()
        if not jobs["downloading"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [job["model"] for job in jobs["paused"]] == [REPO]
    assert not (server.home / "models" / REPO / "Tiny-Chat.Q8_0.gguf").exists()
