"""``lmserve ls``, ``ps``, ``load`` and ``unload``: models on disk and in the server."""

from __future__ import annotations

import difflib
from typing import Any

import click

from lmserve.cli.common import (
    ServerClient,
    connection_options,
    crash_line,
    echo_json,
    gpu_option,
    human_size,
    interactive,
    mmproj_option,
    placement_lines,
    rpc_options,
    table,
    with_options,
)
from lmserve.config import (
    FLASH_ATTENTION_HELP,
    FLASH_ATTENTION_SETTINGS,
    GPU_SETTINGS_HELP,
    KV_CACHE_TYPE_HELP,
    KV_CACHE_TYPES,
    REPACK_HELP,
    REPACK_SETTINGS,
)
from lmserve.models.catalog import Catalog, CatalogEntry
from lmserve.paths import models_dir


def _entry_row(catalog: Catalog, entry: CatalogEntry) -> dict[str, Any]:
    header = entry.header
    return {
        "key": catalog.public_id(entry),
        "type": entry.model_type,
        "path": entry.relative_path,
        "publisher": entry.publisher,
        "architecture": header.architecture,
        "params": header.metadata.get("general.size_label") or header.parameter_count,
        "quantization": entry.quantization,
        "size_bytes": entry.size_bytes,
        "max_context_length": header.context_length,
        "chat_template": header.chat_template is not None,
        "vision": entry.vision,
        "mmproj": entry.mmproj.name if entry.mmproj is not None else None,
    }


@click.command("ls")
@click.option("--llm", "only", flag_value="llm", help="Only language models.")
@click.option("--embedding", "only", flag_value="embeddings", help="Only embedding models.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_models(only: str | None, as_json: bool) -> None:
    """List the downloaded models (read from the models folder; no server needed)."""
    catalog = Catalog.scan(models_dir())
    entries = [e for e in catalog.entries if only is None or e.model_type == only]
    rows = [_entry_row(catalog, entry) for entry in entries]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"No models in {models_dir()}. Get one with: lmserve get <publisher/repo>")
        return
    total = sum(row["size_bytes"] for row in rows)
    click.echo(f"You have {len(rows)} models, taking up {human_size(total)} of disk space.\n")
    click.echo(
        table(
            [
                [
                    row["key"],
                    str(row["params"]),
                    row["architecture"],
                    row["quantization"] or "-",
                    human_size(row["size_bytes"]),
                    str(row["max_context_length"] or "-"),
                    row["type"],
                    "vision" if row["vision"] else "",
                ]
                for row in rows
            ],
            ["MODEL", "PARAMS", "ARCH", "QUANT", "SIZE", "CONTEXT", "TYPE", ""],
        )
    )


@click.command("ps")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_loaded(host: str | None, port: int | None, api_key: str | None, as_json: bool) -> None:
    """List the models loaded in the running server, with their slots and TTL."""
    with ServerClient(host, port, api_key=api_key) as client:
        listing = client.get("/api/v1/models")
        caches = {
            item["identifier"]: item["prompt_cache"]
            for item in client.get("/lmserve/cache").get("models", [])
        }
    instances = [
        {
            "identifier": instance["id"],
            "model": model["key"],
            **instance["config"],
            "prompt_cache": caches.get(instance["id"]),
            # A model served by Ray Serve replicas: each one's node and load.
            **({"replicas": instance["replicas"]} if "replicas" in instance else {}),
        }
        for model in listing["models"]
        for instance in model["loaded_instances"]
    ]
    crashed = listing.get("crashed") or []
    if as_json:
        echo_json(instances)
        return
    if not instances:
        click.echo("No models are loaded.")
        _echo_crashes(crashed, set())
        return
    rows = []
    for item in instances:
        if replicas := item.get("replicas"):  # every replica's slots
            item["slots"] = sum(replica["slots"] for replica in replicas)
            item["slots_busy"] = sum(replica["slots_busy"] for replica in replicas)
        ttl = item.get("ttl")
        left = item.get("ttl_remaining")
        rows.append(
            [
                item["identifier"],
                item["model"],
                str(item.get("context_length")),
                f"{item.get('slots_busy', 0)}/{item.get('slots', '?')}",
                str(item.get("queue_depth", 0)),
                f"{left:.0f}s of {ttl:.0f}s" if ttl is not None and left is not None else "-",
                "jit" if item.get("jit") else "loaded",
                {True: "on", False: "off"}.get(item.get("repack"), "-"),  # type: ignore[arg-type]
                "vision" if item.get("vision") else "",
            ]
        )
    header = [
        "IDENTIFIER",
        "MODEL",
        "CONTEXT",
        "SLOTS BUSY",
        "QUEUE",
        "TTL LEFT",
        "HOW",
        "REPACK",
        "",
    ]
    click.echo(table(rows, header))
    for item in instances:
        if item.get("repack_reason"):
            state = "on" if item.get("repack") else "off"
            click.echo(f"{item['identifier']}: weight repacking {state}: {item['repack_reason']}.")
        click.echo(
            f"{item['identifier']}: prompt cache {_prompt_cache_line(item['prompt_cache'])}."
        )
        for line in placement_lines(item.get("placement")):
            click.echo(f"{item['identifier']}: {line.strip()}")
        for replica in item.get("replicas") or ():
            click.echo(
                f"{item['identifier']}: replica {replica['replica']}: "
                f"{replica['slots_busy']}/{replica['slots']} slots busy, "
                f"{replica['cached_tokens']} tokens cached."
            )
    _echo_crashes(crashed, {item["identifier"] for item in instances})


def _prompt_cache_line(stats: dict[str, Any] | None) -> str:
    """Each tier's size of its budget, blocks and hits, in a few words."""
    if not stats:
        return "off"
    tiers = []
    for tier in ("memory", "disk"):
        figures = stats.get(tier)
        if figures:
            tiers.append(
                f"{tier} {human_size(figures['bytes'])} of {human_size(figures['budget_bytes'])} "
                f"({figures['blocks']} blocks, {figures['hits']} hits, "
                f"{figures['hit_tokens']} tokens restored)"
            )
    return ", ".join(tiers) if stats.get("enabled") else "off (" + ", ".join(tiers) + ")"


def _echo_crashes(crashed: list[dict[str, Any]], loaded: set[str]) -> None:
    for record in crashed:
        if record.get("crashes_in_a_row"):
            click.echo(crash_line(record, loaded))


def pick_model(name: str, yes: bool) -> str:
    """The downloaded model ``name`` means: exact, or a close match chosen by the user."""
    catalog = Catalog.scan(models_dir())
    if catalog.resolve(name) is not None:
        return name
    why = catalog.not_a_model(name)
    if why is not None:
        raise click.ClickException(why)
    keys = [catalog.public_id(entry) for entry in catalog.entries]
    matches = [key for key in keys if name.lower() in key.lower()]
    if not matches:
        similar = difflib.get_close_matches(name.lower(), keys, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(similar)}?" if similar else ""
        have = ", ".join(keys) or "none (get one with: lmserve get <publisher/repo>)"
        raise click.ClickException(
            f"no downloaded model matches '{name}'.{hint} Downloaded: {have}"
        )
    if yes or (len(matches) == 1 and not interactive()):
        return matches[0]
    if not interactive():
        raise click.ClickException(
            f"'{name}' matches several models: {', '.join(matches)}. Name one, or pass -y to "
            "take the first."
        )
    for index, match in enumerate(matches, start=1):
        click.echo(f"  {index}. {match}")
    choice = click.prompt("Load which model", type=click.IntRange(1, len(matches)), default=1)
    return matches[choice - 1]


@click.command("load")
@click.argument("model")
@click.option(
    "--context-length",
    type=click.IntRange(64, 1 << 20),
    default=None,
    help="Context length per slot, in tokens.",
)
@click.option("--identifier", default=None, help="The name requests use for this instance.")
@click.option(
    "--ttl", type=click.FloatRange(min=1), default=None, help="Unload after this many idle seconds."
)
@click.option(
    "--gpu",
    default=None,
    callback=lambda _ctx, _param, v: gpu_option(v),
    help=f"Layers to offload to a GPU: {GPU_SETTINGS_HELP} (default: the server's).",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    default=None,
    help="Requests generated at once (slots).",
)
@click.option(
    "--repack",
    type=click.Choice(REPACK_SETTINGS),
    default=None,
    help=REPACK_HELP + " Default: the server's.",
)
@click.option(
    "--flash-attention",
    type=click.Choice(FLASH_ATTENTION_SETTINGS),
    default=None,
    help=FLASH_ATTENTION_HELP + " Default: the server's.",
)
@click.option(
    "--kv-cache-type",
    type=click.Choice(KV_CACHE_TYPES),
    default=None,
    help=KV_CACHE_TYPE_HELP + " Default: the server's.",
)
@click.option(
    "--draft-model",
    default=None,
    help="A downloaded model of the same vocabulary to draft tokens for this one "
    "(speculative decoding); requests may name another with 'draft_model'.",
)
@click.option(
    "--mmproj",
    default=None,
    metavar="PATH",
    callback=lambda _ctx, _param, v: mmproj_option(v),
    help="A vision projector (mmproj GGUF) to load with the model, in place of the one in "
    "its folder (a path on the server's machine).",
)
@with_options(rpc_options("Only this model uses them."))
@click.option("-y", "--yes", is_flag=True, help="Take the best match without asking.")
@connection_options
def load_model(
    model: str,
    context_length: int | None,
    identifier: str | None,
    ttl: float | None,
    gpu: str | None,
    parallel: int | None,
    repack: str | None,
    flash_attention: str | None,
    kv_cache_type: str | None,
    draft_model: str | None,
    mmproj: str | None,
    rpc: tuple[str, ...] | None,
    tensor_split: tuple[float, ...] | None,
    yes: bool,
    host: str | None,
    port: int | None,
    api_key: str | None,
) -> None:
    """Load a downloaded model into the running server."""
    name = pick_model(model, yes)
    body: dict[str, Any] = {"model": name, "config": {}}
    for key, value in (
        ("context_length", context_length),
        ("identifier", identifier),
        ("ttl", ttl),
        ("gpu", gpu),
        ("parallel", parallel),
        ("repack", repack),
        ("flash_attention", {"on": True, "off": False}.get(flash_attention or "auto")),
        ("draft_model", draft_model),
        ("kv_cache_type", kv_cache_type),
        ("mmproj", mmproj),
        ("rpc", list(rpc) if rpc else None),
        ("tensor_split", list(tensor_split) if tensor_split else None),
    ):
        if value is not None:
            body["config"][key] = value
    with ServerClient(host, port, api_key=api_key) as client:
        loaded = client.post("/api/v1/models/load", body)
    config = loaded["config"]
    click.echo(
        f"Model loaded: {loaded['model_instance_id']} (context {config['context_length']}, "
        f"{config['slots']} slots) in {loaded['load_time_seconds']:.2f} s."
    )
    if "repack" in config:
        state = "on" if config["repack"] else "off"
        click.echo(f"Weight repacking {state}: {config.get('repack_reason')}.")
    if config.get("flash_attention_reason"):
        state = {True: "on", False: "off"}.get(config.get("flash_attention"), "auto")
        click.echo(f"Flash attention {state}: {config['flash_attention_reason']}.")
    if config.get("draft_model"):
        click.echo(f"Draft model: {config['draft_model']}.")
    if config.get("mmproj"):
        click.echo(f"Vision projector: {config['mmproj']}.")
    for line in placement_lines(config.get("placement")):
        click.echo(line)


@click.command("unload")
@click.argument("identifier", required=False)
@click.option("--all", "unload_all", is_flag=True, help="Unload every loaded model.")
@connection_options
def unload_model(
    identifier: str | None,
    unload_all: bool,
    host: str | None,
    port: int | None,
    api_key: str | None,
) -> None:
    """Unload a model from the running server (by identifier), or all of them."""
    if not identifier and not unload_all:
        raise click.UsageError("name the model to unload, or pass --all")
    with ServerClient(host, port, api_key=api_key) as client:
        loaded = [
            instance["id"]
            for model in client.get("/api/v1/models")["models"]
            for instance in model["loaded_instances"]
        ]
        targets = loaded if unload_all else [identifier]
        if identifier and identifier not in loaded:
            have = ", ".join(loaded) or "none"
            raise click.ClickException(f"no loaded model is called '{identifier}'. Loaded: {have}")
        for target in targets:
            client.post("/api/v1/models/unload", {"instance_id": target})
            click.echo(f"Unloaded {target}.")
    if unload_all and not targets:
        click.echo("No models were loaded.")
