"""``lmserve log stream``: the live prediction log of a running server."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
import httpx

from lmserve.cli.common import (
    api_error_message,
    auth_headers,
    connection_options,
    not_running,
    server_address,
)


@click.group()
def log() -> None:
    """See what the models receive and produce."""


def _base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


@log.command("stream")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option("--stats", is_flag=True, help="Also print each prediction's statistics.")
def log_stream(
    host: str | None, port: int | None, api_key: str | None, as_json: bool, stats: bool
) -> None:
    """Print, live, the exact prompt each request sends the model, and its output.

    Connects to the running server and prints a record as each prediction starts (the
    rendered prompt, after the chat template) and ends (the generated text).  Ctrl-C stops.
    """
    host, port = server_address(host, port)
    url = f"{_base_url(host, port)}/lmserve/log/stream"
    try:
        with (
            httpx.Client(
                timeout=httpx.Timeout(5.0, read=None), headers=auth_headers(api_key)
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise click.ClickException(api_error_message(response))
            for line in response.iter_lines():
                if line == ": subscribed":  # from here on, no record is missed
                    click.echo(
                        f"Streaming logs from {_base_url(host, port)} (Ctrl-C to stop)", err=True
                    )
                if not line.startswith("data: "):
                    continue
                record = json.loads(line[6:])
                if as_json:
                    click.echo(json.dumps(record, ensure_ascii=False))
                else:
                    click.echo(_format_record(record, stats))
                sys.stdout.flush()
    except httpx.ConnectError as exc:
        raise not_running(_base_url(host, port)) from exc
    except KeyboardInterrupt:
        pass


def _stat(name: str, value: Any) -> str:
    if isinstance(value, dict):  # cached_tokens_from: slot, memory, disk
        return f"{name}=(" + ", ".join(f"{k} {v}" for k, v in value.items()) + ")"
    return f"{name}={value}"


def _format_record(record: dict[str, Any], stats: bool) -> str:
    stamp = datetime.fromtimestamp(record.get("timestamp", 0)).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"timestamp: {stamp}",
        f"type: {record.get('type')}",
        f"modelIdentifier: {record.get('model')}",
        f"requestId: {record.get('request_id')}",
    ]
    if record.get("replica"):  # a model served by Ray Serve replicas
        lines.append(f"replica: {record['replica']}")
    if record.get("type") == "llm.prediction.progress":
        lines.append(
            f"promptProcessing: {record.get('progress', 0):.0%} "
            f"({record.get('processed_tokens')} of {record.get('prompt_tokens')} tokens)"
        )
    elif record.get("type") == "llm.prediction.input":
        lines.append(f"promptTokens: {record.get('prompt_tokens')}")
        lines.append("input:")
        lines.append(record.get("prompt", ""))
    elif record.get("type") == "mcp.call":
        lines.append(f"mcpServer: {record.get('server_label')}, tool: {record.get('tool')}")
        lines.append("arguments:")
        lines.append(record.get("arguments") or "")
    elif record.get("type") == "mcp.result":
        lines.append(
            f"mcpServer: {record.get('server_label')}, tool: {record.get('tool')}, "
            f"seconds: {record.get('seconds')}"
        )
        failed = record.get("error") is not None
        lines.append("error:" if failed else "output:")
        lines.append(record.get("error") if failed else record.get("output") or "")
    elif record.get("type") == "rerank.output":
        lines.append(f"query: {record.get('query')}")
        lines.append(
            f"documents: {record.get('documents')}, promptTokens: {record.get('prompt_tokens')}"
        )
        lines.append("scores (best first):")
        lines += [
            f"  #{r['index']}: {r['relevance_score']:.4f}" for r in record.get("results") or []
        ]
    else:
        lines.append("output:")
        lines.append(record.get("output", ""))
        record_stats = record.get("stats") or {}
        if stats and record_stats:
            lines.append("stats: " + ", ".join(_stat(k, v) for k, v in record_stats.items()))
    return "\n".join(lines) + "\n"
