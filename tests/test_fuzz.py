"""Fuzzing every endpoint of a real server with Hypothesis: more than 10,000 generated bad and
edge-case requests.

The pass condition, checked on every answer: no 5xx, no crash, every error in OpenAI's shape
(Anthropic's on its Messages routes, as that API documents) and under 4 KiB, in-band stream
errors too; and at the end the server still answers a normal request and its log holds no
traceback.  Requests in a method uvicorn's HTTP parser does not know never reach the app: the
parser's own plain "400 Invalid HTTP request received." is tallied apart.

The server runs with an API key (most requests carry it; some carry a wrong one or none) and a
Hugging Face endpoint that refuses connections, so download requests that get as far as the
hub fail fast.  Those come back as 502 ``download_failed``: the one 5xx that is the right
answer (the upstream is down), tallied apart and only allowed on the download route.

Generation stays cheap: a valid generation request asks for at most 3 tokens (mutations of
the token limits are either invalid or small), so most of the run is spent on rejections.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL_ID, Server, free_port, install_default_model, start_server
from tests.hf_standin import hub_env

KEY = "fuzz-key-0d5e"
MAX_ERROR_BYTES = 4096
ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "server_error",
}
# Hypothesis examples per test; each generation example sends two requests: 10,100 in all.
EXAMPLES = {"generation": 2000, "routes": 3700, "raw": 2400}


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    upstream: int = 0  # 502 download_failed: the hub was unreachable on purpose
    unparsable: int = 0  # 400s from uvicorn's HTTP parser: not HTTP it knows, never the app's
    generated: int = 0  # requests that ran the model
    finished: set[str] = field(default_factory=set)
    slow: list[tuple[float, int, str]] = field(default_factory=list)


TALLY = Tally()


@dataclass
class Target:
    server: Server
    http: httpx.Client
    routes: list[tuple[str, str]]  # (method, path template) from the served OpenAPI document


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("fuzz")
    install_default_model(home, default_model_file)
    # No stand-in: a hub where nothing listens, so a fuzzed download route fails fast, offline.
    env = hub_env(f"http://127.0.0.1:{free_port()}", home / "hf")
    # One llama.cpp thread: two spin on each other when the machine is busy with other work,
    # and three-token answers gain nothing from a second.  A body that names no model is
    # served by the one loaded, so a route fuzzed with a body of its own may generate: 16
    # tokens at most where it sets no limit.
    server = start_server(home, "--api-key", KEY, "--threads", "1", "--max-tokens", "16", env=env)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
            spec = http.get("/openapi.json").json()
            routes = [
                (method.upper(), path)
                for path, operations in spec["paths"].items()
                for method in operations
            ]
            yield Target(server, http, routes)
    finally:
        server.stop()


# -- checking every answer -------------------------------------------------------------------


def check_error_body(content: bytes, where: str) -> None:
    assert len(content) <= MAX_ERROR_BYTES, f"{where}: error body of {len(content)} bytes"
    body = json.loads(content)
    if body.get("type") == "error" and " /v1/messages" in where:
        # Anthropic's Messages API documents its own shape: {"type": "error", "error": {...}}.
        assert set(body) == {"type", "error"}, (where, body)
        assert set(body["error"]) == {"type", "message"}, (where, body)
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return
    assert set(body) == {"error"}, (where, body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, (where, error)
    assert isinstance(error["message"], str) and error["message"], (where, error)
    assert error["type"] in ERROR_TYPES, (where, error)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def check(response: httpx.Response, where: str) -> None:
    TALLY.requests += 1
    TALLY.statuses[response.status_code] += 1
    content = response.content
    assert b"Traceback" not in content, where
    if response.status_code == 502 and where.startswith("POST /api/v1/models/download"):
        assert json.loads(content)["error"]["code"] == "download_failed"
        TALLY.upstream += 1
        return
    assert response.status_code < 500, f"{where}: {response.status_code} {content[:500]!r}"
    if response.status_code == 400 and content == b"Invalid HTTP request received.":
        # httptools knows a fixed set of methods; anything else never reaches the app.
        assert response.request.method not in {"GET", "POST", "OPTIONS"}, where
        TALLY.unparsable += 1
        return
    if response.status_code >= 400 and response.request.method != "HEAD":
        check_error_body(content, where)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in content.decode().splitlines():
            if line.startswith("data: {") and '"error"' in line:
                payload = json.loads(line[6:])
                if set(payload) == {"error"}:
                    check_error_body(line[6:].encode(), f"{where} (in-band)")


def send(target: Target, method: str, url: str, **kwargs: Any) -> httpx.Response:
    request = target.http.build_request(method, url, **kwargs)
    where = f"{method} {url} {kwargs.get('content', kwargs.get('json'))!r}"[:300]
    if url.startswith("/lmserve/log/stream"):
        # Endless by design: a subscriber that got its headers has seen all there is.
        response = target.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                check(response, where)
            else:
                TALLY.requests += 1
                TALLY.statuses[response.status_code] += 1
        finally:
            response.close()
        return response
    started = time.monotonic()
    response = target.http.send(request)
    took = time.monotonic() - started
    if took > 1.0:
        TALLY.slow.append((took, response.status_code, where))
    check(response, where)
    return response


# -- strategies ------------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2, 3, 16, 17, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1e-308, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan]
EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate: valid JSON, not valid UTF-8
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ 🙂",
    "<|im_end|>",
    "{{ raise('x') }}",
    "{% for x in range(10**9) %}{% endfor %}",
    "../../etc/passwd",
    "%2e%2e/%2e%2e",
    "a" * 1200,  # longer than any error message may be; short enough to prefill quickly
    MODEL_ID,
    MODEL_ID.upper(),
    "nobody/nothing-GGUF",
    "https://huggingface.co/nobody/nothing",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_FLOATS),
    st.text(max_size=40),
    st.sampled_from(EDGE_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
small_tokens = st.integers(min_value=1, max_value=3)
# A token limit is never mutated into a large valid one: that would generate for seconds.
token_limits = st.one_of(
    small_tokens, st.sampled_from([0, -1, -5, 10**6 + 1, 2**63, "3", 2.5, None, [], {}])
)

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]).filter(bool)},
    optional={
        "content": st.one_of(
            st.text(max_size=60),
            st.sampled_from(EDGE_STRINGS),
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "image_url", "bogus"])},
                    optional={"text": st.one_of(st.text(max_size=30), json_values)},
                ),
                max_size=3,
            ),
            json_values,
        ),
        "name": st.one_of(st.text(max_size=10), json_values),
        "tool_calls": json_values,
        "tool_call_id": json_values,
    },
)

CHAT_FIELDS = {
    "model": st.one_of(st.sampled_from(EDGE_STRINGS), json_values),
    "messages": st.one_of(st.lists(message, max_size=4), json_values),
    "frequency_penalty": json_values,
    "presence_penalty": json_values,
    "logit_bias": st.one_of(
        st.dictionaries(
            st.one_of(st.integers(-5, 60000).map(str), st.text(max_size=6)),
            st.one_of(st.floats(-150, 150), json_values),
            max_size=8,
        ),
        json_values,
    ),
    "max_tokens": json_values,
    "n": st.one_of(st.integers(-2, 20), json_values),
    "seed": json_values,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20), json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": json_values}), json_values),
    "temperature": json_values,
    "top_p": json_values,
    "top_k": json_values,
    "min_p": json_values,
    "repeat_penalty": json_values,
    "ttl": json_values,
    "user": json_values,
    "response_format": st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
            optional={"json_schema": json_values},
        ),
        json_values,
    ),
    "tools": json_values,
    "tool_choice": json_values,
    "logprobs": json_values,
    "top_logprobs": json_values,
    "unknown_field": json_values,
}


@st.composite
def chat_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": draw(st.text(max_size=20))}],
        "max_completion_tokens": draw(small_tokens),
    }
    for name in draw(st.lists(st.sampled_from(sorted(CHAT_FIELDS)), min_size=1, max_size=3)):
        body[name] = draw(CHAT_FIELDS[name])
    if draw(st.booleans()):
        body["max_completion_tokens"] = draw(token_limits)
    if body.get("max_completion_tokens") is None:
        body["max_completion_tokens"] = draw(small_tokens)
    if draw(st.integers(0, 9)) == 0:
        # A required field may go missing (the token limit stays: without it, text flows).
        del body[draw(st.sampled_from(sorted(set(body) - {"max_completion_tokens"})))]
    return body


@st.composite
def completion_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "prompt": draw(
            st.one_of(
                st.text(max_size=20),
                st.lists(st.text(max_size=8), max_size=5),
                st.lists(st.integers(-3, 70000), max_size=8),
                st.lists(st.lists(st.integers(-3, 70000), max_size=5), max_size=4),
                st.sampled_from(EDGE_STRINGS),
                json_values,
            )
        ),
        "max_tokens": draw(small_tokens),
    }
    fields = {
        **{k: v for k, v in CHAT_FIELDS.items() if k not in {"messages", "max_tokens"}},
        "echo": json_values,
        "suffix": st.one_of(st.text(max_size=10), json_values),
        "logprobs": st.one_of(st.integers(-1, 7), json_values),
        "max_tokens": token_limits,
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        body[name] = draw(fields[name])
    if body.get("max_tokens") in (None, -1):
        body["max_tokens"] = draw(small_tokens)  # v0's -1 means "no limit"
    if draw(st.integers(0, 9)) == 0:
        body.pop("prompt")
    return body


def json_payload(value: Any) -> bytes:
    # NaN and Infinity: not JSON, yet what Python's own parser accepts.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


FUZZ_SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}


# -- the tests -------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES["generation"], **FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_generation_endpoints(target: Target, data: st.DataObject) -> None:
    """Each example goes to the OpenAI route and to LM Studio's v0 twin: two requests."""
    if data.draw(st.booleans()):
        body, routes = data.draw(chat_body()), ("/v1/chat/completions", "/api/v0/chat/completions")
    else:
        body, routes = data.draw(completion_body()), ("/v1/completions", "/api/v0/completions")
    content = json_payload(body)
    for route in routes:
        response = send(
            target, "POST", route, content=content, headers={"content-type": "application/json"}
        )
        TALLY.generated += response.status_code == 200
    TALLY.finished.add("generation")


def encoded(text: str, safe: str = "") -> str:
    """Percent-encoded UTF-8, lone surrogates included (as a careless client would send)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def path_for(template: str, value: str) -> str:
    """The template with every parameter set to ``value``, percent-encoded (lone surrogates
    too); a ``:path`` parameter keeps its slashes."""

    def fill(match: re.Match[str]) -> str:
        return encoded(value, safe="/" if match.group(1) == ":path" else "")

    return re.sub(r"\{[^}:]+(:path)?\}", fill, template)


BODY_FIELDS = st.dictionaries(
    st.sampled_from(
        [
            *("model", "instance_id", "quantization", "config", "context_length", "parallel"),
            *("ttl", "identifier", "gpu", "input", "encoding_format", "dimensions"),
            "eval_batch_size",
        ]
    ),
    json_values,
    max_size=5,
)


fake_models = st.one_of(
    st.sampled_from(
        [
            *("nobody/nothing-GGUF", "nobody/nothing-GGUF@Q4_K_M", "a/b", "../../x"),
            *("https://huggingface.co/nobody/nothing/blob/main/x.gguf", "~/.ssh/id_rsa"),
            *("/etc/passwd", "local/../../..", "C:\\x", "nobody/nothing@../../x"),
        ]
    ),
    st.text(max_size=40),
    json_values,
)
# Bodies shaped like each route's own, so requests get past the first check.
ROUTE_BODIES: dict[str, Any] = {
    "/api/v1/models/download": st.fixed_dictionaries(
        {"model": fake_models}, optional={"quantization": json_values}
    ),
    "/api/v1/models/load": st.fixed_dictionaries(
        {"model": fake_models},
        optional={
            "config": st.one_of(BODY_FIELDS, json_values),
            "context_length": json_values,
            "parallel": json_values,
            "identifier": json_values,
            "ttl": json_values,
            "gpu": json_values,
        },
    ),
    "/api/v1/models/unload": st.fixed_dictionaries({"instance_id": fake_models}),
    "/v1/embeddings": st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL_ID, "nope"]), "input": json_values},
        optional={"encoding_format": json_values, "dimensions": json_values},
    ),
}


def safe_model_names(value: Any) -> bool:
    """Never name the real model in load/unload: a fuzzer must not unload what it tests."""
    return MODEL_ID not in json.dumps(value).lower()


def fuzz_route(target: Target, route: tuple[str, str], data: st.DataObject) -> None:
    """One request to ``route``: its own method or another, an odd path value, a query
    string, a body shaped like the route's own or anything at all, a key or not."""
    method, template = route
    if data.draw(st.integers(0, 4)) == 0:
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]))
    value = data.draw(st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(EDGE_STRINGS)))
    url = path_for(template, value or "x")
    query = data.draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8)))
    if query:
        url += "?" + "&".join(f"{encoded(k)}={encoded(v)}" for k, v in query.items())
    shaped = ROUTE_BODIES.get(template.replace("/api/v0/", "/v1/"), BODY_FIELDS)
    body = data.draw(st.one_of(shaped, json_values).filter(safe_model_names))
    headers = {"content-type": "application/json"}
    # Mostly the right key (Hypothesis favours the first choice), sometimes none or a wrong one.
    auth = data.draw(st.sampled_from(["key", "key", "key", "wrong", "none"]))
    if auth == "wrong":
        headers["Authorization"] = "Bearer wrong"
    elif auth == "none":
        headers["Authorization"] = ""
    kwargs: dict[str, Any] = {"headers": headers}
    if method not in {"GET", "HEAD"} or data.draw(st.booleans()):
        kwargs["content"] = json_payload(body)
    send(target, method, url, **kwargs)


def route_fuzzer(target: Target, route: tuple[str, str], examples: int) -> Any:
    @settings(max_examples=examples, **FUZZ_SETTINGS)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        fuzz_route(target, route, data)

    return fuzz


def test_fuzz_every_route(target: Target) -> None:
    """Every route of the served OpenAPI document gets its share of the examples."""
    per_route = EXAMPLES["routes"] // len(target.routes) + 1
    for route in target.routes:
        route_fuzzer(target, route, per_route)()
    TALLY.finished.add("routes")


raw_paths = st.one_of(
    st.sampled_from(
        [
            *("/", "/v1", "/v1/", "/v1/models/", "/api", "/api/v0/models/%2e%2e%2f%2e%2e"),
            *("/%00", "/docs", "/redoc", "/openapi.json", "/health/", "//v1/models"),
            "/v1/chat/completions/",
        ]
    ),
    st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4).map(
        lambda parts: "/" + "/".join(quote(part, safe="") for part in parts)
    ),
)


@settings(max_examples=EXAMPLES["raw"], **FUZZ_SETTINGS)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "BREW"]),
    path=st.one_of(raw_paths, st.sampled_from(["/v1/chat/completions", "/v1/completions"])),
    content=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "multipart"]
    ),
    host=st.sampled_from([None, None, None, "evil.example", "localhost:1", "[::1]", "a b"]),
    origin=st.sampled_from([None, "http://evil.example", "null"]),
)
def test_fuzz_raw_requests(
    target: Target,
    method: str,
    path: str,
    content: bytes,
    content_type: str,
    host: str | None,
    origin: str | None,
) -> None:
    """Bytes that are not JSON, odd content types, foreign Host headers, unknown paths and
    methods, preflight-looking requests: one request each."""
    headers = {"content-type": content_type}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
        headers["Access-Control-Request-Method"] = "POST"
    send(target, method, path, content=content, headers=headers)
    TALLY.finished.add("raw")


def test_after_the_fuzzing_the_server_still_serves(target: Target) -> None:
    reply = target.http.post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert target.server.process.poll() is None
    log = target.server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    server_errors = sum(n for status, n in TALLY.statuses.items() if status >= 500)
    print(
        f"fuzzed {TALLY.requests} requests ({TALLY.generated} generated text); statuses "
        f"{dict(sorted(TALLY.statuses.items()))}; 5xx: {server_errors - TALLY.upstream} "
        f"(+{TALLY.upstream} 502 download_failed from the unreachable hub); "
        f"{TALLY.unparsable} refused by the HTTP parser"
    )
    for took, status, where in sorted(TALLY.slow, reverse=True)[:5]:
        print(f"slowest: {took:.1f} s, {status}: {where[:120]}")
    assert server_errors == TALLY.upstream
    if TALLY.finished >= set(EXAMPLES):
        assert TALLY.requests >= 10_000
