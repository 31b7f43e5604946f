"""``lmserve rpc-worker``: lend this machine's CPU (or GPU) to a model split over machines."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from types import FrameType

import click

from lmserve.rpc.probe import PROTOCOL

DEFAULT_PORT = 50052  # llama.cpp's rpc-server's


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command("rpc-worker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for the CPU device (default: all cores).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep large tensors here by hash, so a model loads again without sending them.",
)
def rpc_worker(host: str, port: int, threads: int | None, cache_dir: str | None) -> None:
    """Serve this machine's CPU (or GPU) to lmserve servers as a llama.cpp RPC worker.

    A server loads a model over workers with `lmserve load KEY --rpc HOST:PORT,...` (or
    `serve --rpc`): their devices hold the layers, the server's machine the rest.  A worker
    serves one server at a time.  llama.cpp's RPC protocol has no authentication: anyone who
    reaches the port can use the machine, so keep it on loopback or a private network.
    Ctrl-C or SIGTERM stops it.
    """
    from lmserve.engine.llama import default_threads
    from lmserve.rpc.ggml import RpcUnavailable, require_rpc, start_server

    try:
        require_rpc()
    except RpcUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if not _is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: llama.cpp's RPC protocol has no authentication; "
            "anyone who reaches this port can run computations on this machine.",
            err=True,
        )
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    n_threads = threads or default_threads()
    # llama.cpp's server never returns: it runs in a thread, and a signal ends the process.
    served = threading.Thread(
        target=start_server, args=(endpoint, cache_dir, n_threads), daemon=True
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        click.echo(f"rpc-worker {endpoint}: stopped ({signal.Signals(signum).name})", err=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)  # llama.cpp's thread sits in accept() or a computation: nothing to save

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    version = ".".join(map(str, PROTOCOL))
    click.echo(
        f"rpc-worker: serving on {endpoint} (llama.cpp RPC protocol {version}, "
        f"{n_threads} threads)",
        err=True,
    )
    served.start()
    while served.is_alive():
        served.join(0.5)
    # It returned: llama.cpp could not listen there (its own message is on stderr).
    raise click.ClickException(f"could not serve on {endpoint} (is the port taken?)")
