"""Prometheus metrics, in the text exposition format (version 0.0.4), with
``prometheus_client``; lmserve's routes serve them at ``GET /metrics``.

Three sources, none of which the routes need to know about:

- every HTTP request, counted by :class:`MetricsMiddleware` (method, route template, status);
- every finished prediction, from the log bus's listener hook (tokens in and out, time to
  first token, tokens per second);
- the model manager and each model's engine snapshot, read at scrape time (models loaded,
  slots busy, queue depth, prompt caches; a replicated model's replicas, one series each):
  :class:`_Scrape` adds them to the counters' families.

Each app has a registry of its own (tests build several apps in one process), never the
library's global one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import fastapi.routing
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmserve.api.common.lifecycle import Lifecycle
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
UNMATCHED = "unmatched"  # any path no route knows: fuzzers must not blow up the label set
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# No "_created" series beside every counter and histogram: a timestamp per label set that no
# dashboard of ours reads, doubling the exposition.
prometheus_client.disable_created_metrics()

# LM Studio's stats count drafted tokens as accepted, rejected or ignored (never checked).
_DRAFT_OUTCOMES = ("accepted", "rejected", "ignored")


class Metrics:
    """The counters and histograms of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, help_text: str, *labels: str) -> Counter:
            return Counter(name, help_text, labels, registry=self.registry)

        self.requests = counter(
            "lmserve_http_requests",
            "HTTP requests by route and status.",
            "method",
            "endpoint",
            "status",
        )
        self.prompt_tokens = counter(
            "lmserve_prompt_tokens", "Prompt tokens of finished predictions.", "model"
        )
        self.completion_tokens = counter("lmserve_completion_tokens", "Tokens generated.", "model")
        self.predictions = counter(
            "lmserve_predictions", "Finished predictions by stop reason.", "model", "stop_reason"
        )
        self.images = counter(
            "lmserve_images", "Images in prompts given to vision models.", "model"
        )
        self.image_tokens = counter(
            "lmserve_image_tokens", "Prompt tokens those images took.", "model"
        )
        self.reranked = counter(
            "lmserve_reranked_documents", "Documents scored by rerankers.", "model"
        )
        self.mcp_calls = counter(
            "lmserve_mcp_calls", "MCP tool calls the server ran, by outcome.", "server", "outcome"
        )
        self.draft_tokens = counter(
            "lmserve_draft_tokens",
            "Tokens drafted by speculative decoding, by what the model made of them.",
            "model",
            "outcome",
        )
        self.time_to_first_token = Histogram(
            "lmserve_time_to_first_token_seconds",
            "Time from submission to the first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "lmserve_tokens_per_second",
            "Generation speed of each prediction after its first token.",
            ["model"],
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=self.registry,
        )

    def count_request(self, method: str, endpoint: str, status: int) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()

    def observe_record(self, record: dict[str, Any]) -> None:
        """The log bus listener: one call per record, on the event loop."""
        kind = record.get("type")
        model = str(record.get("model"))
        if kind == "llm.prediction.input":
            for image in record.get("images") or ():
                self.images.labels(model).inc()
                self.image_tokens.labels(model).inc(int(image.get("tokens") or 0))
            return
        if kind == "rerank.output":
            self.reranked.labels(model).inc(int(record.get("documents") or 0))
            return
        if kind == "mcp.result":
            outcome = "error" if record.get("error") is not None else "ok"
            self.mcp_calls.labels(str(record.get("server_label")), outcome).inc()
            return
        if kind != "llm.prediction.output":
            return
        stats = record.get("stats") or {}
        self.prompt_tokens.labels(model).inc(int(stats.get("prompt_tokens") or 0))
        self.completion_tokens.labels(model).inc(int(stats.get("completion_tokens") or 0))
        self.predictions.labels(model, str(stats.get("stop_reason"))).inc()
        for outcome in _DRAFT_OUTCOMES:
            count = stats.get(f"{outcome}_draft_tokens_count")
            if count:
                self.draft_tokens.labels(model, outcome).inc(int(count))
        ttft = stats.get("time_to_first_token")
        if isinstance(ttft, int | float) and math.isfinite(ttft):
            self.time_to_first_token.labels(model).observe(float(ttft))
        speed = stats.get("tokens_per_second")
        if isinstance(speed, int | float) and math.isfinite(speed):
            self.tokens_per_second.labels(model).observe(float(speed))

    def render(
        self,
        models: ModelManager,
        lifecycle: Lifecycle | None = None,
        snapshots: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """The exposition; ``snapshots``: each loaded model's engine snapshot (prompt cache
        statistics; a replicated model's replicas), an awaited call the route makes."""
        scrape = _Scrape(self.registry, models, lifecycle, snapshots or {})
        return generate_latest(scrape).decode()  # type: ignore[arg-type]


class _Scrape:
    """The app's counters, and what the models and the server are doing at this scrape."""

    def __init__(
        self,
        registry: CollectorRegistry,
        models: ModelManager,
        lifecycle: Lifecycle | None,
        snapshots: dict[str, dict[str, Any]],
    ) -> None:
        self.registry = registry
        self.models = models
        self.lifecycle = lifecycle
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        loaded = self.models.loaded()
        yield GaugeMetricFamily("lmserve_models_loaded", "Model instances loaded.", len(loaded))
        yield GaugeMetricFamily(
            "lmserve_models_loading", "Models being loaded right now.", len(self.models.loading)
        )
        for name, help_text, value_of in (
            ("lmserve_slots", "Generation slots of each loaded model.", _slots),
            ("lmserve_slots_busy", "Slots generating right now.", _busy_slots),
            ("lmserve_queue_depth", "Requests waiting for a slot.", _queue_depth),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["model"])
            for model in loaded:
                replicas = self.snapshots.get(model.identifier, {}).get("replicas")
                family.add_metric([model.identifier], value_of(model, replicas))
            yield family
        caches = {name: snap.get("prompt_cache") for name, snap in self.snapshots.items()}
        if any(caches.values()):
            yield from _prompt_cache_families(caches)
        yield from _replica_families(self.snapshots)
        if self.lifecycle is not None:
            in_flight = self.lifecycle.in_flight
            yield GaugeMetricFamily(
                "lmserve_requests_in_flight", "HTTP requests being served.", in_flight
            )
            yield GaugeMetricFamily(
                "lmserve_draining", "1 while the server shuts down.", int(self.lifecycle.draining)
            )


_PROMPT_CACHE_FAMILIES = (
    ("lmserve_prompt_cache_bytes", "gauge", "Bytes of prompt states kept, by tier.", "bytes"),
    ("lmserve_prompt_cache_budget_bytes", "gauge", "Each tier's budget.", "budget_bytes"),
    ("lmserve_prompt_cache_blocks", "gauge", "Blocks of prompt states kept, by tier.", "blocks"),
    (
        "lmserve_prompt_cache_hits",
        "counter",
        "Requests that restored prompt tokens from a tier.",
        "hits",
    ),
    (
        "lmserve_prompt_cache_restored_tokens",
        "counter",
        "Prompt tokens restored from a tier instead of computed.",
        "hit_tokens",
    ),
)


def _prompt_cache_families(caches: dict[str, dict[str, Any] | None]) -> Iterator[Metric]:
    for name, kind, help_text, field in _PROMPT_CACHE_FAMILIES:
        kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
        family = kinds[kind](name, help_text, labels=["model", "tier"])
        for model, stats in sorted(caches.items()):
            for tier in ("memory", "disk"):
                figures = (stats or {}).get(tier)
                if figures:
                    family.add_metric([model, tier], figures[field])
        yield family


_REPLICA_FAMILIES = (
    ("lmserve_replica_slots", "Generation slots of each Ray Serve replica.", "slots"),
    ("lmserve_replica_slots_busy", "Slots of each replica generating right now.", "slots_busy"),
    ("lmserve_replica_cached_tokens", "Prompt tokens each replica's slots hold.", "cached_tokens"),
)


def _replica_families(snapshots: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """One series per replica of each replicated model (none without --ray)."""
    replicated = {name: s["replicas"] for name, s in snapshots.items() if s.get("replicas")}
    if not replicated:
        return
    for name, help_text, field in _REPLICA_FAMILIES:
        family = GaugeMetricFamily(name, help_text, labels=["model", "replica", "node"])
        for model, replicas in sorted(replicated.items()):
            for replica in replicas:
                labels = [model, str(replica["replica"]), str(replica["node_address"])]
                family.add_metric(labels, replica[field])
        yield family


Replicas = list[dict[str, Any]] | None


def _slots(model: LoadedModel, replicas: Replicas) -> int:
    if replicas:  # every replica's
        return sum(int(replica["slots"]) for replica in replicas)
    return model.engine.n_slots


def _busy_slots(model: LoadedModel, replicas: Replicas) -> int:
    if replicas:
        return sum(int(replica["slots_busy"]) for replica in replicas)
    return model.engine.busy_slots


def _queue_depth(model: LoadedModel, replicas: Replicas) -> int:
    return model.engine.queue_depth


def flat_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every route, with its full path, ``methods`` and ``matches``.

    Recent FastAPI keeps included routers nested (and walks them with ``iter_route_contexts``);
    older versions keep one flat list.
    """
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(walk(routes)) if walk is not None else list(routes)


def endpoint_of(scope: Scope, routes: Sequence[Any]) -> str:
    """The route template a request matched (``/api/v0/models/{model:path}``), never the raw
    path, so the label set stays as small as the route table.  Requests refused before
    routing (401, 403, 413, 503) are matched here."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and status (outermost layer, so
    refusals by the other guards count too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, router: Router) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router
        self._routes: list[Any] | None = None  # walked on first use: all routers are in by then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the error middleware answers if the app raises before responding

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            method = str(scope.get("method", ""))
            method = method if method in _METHODS else "OTHER"
            if self._routes is None:
                self._routes = flat_routes(self.router.routes)
            self.metrics.count_request(method, endpoint_of(scope, self._routes), status)
