"""``lmserve cache ls|clear``: the prompt cache beyond the slots."""

from __future__ import annotations

import time
from typing import Any

import click

from lmserve.cli.common import (
    ServerClient,
    ServerNotRunning,
    connection_options,
    echo_json,
    human_size,
    table,
)
from lmserve.engine.prompt_cache.disk import clear_folders, list_folders
from lmserve.paths import prompt_cache_dir


@click.group()
def cache() -> None:
    """The prompt cache: states of prompts already read, kept beyond the slots in memory
    (each loaded model's) and on disk (across restarts), so a prompt is read once."""


def _listing(host: str | None, port: int | None, api_key: str | None) -> dict[str, Any]:
    """The running server's report, or, with none running, the files on disk alone."""
    try:
        with ServerClient(host, port, timeout=30.0, api_key=api_key) as client:
            listing: dict[str, Any] = client.get("/lmserve/cache")
            return listing
    except ServerNotRunning:
        root = prompt_cache_dir()
        return {
            "server": False,
            "models": [],
            "disk": {"folder": str(root), "budget_bytes": None, "folders": list_folders(root)},
        }


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@connection_options
def list_cache(as_json: bool, host: str | None, port: int | None, api_key: str | None) -> None:
    """List the prompt cache: each loaded model's memory and disk tiers (size, budget,
    blocks, hits), then every model's states on disk. Without a running server, the files
    on disk alone."""
    listing = _listing(host, port, api_key)
    if as_json:
        echo_json(listing)
        return
    rows = []
    for model in listing.get("models", []):
        stats = model.get("prompt_cache")
        if not stats:
            rows.append([model["identifier"], "off", "-", "-", "-", "-", "-", "-"])
            continue
        for tier in ("memory", "disk"):
            figures = stats.get(tier)
            if figures:
                rows.append(
                    [
                        model["identifier"],
                        tier,
                        human_size(figures["bytes"]),
                        human_size(figures["budget_bytes"]),
                        str(figures["blocks"]),
                        str(figures["tokens"]),
                        str(figures["hits"]),
                        str(figures["hit_tokens"]),
                    ]
                )
    if rows:
        header = ["MODEL", "TIER", "SIZE", "BUDGET", "BLOCKS", "TOKENS", "HITS", "TOKENS RESTORED"]
        click.echo(table(rows, header))
        click.echo()
    elif listing.get("server") is False:
        click.echo("lmserve is not running: the states on disk only.")
    disk = listing["disk"]
    budget = disk.get("budget_bytes")
    folders = disk.get("folders") or []
    total = sum(folder["bytes"] for folder in folders)
    click.echo(
        f"On disk, {disk['folder']}: {human_size(total)}"
        + (f" of {human_size(budget)}" if budget else "")
    )
    if folders:
        now = time.time()
        click.echo(
            table(
                [
                    [
                        folder["key"][:12],
                        str(folder.get("model") or "?"),
                        str(folder["blocks"]),
                        human_size(folder["bytes"]),
                        _ago(now - folder["last_used"]) if folder.get("last_used") else "-",
                    ]
                    for folder in folders
                ],
                ["KEY", "MODEL", "BLOCKS", "SIZE", "LAST USED"],
            )
        )


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(0, seconds):.0f} s ago"


@cache.command("clear")
@click.option("--memory", "tier", flag_value="memory", help="Only the memory tier.")
@click.option("--disk", "tier", flag_value="disk", help="Only the disk tier.")
@click.option("--model", default=None, help="Only this loaded model's (by identifier).")
@connection_options
def clear_cache(
    tier: str | None, model: str | None, host: str | None, port: int | None, api_key: str | None
) -> None:
    """Empty the prompt cache: both tiers of every model, or one tier, or one loaded model's.
    Without a running server, removes the states on disk."""
    tier = tier or "all"
    params = {"tier": tier, **({"model": model} if model else {})}
    try:
        with ServerClient(host, port, timeout=60.0, api_key=api_key) as client:
            result = client.request("DELETE", "/lmserve/cache", params=params)
    except ServerNotRunning:
        if model or tier == "memory":
            raise click.ClickException(
                "lmserve is not running: only the states on disk can be cleared (no --model)."
            ) from None
        removed = clear_folders(prompt_cache_dir())
        click.echo(f"Removed {removed} block files from {prompt_cache_dir()}.")
        return
    for name, counts in result.get("cleared", {}).items():
        click.echo(
            f"{name}: cleared {counts.get('memory_blocks', 0)} blocks from memory, "
            f"{counts.get('disk_blocks', 0)} from disk."
        )
    if result.get("removed_files"):
        click.echo(f"Removed {result['removed_files']} more block files from disk.")
    if not result.get("cleared") and not result.get("removed_files"):
        click.echo("The prompt cache was empty.")
