"""``/metrics`` in Prometheus's text format: requests, tokens, latency histograms, slots."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import MODEL_ID

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    """Parse the exposition, checking its grammar on the way."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    typed: dict[str, str] = {}
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert family in typed or name in typed, f"{name} has no TYPE line"
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


NO_EOS = {"2": -100, "0": -100}


def test_metrics_count_requests_tokens_and_latency(http: httpx.Client) -> None:
    before = scrape(http)
    usages = []
    for _ in range(2):
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "max_tokens": 6,
                "logit_bias": NO_EOS,
                "messages": [{"role": "user", "content": "Tell me about rivers."}],
            },
        )
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    assert http.post("/v1/chat/completions", json={"model": MODEL_ID}).status_code == 400
    assert http.get("/no/such/path/4821").status_code == 404
    after = scrape(http)

    chat = {"method": "POST", "endpoint": "/v1/chat/completions"}
    assert delta(before, after, "lmserve_http_requests_total", **chat, status="200") == 2
    assert delta(before, after, "lmserve_http_requests_total", **chat, status="400") == 1
    unmatched = {"method": "GET", "endpoint": "unmatched", "status": "404"}
    assert delta(before, after, "lmserve_http_requests_total", **unmatched) == 1
    # Raw paths never become labels.
    assert not any("4821" in str(labels) for _, labels in after)

    model = {"model": MODEL_ID}
    completion = sum(usage["completion_tokens"] for usage in usages)
    prompt = sum(usage["prompt_tokens"] for usage in usages)
    assert completion == 12
    assert delta(before, after, "lmserve_completion_tokens_total", **model) == completion
    assert delta(before, after, "lmserve_prompt_tokens_total", **model) == prompt
    for histogram in ("lmserve_time_to_first_token_seconds", "lmserve_tokens_per_second"):
        assert delta(before, after, f"{histogram}_count", **model) == 2
        assert delta(before, after, f"{histogram}_sum", **model) > 0
        buckets = sorted(
            (float(dict(labels)["le"]), count)
            for (name, labels), count in after.items()
            if name == f"{histogram}_bucket"
        )
        counts = [count for _, count in buckets]
        assert counts == sorted(counts)  # cumulative
        assert buckets[-1] == (float("inf"), value(after, f"{histogram}_count", **model))

    assert value(after, "lmserve_models_loaded") == 1
    assert value(after, "lmserve_slots", **model) == 4
    assert value(after, "lmserve_slots_busy", **model) == 0
    assert value(after, "lmserve_queue_depth", **model) == 0


def test_slots_busy_while_generating(http: httpx.Client) -> None:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "max_tokens": 200,
        "stream": True,
        "logit_bias": NO_EOS,
        "messages": [{"role": "user", "content": "Count to a thousand."}],
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as stream:
        # Wait for generated text: the role chunk comes before the engine takes the request.
        # Keep the iterator: a dropped one closes the response, and the server cancels.
        lines = stream.iter_lines()
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break
        during = scrape(http)
    assert value(during, "lmserve_slots_busy", model=MODEL_ID) >= 1
    assert value(during, "lmserve_requests_in_flight") >= 2  # the stream and the scrape
