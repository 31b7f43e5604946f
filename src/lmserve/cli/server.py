"""``lmserve server start|stop|status``: the server as a background process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import click
import httpx

from lmserve.apikeys import ENV_VAR
from lmserve.cli.common import (
    ServerState,
    client_host,
    crash_line,
    echo_json,
    server_address,
)
from lmserve.cli.serve import check_start_model, server_options
from lmserve.paths import home_dir, logs_dir

_STOP_TIMEOUT = 30.0


@click.group()
def server() -> None:
    """Start, stop and check the background server."""


# Option names whose flag is not the name with dashes (multiple options take singular flags).
_FLAGS = {"model_name": "--model", "allowed_hosts": "--allow-host", "api_keys": "--api-key"}
# Options whose one flag takes a comma-separated list (their callbacks split it).
_COMMA_LISTS = {"rpc", "tensor_split"}


def _serve_arguments(options: dict[str, Any]) -> list[str]:
    """``lmserve serve`` arguments for the options given to ``server start``.

    API keys are not among them: a command line is visible to every local user (``ps``), so
    they travel in the child's environment (:func:`_serve_environment`).
    """
    arguments = []
    for name, value in options.items():
        if value is None or value is False or name in {"timeout", "api_keys"}:
            continue
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        if name in _COMMA_LISTS:
            arguments += [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, tuple | list):
            for item in value:
                arguments += [flag, str(item)]
        else:
            arguments += [flag] if value is True else [flag, str(value)]
    return arguments


def _serve_environment(options: dict[str, Any]) -> dict[str, str]:
    environment = dict(os.environ)
    keys = options.get("api_keys") or ()
    if keys:
        environment[ENV_VAR] = " ".join(keys)
    return environment


def _healthy(host: str, port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://{client_host(host)}:{port}/health", timeout=2.0)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _log_tail(path: str, lines: int = 15) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        return "".join(log.readlines()[-lines:])
    return ""


@server.command()
@server_options
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=float,
    help="Seconds to wait for the server to answer (the first run fetches a model).",
)
def start(**options: Any) -> None:
    """Start the server in the background; its log goes to $LMSERVE_HOME/logs/server.log."""
    check_start_model(options)
    state = ServerState.read()
    if state is not None and state.alive:
        click.echo(f"The server is already running on port {state.port} (pid {state.pid}).")
        return
    logs_dir().mkdir(parents=True, exist_ok=True)
    log_path = logs_dir() / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lmserve", "serve", *_serve_arguments(options)],
            env=_serve_environment(options),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal; Ctrl-C here does not stop it
        )
    host, port = str(options["host"]), int(options["port"])
    state = ServerState(process.pid, host, port, str(log_path))
    state.write()
    deadline = time.monotonic() + float(options["timeout"])
    while time.monotonic() < deadline:
        if process.poll() is not None:
            ServerState.clear()
            raise click.ClickException(
                f"the server exited with code {process.returncode}. Last lines of "
                f"{log_path}:\n{_log_tail(str(log_path))}"
            )
        if _healthy(host, port) is not None:
            click.echo(f"Server started on http://{host}:{port} (pid {process.pid}).")
            click.echo(f"Log: {log_path}")
            return
        time.sleep(0.2)
    raise click.ClickException(
        f"the server (pid {process.pid}) did not answer within {options['timeout']:.0f} s; "
        f"see {log_path}"
    )


@server.command()
@click.option(
    "--timeout",
    default=_STOP_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for the server to finish its requests before killing it.",
)
def stop(timeout: float) -> None:
    """Stop the background server (it finishes the requests it is serving first)."""
    state = ServerState.read()
    if state is None or not state.alive:
        ServerState.clear()
        click.echo("The server is not running.")
        return
    state.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while state.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    if state.alive:
        state.signal(signal.SIGKILL)
    ServerState.clear()
    click.echo(f"Stopped the server (pid {state.pid}).")


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--host", default=None, help="The server's address (default: the running one).")
@click.option(
    "--port", type=int, default=None, help="The server's port (default: the running one)."
)
def status(as_json: bool, host: str | None, port: int | None) -> None:
    """Say whether the server is running, where, which models it has loaded, how each
    model's engine runs (weight repacking on or off, and why) and which crashed lately."""
    state = ServerState.read()
    host, port = server_address(host, port)
    health = _healthy(host, port)
    running = health is not None
    report = {
        "running": running,
        "host": host,
        "port": port,
        "pid": state.pid if state is not None and state.alive else None,
        "models": health.get("models", []) if health else [],
        "engines": health.get("engines", {}) if health else {},
        "restarting": health.get("restarting", []) if health else [],
        "crashed": health.get("crashed", []) if health else [],
        "home": str(home_dir()),
    }
    if as_json:
        echo_json(report)
    elif running:
        loaded = ", ".join(report["models"]) or "none"
        click.echo(f"The server is running on port {port}. Loaded models: {loaded}.")
        for identifier, engine in report["engines"].items():
            if "repack" in engine:
                state = "on" if engine["repack"] else "off"
                click.echo(
                    f"{identifier}: engine process {engine['pid']}, weight repacking {state}: "
                    f"{engine['repack_reason']}."
                )
        for record in report["crashed"]:
            if record.get("crashes_in_a_row"):
                click.echo(crash_line(record, set(report["models"])))
    else:
        click.echo("The server is not running. Start it with: lmserve server start")
