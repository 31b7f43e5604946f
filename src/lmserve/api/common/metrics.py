"""Prometheus metrics, in the text exposition format (version 0.0.4); lmserve's routes serve
them at ``GET /metrics``.

Three sources, none of which the routes need to know about:

- every HTTP request, counted by :class:`MetricsMiddleware` (method, route template, status);
- every finished prediction, from the log bus's listener hook (tokens in and out, time to
  first token, tokens per second);
- the model manager and each model's engine snapshot, read at scrape time (models loaded,
  slots busy, queue depth, prompt caches; a replicated model's replicas, one series each).

Written by hand rather than with ``prometheus_client``: a handful of series, and no global
registry to share between the apps that tests build in one process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import fastapi.routing
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmserve.api.common.lifecycle import Lifecycle
from lmserve.models.loader import LoadedModel
from lmserve.models.manager import ModelManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
UNMATCHED = "unmatched"  # any path no route knows: fuzzers must not blow up the label set
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Labels = tuple[tuple[str, str], ...]


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
        counts[-1] += 1  # +Inf, which is also the count
        self.sums[labels] += value


# LM Studio's stats count drafted tokens as accepted, rejected or ignored (never checked).
_DRAFT_OUTCOMES = ("accepted", "rejected", "ignored")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[Labels, int] = defaultdict(int)
        self.prompt_tokens: dict[Labels, int] = defaultdict(int)
        self.completion_tokens: dict[Labels, int] = defaultdict(int)
        self.predictions: dict[Labels, int] = defaultdict(int)
        self.draft_tokens: dict[Labels, int] = defaultdict(int)
        self.images: dict[Labels, int] = defaultdict(int)
        self.image_tokens: dict[Labels, int] = defaultdict(int)
        self.reranked: dict[Labels, int] = defaultdict(int)
        self.mcp_calls: dict[Labels, int] = defaultdict(int)
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.tokens_per_second = Histogram(TOKENS_PER_SECOND_BUCKETS)

    def count_request(self, method: str, endpoint: str, status: int) -> None:
        self.requests[(("method", method), ("endpoint", endpoint), ("status", str(status)))] += 1

    def observe_record(self, record: dict[str, Any]) -> None:
        """The log bus listener: one call per record, on the event loop."""
        kind = record.get("type")
        model: Labels = (("model", str(record.get("model"))),)
        if kind == "llm.prediction.input":
            for image in record.get("images") or ():
                self.images[model] += 1
                self.image_tokens[model] += int(image.get("tokens") or 0)
            return
        if kind == "rerank.output":
            self.reranked[model] += int(record.get("documents") or 0)
            return
        if kind == "mcp.result":
            outcome = "error" if record.get("error") is not None else "ok"
            server = str(record.get("server_label"))
            self.mcp_calls[(("server", server), ("outcome", outcome))] += 1
            return
        if kind != "llm.prediction.output":
            return
        stats = record.get("stats") or {}
        self.prompt_tokens[model] += int(stats.get("prompt_tokens") or 0)
        self.completion_tokens[model] += int(stats.get("completion_tokens") or 0)
        self.predictions[(*model, ("stop_reason", str(stats.get("stop_reason"))))] += 1
        for outcome in _DRAFT_OUTCOMES:
            count = stats.get(f"{outcome}_draft_tokens_count")
            if count:
                self.draft_tokens[(*model, ("outcome", outcome))] += int(count)
        ttft = stats.get("time_to_first_token")
        if isinstance(ttft, int | float) and math.isfinite(ttft):
            self.time_to_first_token.observe(model, float(ttft))
        speed = stats.get("tokens_per_second")
        if isinstance(speed, int | float) and math.isfinite(speed):
            self.tokens_per_second.observe(model, float(speed))

    def render(
        self,
        models: ModelManager,
        lifecycle: Lifecycle | None = None,
        snapshots: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """The exposition; ``snapshots``: each loaded model's engine snapshot (prompt cache
        statistics; a replicated model's replicas), an awaited call the route makes."""
        snapshots = snapshots or {}
        out = _Exposition()
        out.family("lmserve_http_requests", "counter", "HTTP requests by route and status.")
        out.samples("lmserve_http_requests_total", self.requests)
        out.family("lmserve_prompt_tokens", "counter", "Prompt tokens of finished predictions.")
        out.samples("lmserve_prompt_tokens_total", self.prompt_tokens)
        out.family("lmserve_completion_tokens", "counter", "Tokens generated.")
        out.samples("lmserve_completion_tokens_total", self.completion_tokens)
        out.family("lmserve_predictions", "counter", "Finished predictions by stop reason.")
        out.samples("lmserve_predictions_total", self.predictions)
        out.family("lmserve_images", "counter", "Images in prompts given to vision models.")
        out.samples("lmserve_images_total", self.images)
        out.family("lmserve_image_tokens", "counter", "Prompt tokens those images took.")
        out.samples("lmserve_image_tokens_total", self.image_tokens)
        out.family("lmserve_reranked_documents", "counter", "Documents scored by rerankers.")
        out.samples("lmserve_reranked_documents_total", self.reranked)
        out.family("lmserve_mcp_calls", "counter", "MCP tool calls the server ran, by outcome.")
        out.samples("lmserve_mcp_calls_total", self.mcp_calls)
        out.family(
            "lmserve_draft_tokens",
            "counter",
            "Tokens drafted by speculative decoding, by what the model made of them.",
        )
        out.samples("lmserve_draft_tokens_total", self.draft_tokens)
        out.histogram(
            "lmserve_time_to_first_token_seconds",
            "Time from submission to the first generated token.",
            self.time_to_first_token,
        )
        out.histogram(
            "lmserve_tokens_per_second",
            "Generation speed of each prediction after its first token.",
            self.tokens_per_second,
        )
        loaded = models.loaded()
        out.family("lmserve_models_loaded", "gauge", "Model instances loaded.")
        out.sample("lmserve_models_loaded", (), len(loaded))
        out.family("lmserve_models_loading", "gauge", "Models being loaded right now.")
        out.sample("lmserve_models_loading", (), len(models.loading))
        for name, help_text, value_of in (
            ("lmserve_slots", "Generation slots of each loaded model.", _slots),
            ("lmserve_slots_busy", "Slots generating right now.", _busy_slots),
            ("lmserve_queue_depth", "Requests waiting for a slot.", _queue_depth),
        ):
            out.family(name, "gauge", help_text)
            for model in loaded:
                value = value_of(model, snapshots.get(model.identifier, {}).get("replicas"))
                out.sample(name, (("model", model.identifier),), value)
        caches = {name: snapshot.get("prompt_cache") for name, snapshot in snapshots.items()}
        if any(caches.values()):
            _prompt_cache_families(out, caches)
        _replica_families(out, snapshots)
        if lifecycle is not None:
            out.family("lmserve_requests_in_flight", "gauge", "HTTP requests being served.")
            out.sample("lmserve_requests_in_flight", (), lifecycle.in_flight)
            out.family("lmserve_draining", "gauge", "1 while the server shuts down.")
            out.sample("lmserve_draining", (), int(lifecycle.draining))
        return out.text()


_PROMPT_CACHE_FAMILIES = (
    ("lmserve_prompt_cache_bytes", "gauge", "Bytes of prompt states kept, by tier.", "bytes"),
    ("lmserve_prompt_cache_budget_bytes", "gauge", "Each tier's budget.", "budget_bytes"),
    ("lmserve_prompt_cache_blocks", "gauge", "Blocks of prompt states kept, by tier.", "blocks"),
    (
        "lmserve_prompt_cache_hits_total",
        "counter",
        "Requests that restored prompt tokens from a tier.",
        "hits",
    ),
    (
        "lmserve_prompt_cache_restored_tokens_total",
        "counter",
        "Prompt tokens restored from a tier instead of computed.",
        "hit_tokens",
    ),
)


def _prompt_cache_families(out: _Exposition, caches: dict[str, dict[str, Any] | None]) -> None:
    for name, kind, help_text, field in _PROMPT_CACHE_FAMILIES:
        out.family(name.removesuffix("_total"), kind, help_text)
        for model, stats in sorted(caches.items()):
            for tier in ("memory", "disk"):
                figures = (stats or {}).get(tier)
                if figures:
                    out.sample(name, (("model", model), ("tier", tier)), figures[field])


_REPLICA_FAMILIES = (
    ("lmserve_replica_slots", "Generation slots of each Ray Serve replica.", "slots"),
    ("lmserve_replica_slots_busy", "Slots of each replica generating right now.", "slots_busy"),
    ("lmserve_replica_cached_tokens", "Prompt tokens each replica's slots hold.", "cached_tokens"),
)


def _replica_families(out: _Exposition, snapshots: dict[str, dict[str, Any]]) -> None:
    """One series per replica of each replicated model (none without --ray)."""
    replicated = {name: s["replicas"] for name, s in snapshots.items() if s.get("replicas")}
    if not replicated:
        return
    for name, help_text, field in _REPLICA_FAMILIES:
        out.family(name, "gauge", help_text)
        for model, replicas in sorted(replicated.items()):
            for replica in replicas:
                labels = (
                    ("model", model),
                    ("replica", str(replica["replica"])),
                    ("node", str(replica["node_address"])),
                )
                out.sample(name, labels, replica[field])


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


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: Labels, value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def samples(self, name: str, series: dict[Labels, int]) -> None:
        for labels, value in sorted(series.items()):
            self.sample(name, labels, value)

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self.family(name, "histogram", help_text)
        for labels, counts in sorted(histogram.counts.items()):
            bounds: Iterable[float] = (*histogram.buckets, math.inf)
            for bound, count in zip(bounds, counts, strict=True):
                self.sample(f"{name}_bucket", (*labels, ("le", _number(bound))), count)
            self.sample(f"{name}_sum", labels, histogram.sums[labels])
            self.sample(f"{name}_count", labels, counts[-1])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


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
