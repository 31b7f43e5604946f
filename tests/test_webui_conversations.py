"""The conversations API (/lmserve/conversations) in process: a round trip, bad imports and
bad requests (400s that name the field), any JSON at all (never a 500), the database off
the event loop, and a database file it cannot use (reported, kept, and fine once moved)."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.vision_assets import data_url, image_bytes
from tests.webui_app import HTML, LOOPBACK, client_fixture, make_app  # noqa: F401 (a fixture)


def test_conversations_round_trip(client: TestClient) -> None:
    created = client.post(
        "/lmserve/conversations", json={"title": "Trip", "settings": {"temperature": 0.2}}
    )
    assert created.status_code == 201
    ident = created.json()["id"]
    base = f"/lmserve/conversations/{ident}"
    question = client.post(f"{base}/messages", json={"role": "user", "content": "Hi"}).json()
    answer = client.post(
        f"{base}/messages",
        json={
            "role": "assistant",
            "content": "Hello",
            "parent_id": question["id"],
            "reasoning_content": "be kind",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "meta": {
                "request_id": "chatcmpl-1",
                "prompt": "<|im_start|>user\nHi",
                "prompt_tokens": 9,
            },
        },
    ).json()
    client.patch(base, json={"title": "Renamed", "settings": {"seed": 7, "stop": ["\n"]}})
    stored = client.get(base).json()
    assert stored["title"] == "Renamed"
    assert stored["settings"]["seed"] == 7 and stored["settings"]["stop"] == ["\n"]
    assert stored["current_leaf"] == answer["id"]
    assert stored["messages"][1]["meta"]["prompt_tokens"] == 9
    assert stored["messages"][1]["tool_calls"][0]["function"]["name"] == "f"
    listed = client.get("/lmserve/conversations").json()["data"]
    assert [(c["id"], c["messages"]) for c in listed] == [(ident, 2)]
    exported = client.get(f"{base}/export")
    assert "attachment" in exported.headers["content-disposition"]
    imported = client.post(
        "/lmserve/conversations/import",
        content=exported.content,
        headers={"content-type": "application/json"},
    )
    assert imported.status_code == 201
    copy = client.get(f"/lmserve/conversations/{imported.json()['data'][0]['id']}").json()
    assert [m["content"] for m in copy["messages"]] == ["Hi", "Hello"]
    assert client.delete(base).json()["deleted"] is True
    missing = client.get(base)
    assert (
        missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"
    )
    assert len(client.get("/lmserve/conversations").json()["data"]) == 1


def test_mcp_servers_and_calls_are_kept_with_the_conversation(client: TestClient) -> None:
    """The MCP servers switched on, tool_choice and an answer's MCP calls: stored, read back,
    exported and imported as they were; a bad name, or calls on a user message, a 400."""
    settings = {"mcp_servers": ["local", "docs.v2"], "tool_choice": "secret_word"}
    ident = client.post("/lmserve/conversations", json={"settings": settings}).json()["id"]
    base = f"/lmserve/conversations/{ident}"
    question = client.post(f"{base}/messages", json={"role": "user", "content": "Hi"}).json()
    call = {
        "id": "mcp_1",
        "server_label": "local",
        "name": "secret_word",
        "arguments": '{"topic": "apples"}',
        "output": "The secret word for apples is nonce-1.",
        "error": None,
        "status": "completed",
    }
    failed = {**call, "id": "mcp_2", "name": "explode", "output": None, "error": "exploded"}
    answer = client.post(
        f"{base}/messages",
        json={
            "role": "assistant",
            "content": "It is nonce-1.",
            "parent_id": question["id"],
            "mcp_calls": [call, {**failed, "status": "failed"}],
        },
    )
    assert answer.status_code == 201, answer.text
    calls = [call, {**failed, "status": "failed"}]
    assert answer.json()["mcp_calls"] == calls
    kept = client.get(base).json()
    assert kept["settings"]["mcp_servers"] == ["local", "docs.v2"]
    assert kept["settings"]["tool_choice"] == "secret_word"
    assert [m["mcp_calls"] for m in kept["messages"]] == [None, calls]
    exported = client.get(f"{base}/export").json()
    assert exported["version"] == 3
    imported = client.post("/lmserve/conversations/import", json=exported)
    assert imported.status_code == 201, imported.text
    copy = client.get(f"/lmserve/conversations/{imported.json()['data'][0]['id']}").json()
    assert copy["settings"] == kept["settings"]
    assert [m["mcp_calls"] for m in copy["messages"]] == [None, calls]
    switched_off = client.patch(base, json={"settings": {"seed": 1}}).json()["settings"]
    assert switched_off["mcp_servers"] == [] and switched_off["tool_choice"] is None
    bad = [
        ("PATCH", base, {"settings": {"mcp_servers": ["../etc"]}}, "settings.mcp_servers"),
        ("PATCH", base, {"settings": {"tool_choice": "a b"}}, "settings.tool_choice"),
        ("POST", f"{base}/messages", {"role": "user", "mcp_calls": [call]}, None),
        ("POST", f"{base}/messages", {"role": "assistant", "mcp_calls": [{**call, "x": 1}]}, None),
    ]
    for method, path, body, param in bad:
        response = client.request(method, path, json=body)
        assert response.status_code == 400, (body, response.text)
        if param is not None:
            assert response.json()["error"]["param"].startswith(param), response.text
    assert len(client.get(base).json()["messages"]) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"format": "lmserve.conversations", "version": 1, "conversations": [', None),
        (b"not json at all", None),
        (b"[]", None),
        (json.dumps({"format": "other", "version": 1, "conversations": []}).encode(), "format"),
        (
            json.dumps(
                {"format": "lmserve.conversations", "version": 9, "conversations": []}
            ).encode(),
            "version",
        ),
        (
            json.dumps(
                {
                    "format": "lmserve.conversations",
                    "version": 1,
                    "conversations": [
                        {
                            "id": "c",
                            "title": "t",
                            "created_at": 1,
                            "updated_at": 1,
                            "messages": [
                                {
                                    "id": "m",
                                    "parent_id": "ghost",
                                    "role": "user",
                                    "content": "x",
                                    "created_at": 1,
                                }
                            ],
                        }
                    ],
                }
            ).encode(),
            "conversations[0].messages[0].parent_id",
        ),
        (
            json.dumps(
                {"format": "lmserve.conversations", "version": 1, "conversations": [], "extra": 1}
            ).encode(),
            "extra",
        ),
    ],
    ids=["truncated", "not-json", "array", "format", "version", "dangling-parent", "unknown-field"],
)
def test_a_bad_import_is_a_400_and_imports_nothing(
    client: TestClient, body: bytes, param: str | None
) -> None:
    response = client.post(
        "/lmserve/conversations/import", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert client.get("/lmserve/conversations").json()["data"] == []


def test_bad_requests_are_400s_that_say_what(client: TestClient) -> None:
    ident = client.post("/lmserve/conversations", json={}).json()["id"]
    base = f"/lmserve/conversations/{ident}"
    cases = [
        ("POST", f"{base}/messages", {"role": "wizard", "content": "x"}, "role"),
        ("POST", f"{base}/messages", {"role": "user", "parent_id": "msg_nope"}, "parent_id"),
        ("PATCH", base, {"current_leaf": "msg_nope"}, "current_leaf"),
        ("PATCH", base, {"settings": {"temperature": 9}}, "settings.temperature"),
        ("PATCH", base, {"title": "x" * 201}, "title"),
        ("POST", "/lmserve/conversations", {"settings": {"colour": "red"}}, "settings.colour"),
    ]
    for method, path, body, param in cases:
        response = client.request(method, path, json=body)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["error"]["param"] == param
    assert client.get("/lmserve/conversations/conv_missing/export").status_code == 404
    lone_surrogate = b'{"role": "user", "content": "\\ud800"}'
    sent = client.post(
        f"{base}/messages", content=lone_surrogate, headers={"content-type": "application/json"}
    )
    assert sent.status_code == 400
    not_a_number = b'{"role": "user", "meta": {"tokens_per_second": NaN}}'
    sent = client.post(
        f"{base}/messages", content=not_a_number, headers={"content-type": "application/json"}
    )
    assert sent.status_code == 400 and sent.json()["error"]["param"] == "meta"


def test_an_image_is_served_as_its_bytes_and_a_bad_one_is_a_400(client: TestClient) -> None:
    png = image_bytes("PNG", seed=2)
    ident = client.post("/lmserve/conversations", json={}).json()["id"]
    base = f"/lmserve/conversations/{ident}"
    sent = client.post(
        f"{base}/messages", json={"role": "user", "images": [{"url": data_url(png)}]}
    ).json()
    image = client.get(f"{base}/images/{sent['images'][0]['id']}")
    assert image.content == png and image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in image.headers["content-security-policy"]
    assert client.get(f"{base}/images/{'0' * 64}").json()["error"]["code"] == "image_not_found"
    html = "data:image/png;base64," + base64.b64encode(b"<html><script>").decode()
    refused = client.post(f"{base}/messages", json={"role": "user", "images": [{"url": html}]})
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["code"] == "invalid_image"
    assert error["param"] == "images[0].url"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
message_bodies = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "x"])},
    # Mostly well-typed fields, so that the values inside them get a look too.
    optional={
        "content": st.text(max_size=20) | json_values,
        "meta": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
        "tool_calls": st.lists(st.dictionaries(st.text(max_size=8), json_values), max_size=2),
        "parent_id": json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(["messages", "patch", "create", "import"]),
    body=st.one_of(message_bodies, json_values),
)
def test_no_body_makes_a_server_error(client: TestClient, route: str, body: Any) -> None:
    """Whatever JSON comes (NaN and Infinity included, as Python's parser takes them), the
    answer is a success or a 4xx, never a 500."""
    ident = client.post("/lmserve/conversations", json={}).json()["id"]
    method, path = {
        "messages": ("POST", f"/lmserve/conversations/{ident}/messages"),
        "patch": ("PATCH", f"/lmserve/conversations/{ident}"),
        "create": ("POST", "/lmserve/conversations"),
        "import": ("POST", "/lmserve/conversations/import"),
    }[route]
    content = json.dumps(body, allow_nan=True).encode()
    response = client.request(
        method, path, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if response.status_code < 300:  # what was stored reads and exports back
        assert client.get(f"/lmserve/conversations/{ident}").status_code == 200
        assert client.get(f"/lmserve/conversations/{ident}/export").status_code == 200


async def test_the_database_never_blocks_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database's write lock: a write waits for it on the
    database's thread while the server goes on answering, then goes through."""
    app = make_app(tmp_path, monkeypatch)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as http:
        ident = (await http.post("/lmserve/conversations", json={})).json()["id"]
        path = tmp_path / "conversations.sqlite3"
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            write = asyncio.create_task(
                http.post(f"/lmserve/conversations/{ident}/messages", json={"role": "user"})
            )
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for the lock...
            started = time.perf_counter()
            health = await http.get("/health")
            assert health.status_code in {200, 503}  # ...and the server still answers
            assert time.perf_counter() - started < 0.5
            other.execute("COMMIT")
        assert (await asyncio.wait_for(write, 10)).status_code == 201
        # Many tabs at once: every message is kept.
        sends = [
            http.post(
                f"/lmserve/conversations/{ident}/messages", json={"role": "user", "content": str(n)}
            )
            for n in range(30)
        ]
        assert {r.status_code for r in await asyncio.gather(*sends)} == {201}
        stored = (await http.get(f"/lmserve/conversations/{ident}")).json()
        assert len(stored["messages"]) == 31
    await app.state.conversations.aclose()


def test_a_broken_database_file_is_reported_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "conversations.sqlite3"
    path.write_bytes(b"definitely not sqlite\n" * 50)
    before = path.read_bytes()
    with TestClient(make_app(tmp_path, monkeypatch), base_url=LOOPBACK) as client:
        for method, url in (("GET", "/lmserve/conversations"), ("POST", "/lmserve/conversations")):
            response = client.request(method, url, json={})
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["code"] == "conversations_unusable"
            assert str(path) in error["message"] and "not a SQLite database" in error["message"]
        assert client.get("/health").status_code in {200, 503}  # the server serves on
        assert client.get("/", headers=HTML).status_code == 200
        assert path.read_bytes() == before
        # The user moves it away: conversations work again, without a restart.
        path.rename(tmp_path / "moved-away.sqlite3")
        assert client.post("/lmserve/conversations", json={}).status_code == 201
    assert (tmp_path / "moved-away.sqlite3").read_bytes() == before
