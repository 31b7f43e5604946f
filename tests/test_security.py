"""Network defaults and API keys: loopback bind, the Host check, CORS, keys on every route."""

from __future__ import annotations

import hmac
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from lmserve.api.app import create_app
from lmserve.api.common.metrics import flat_routes
from lmserve.api.common.security import PUBLIC_PAGE_PREFIX, PUBLIC_PATHS
from lmserve.apikeys import APIKeys, KeyFileError, read_key_file
from lmserve.cli.server import _serve_arguments, _serve_environment
from lmserve.config import Settings
from lmserve.models.manager import ModelManager
from tests.conftest import MODEL_ID, free_port, install_default_model, run_cli, start_server

KEY = "sk-lmserve-test-1f0c9a7e"
OTHER_KEY = "sk-second-key-5b2d"
LOOPBACK = "http://127.0.0.1:1234"


def make_app(tmp_path: Path, **settings: Any) -> FastAPI:
    config = Settings(**settings)
    return create_app(ModelManager(tmp_path / "models", config), settings=config)


@pytest.fixture()
def keyed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("LMSERVE_HOME", str(tmp_path))
    app = make_app(tmp_path, api_keys=(KEY, OTHER_KEY), cors_origins=("*",))
    with TestClient(app, base_url=LOOPBACK) as client:
        yield client


def assert_error_shape(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    return body["error"]


def concrete(path: str) -> str:
    """A request path for a route template: every parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    table = []
    for route in flat_routes(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                table.append((method, route.path))
    return table


# -- API keys --------------------------------------------------------------------------------


def test_every_route_but_the_public_ones_needs_a_key(keyed_app: TestClient) -> None:
    table = route_table(keyed_app.app)  # type: ignore[arg-type]
    assert len(table) >= 15
    # The chat page's files load without a key (tests/test_webui_api.py); nothing else does.
    guarded = [
        (method, path)
        for method, path in table
        if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PAGE_PREFIX)
    ]
    assert ("GET", "/metrics") in guarded and ("POST", "/v1/chat/completions") in guarded
    keyed_app.app.state.logs.close()  # type: ignore[attr-defined]  # log streams end at once
    for method, path in guarded:
        url = concrete(path)
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": f"Bearer {KEY}x"},
            {"Authorization": f"Bearer {KEY[:-1]}"},
            {"x-api-key": "wrong"},
        ):
            response = keyed_app.request(method, url, headers=headers)
            if path.startswith("/v1/messages"):  # Anthropic's routes answer in its shape
                assert response.status_code == 401
                assert response.json()["error"]["type"] == "authentication_error"
            else:
                error = assert_error_shape(response, 401, "authentication_error")
                assert error["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
            assert KEY not in response.text
        for headers in (
            {"Authorization": f"Bearer {KEY}"},
            {"Authorization": f"bearer {OTHER_KEY}"},
            {"x-api-key": KEY},
        ):
            response = keyed_app.request(method, url, headers=headers)
            assert response.status_code != 401, (method, path, headers)
    for path in PUBLIC_PATHS:
        assert keyed_app.get(path).status_code == 200


def test_cors_preflight_needs_no_key(keyed_app: TestClient) -> None:
    preflight = keyed_app.options(
        "/v1/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    # The refusal itself carries CORS headers, so a page can read why.
    refused = keyed_app.post("/v1/chat/completions", headers={"Origin": "http://app.example"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"


def test_without_keys_any_key_or_none_is_accepted(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path), base_url=LOOPBACK) as client:
        for headers in ({}, {"Authorization": "Bearer lm-studio"}, {"x-api-key": "anything"}):
            assert client.get("/v1/models", headers=headers).status_code == 200


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = APIKeys(["first-key", "second-key", "third-key"])
    assert keys.accepts("first-key") and keys.accepts("third-key")
    for wrong in (None, "", "first-ke", "first-key ", "FIRST-KEY", "first-keyfirst-key"):
        assert not keys.accepts(wrong)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in ("first-key", "nope", "x" * 10_000):
        calls.clear()
        keys.accepts(presented)
        # Every configured key is compared, whichever matches; digests of one fixed length.
        assert len(calls) == 3
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}
    assert APIKeys().accepts(None) and APIKeys().accepts("whatever")


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\n\nalpha-key\n  beta-key  \n")
    assert read_key_file(path) == ["alpha-key", "beta-key"]
    path.write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="holds no key"):
        read_key_file(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing")


# -- Host check and CORS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:1234",
        "localhost",
        "LOCALHOST:1234",
        "localhost.",
        "[::1]:1234",
        "127.8.9.1",
        "app.localhost:1234",
    ],
)
def test_loopback_host_names_are_answered(tmp_path: Path, host: str) -> None:
    with TestClient(make_app(tmp_path), base_url=LOOPBACK) as client:
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:1234", "192.168.1.20:1234", "localhost.evil.example"]
)
def test_a_foreign_host_header_is_refused_on_loopback(tmp_path: Path, host: str) -> None:
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own name."""
    with TestClient(make_app(tmp_path), base_url=LOOPBACK) as client:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            response = client.request(method, path, headers={"Host": host}, json={})
            error = assert_error_shape(response, 403, "permission_error")
            assert error["code"] == "invalid_host"


def test_allowed_hosts_and_non_loopback_binds(tmp_path: Path) -> None:
    app = make_app(tmp_path, allowed_hosts=("proxy.internal",))
    with TestClient(app, base_url=LOOPBACK) as client:
        assert client.get("/v1/models", headers={"Host": "proxy.internal:80"}).status_code == 200
        assert client.get("/v1/models", headers={"Host": "other.internal"}).status_code == 403
    # Bound to every interface on purpose: the Host header is not checked (keys protect it).
    with TestClient(make_app(tmp_path, host="0.0.0.0"), base_url=LOOPBACK) as client:
        assert client.get("/v1/models", headers={"Host": "10.1.2.3:1234"}).status_code == 200


def test_cors_is_off_by_default(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path), base_url=LOOPBACK) as client:
        response = client.get("/v1/models", headers={"Origin": "http://app.example"})
        assert response.status_code == 200
        assert not any(name.startswith("access-control-") for name in response.headers)
        preflight = client.options(
            "/v1/models",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_never_with_credentials(tmp_path: Path) -> None:
    app = make_app(tmp_path, cors_origins=("http://good.example",))
    with TestClient(app, base_url=LOOPBACK) as client:
        good = client.get("/v1/models", headers={"Origin": "http://good.example", "Cookie": "a=b"})
        assert good.headers["access-control-allow-origin"] == "http://good.example"
        assert "access-control-allow-credentials" not in good.headers
        bad = client.get("/v1/models", headers={"Origin": "http://bad.example"})
        assert "access-control-allow-origin" not in bad.headers
    with TestClient(make_app(tmp_path, cors_origins=("*",)), base_url=LOOPBACK) as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "http://any.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in preflight.headers


# -- the real server -------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (Linux's /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(address)
    return found


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("keyed")
    install_default_model(home, default_model_file)
    key_file = home / "keys.txt"
    key_file.write_text(f"# keys\n{OTHER_KEY}\n")
    server = start_server(
        home, "--api-key", KEY, "--api-key-file", str(key_file), "--log-level", "debug"
    )
    yield server
    server.stop()


def test_the_default_bind_is_loopback_only(keyed_server: Any) -> None:
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux's /proc/net/tcp")
    assert listening_addresses(keyed_server.port) == {"0100007F"}  # 127.0.0.1, nothing else


def test_the_real_server_wants_a_key_and_never_logs_it(keyed_server: Any) -> None:
    for key in (KEY, OTHER_KEY):
        with openai.OpenAI(base_url=keyed_server.api_url, api_key=key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model=MODEL_ID,
                max_tokens=3,
                messages=[{"role": "user", "content": "secret-prompt-marker-4471"}],
            )
            assert reply.choices[0].message.content is not None
    with (
        openai.OpenAI(base_url=keyed_server.api_url, api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
    assert httpx.get(f"{keyed_server.base_url}/health").status_code == 200
    metrics = httpx.get(f"{keyed_server.base_url}/metrics")
    assert metrics.status_code == 401
    log = keyed_server.log()
    assert "POST /v1/chat/completions" in log  # debug: the access log is on
    assert KEY not in log and OTHER_KEY not in log
    # Prompts reach only the log stream a user asks for, never the server's log.
    assert "secret-prompt-marker-4471" not in log


def test_server_start_passes_the_key_without_writing_it_down(
    tmp_path: Path, default_model_file: Path
) -> None:
    home = tmp_path / "home"
    install_default_model(home, default_model_file)
    port = str(free_port())
    started = run_cli(home, "server", "start", "--port", port, "--api-key", KEY, timeout=300)
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        state_text = (home / "server.json").read_text()
        assert KEY not in state_text
        state = json.loads(state_text)
        refused = run_cli(home, "ps")
        assert refused.returncode != 0
        assert "API key" in refused.stderr and "--api-key" in refused.stderr
        assert run_cli(home, "ps", "--api-key", KEY).returncode == 0
        by_env = run_cli_env(home, {"LMSERVE_API_KEY": KEY}, "ps", "--json")
        assert by_env.returncode == 0 and MODEL_ID in by_env.stdout
        chat = run_cli(home, "chat", "-p", "Say hi", "--api-key", KEY)
        assert chat.returncode == 0, chat.stderr
        cmdline = Path(f"/proc/{state['pid']}/cmdline")
        if cmdline.exists():
            assert KEY not in cmdline.read_bytes().decode(errors="replace")
    finally:
        assert run_cli(home, "server", "stop").returncode == 0
    for log in (home / "logs").iterdir():
        assert KEY not in log.read_text(errors="replace")


def run_cli_env(home: Path, extra: dict[str, str], *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "lmserve", *args],
        env={**os.environ, "LMSERVE_HOME": str(home), **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_server_start_hands_keys_over_in_the_environment_only() -> None:
    options = {
        "host": "127.0.0.1",
        "port": 1234,
        "api_keys": (KEY, OTHER_KEY),
        "api_key_file": None,
        "allowed_hosts": ("a.internal", "b.internal"),
        "cors": False,
        "timeout": 600.0,
    }
    arguments = _serve_arguments(options)
    assert KEY not in " ".join(arguments) and "--api-key" not in arguments
    assert arguments.count("--allow-host") == 2 and "b.internal" in arguments
    assert _serve_environment(options)["LMSERVE_API_KEY"] == f"{KEY} {OTHER_KEY}"
