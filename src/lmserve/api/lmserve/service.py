"""lmserve's own reports: health, and each loaded model's slots."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from lmserve.config import McpSettings
from lmserve.engine.prompt_cache.disk import clear_folders, list_folders
from lmserve.mcp.errors import McpConfigError
from lmserve.mcp.servers import McpServers
from lmserve.models.manager import ModelManager
from lmserve.paths import prompt_cache_dir
from lmserve.plugins import Plugins

CacheTier = Literal["memory", "disk", "all"]


def health(models: ModelManager, draining: bool) -> tuple[dict[str, Any], bool]:
    """The health report, and whether the server is ready (no load under way, no drain)."""
    loading = models.loading
    body = {
        "status": "shutting_down" if draining else "loading" if loading else "ok",
        "models": [model.identifier for model in models.loaded()],
        "loading": loading,
        "restarting": models.restarting,
        "engines": {
            model.identifier: {
                "pid": model.engine.pid,
                **(model.repack.describe() if model.repack else {}),
                # Split over RPC workers (or GPUs): each device's layers and weights.
                **{key: model.config[key] for key in ("rpc", "placement") if key in model.config},
            }
            for model in models.loaded()
        },
        # Without the request ids: /health answers without a key.
        "crashed": [
            {key: value for key, value in record.items() if key != "last_requests"}
            for record in models.crashes.report()
        ],
    }
    return body, not (loading or draining)


async def engine_snapshots(models: ModelManager) -> dict[str, dict[str, Any]]:
    """Each loaded model's engine snapshot (slots, counters, prompt cache; a replicated
    model's replicas), by identifier; a model whose engine crashed just now has none."""
    loaded = models.loaded()
    snapshots = await asyncio.gather(
        *(model.engine.snapshot() for model in loaded), return_exceptions=True
    )
    return {
        model.identifier: snapshot
        for model, snapshot in zip(loaded, snapshots, strict=True)
        if not isinstance(snapshot, BaseException)
    }


async def slots(models: ModelManager) -> list[dict[str, Any]]:
    """Each loaded model's slots: busy or idle, tokens cached, queue depth."""
    snapshots = await engine_snapshots(models)
    return [
        {
            "identifier": model.identifier,
            "n_ctx": model.n_ctx,
            "queue_depth": model.engine.queue_depth,
            "engine_pid": model.engine.pid,
            "engine": snapshot["stats"],
            "prompt_cache": snapshot.get("prompt_cache"),
            "slots": snapshot["slots"],
            # A model served by Ray Serve replicas: each one's node and load.
            **({"replicas": snapshot["replicas"]} if "replicas" in snapshot else {}),
        }
        for model in models.loaded()
        if (snapshot := snapshots.get(model.identifier)) is not None
    ]


async def cache_listing(models: ModelManager) -> dict[str, Any]:
    """The prompt cache: each loaded model's tiers, and every model's folder on disk."""
    snapshots = await engine_snapshots(models)
    caches = {name: snapshot.get("prompt_cache") for name, snapshot in snapshots.items()}
    root = prompt_cache_dir()
    config = models.defaults.prompt_cache
    return {
        "enabled": config.enabled,
        "models": [{"identifier": name, "prompt_cache": stats} for name, stats in caches.items()],
        "disk": {
            "folder": str(root),
            "budget_bytes": config.disk_bytes if config.enabled else 0,
            "folders": await asyncio.to_thread(list_folders, root),
        },
    }


async def clear_cache(
    models: ModelManager, tier: CacheTier, identifier: str | None = None
) -> dict[str, Any]:
    """Empty the prompt cache's ``tier`` (both with ``all``), of one loaded model or of all
    and, on disk, every model's folder; what was removed."""
    memory, disk = tier in ("memory", "all"), tier in ("disk", "all")
    loaded = [m for m in models.loaded() if identifier is None or m.identifier == identifier]
    results = await asyncio.gather(
        *(model.engine.clear_prompt_cache(memory, disk) for model in loaded),
        return_exceptions=True,
    )
    cleared = {
        model.identifier: result
        for model, result in zip(loaded, results, strict=True)
        if not isinstance(result, BaseException)
    }
    removed_files = 0
    if disk and identifier is None:
        # The folders of models not loaded now, too.
        removed_files = await asyncio.to_thread(clear_folders, prompt_cache_dir())
    return {"cleared": cleared, "removed_files": removed_files}


def mcp_report(settings: McpSettings, servers: McpServers) -> dict[str, Any]:
    """``GET /lmserve/mcp``: the flags, and mcp.json's servers (only when requests may use
    them: the file's commands are nobody else's business)."""
    report: dict[str, Any] = {
        "allow_urls": settings.allow_urls,
        "allow_config": settings.allow_config,
        "max_tool_rounds": settings.max_tool_rounds,
        "servers": [],
    }
    if not settings.allow_config:
        return report
    try:
        configured = servers.configured()
    except McpConfigError as exc:
        report["error"] = str(exc)
        return report
    running = set(servers.running())
    report["servers"] = [
        {
            "name": name,
            "transport": "stdio" if spec.is_stdio else "http",
            "running": name in running,
        }
        for name, spec in sorted(configured.items())
    ]
    return report


def plugins_report(plugins: Plugins) -> dict[str, Any]:
    """``GET /lmserve/plugins``."""
    return {
        "plugins": [
            {
                "id": plugin.id,
                "development": True,
                "started": plugin.initialized.is_set(),
                "hooks": sorted(plugin.links),
            }
            for plugin in plugins.listed()
        ]
    }
