"""What the client commands share: finding the server, calling its API, clean errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import httpx

from lmserve.apikeys import ENV_VAR
from lmserve.config import DEFAULT_HOST, DEFAULT_PORT, check_gpu_setting, parse_tensor_split
from lmserve.models.projectors import ProjectorError, check_projector
from lmserve.paths import server_state_file


@dataclass(frozen=True)
class ServerState:
    """What ``lmserve server start`` leaves in ``$LMSERVE_HOME/server.json``."""

    pid: int
    host: str
    port: int
    log: str = ""

    @classmethod
    def read(cls) -> ServerState | None:
        try:
            data = json.loads(server_state_file().read_text())
            return cls(int(data["pid"]), str(data["host"]), int(data["port"]), str(data["log"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self) -> None:
        path = server_state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__))

    @staticmethod
    def clear() -> None:
        server_state_file().unlink(missing_ok=True)

    @property
    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def server_address(host: str | None, port: int | None) -> tuple[str, int]:
    """Explicit options win, then the background server's state file, then the defaults."""
    state = ServerState.read()
    if state is not None and state.alive:
        return host or client_host(state.host), port or state.port
    return host or DEFAULT_HOST, port or DEFAULT_PORT


def client_host(bound: str) -> str:
    # A server bound to every interface is still reached on loopback.
    return "127.0.0.1" if bound in {"0.0.0.0", "::", ""} else bound


def connection_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--host``, ``--port`` and ``--api-key`` (parameters ``host``, ``port``, ``api_key``)."""
    function = click.option(
        "--api-key",
        default=None,
        envvar=ENV_VAR,
        show_envvar=True,
        help="The key to send, if the server requires one.",
    )(function)
    function = click.option(
        "--port", type=int, default=None, help="The server's port (default: the running one)."
    )(function)
    return click.option(
        "--host", default=None, help="The server's address (default: the running one)."
    )(function)


class ServerClient:
    """Calls the running server's API; connection and API errors become clean messages."""

    def __init__(
        self,
        host: str | None,
        port: int | None,
        timeout: float = 600.0,
        api_key: str | None = None,
    ) -> None:
        self.host, self.port = server_address(host, port)
        self.base_url = f"http://{self.host}:{self.port}"
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=auth_headers(api_key)
        )

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise not_running(self.base_url) from exc
        except httpx.HTTPError as exc:
            raise click.ClickException(f"the server did not answer: {exc}") from exc
        if response.status_code >= 400:
            raise click.ClickException(api_error_message(response))
        return response.json()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def stream_lines(self, path: str, body: dict[str, Any]) -> Any:
        """Server-sent event payloads (parsed JSON) of a streaming POST."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise click.ClickException(api_error_message(response))
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[6:])
        except httpx.ConnectError as exc:
            raise not_running(self.base_url) from exc


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``api_key`` (``--api-key``, else the variable)."""
    key = api_key or os.environ.get(ENV_VAR)
    return {"Authorization": f"Bearer {key.split()[0]}"} if key and key.strip() else {}


class ServerNotRunning(click.ClickException):
    """Nothing answers at the server's address (a command may then work on the files)."""


def not_running(base_url: str) -> ServerNotRunning:
    return ServerNotRunning(
        f"lmserve is not running at {base_url}. Start it with: lmserve server start"
    )


def api_error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = None
    message = message or f"the server answered {response.status_code}"
    if response.status_code == 401:
        message += f" Pass --api-key or set {ENV_VAR}."
    return message


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} TB"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def gpu_option(value: str | None) -> str | None:
    """Click's check of a ``--gpu`` value (``serve``, ``server start`` and ``load``)."""
    try:
        return None if value is None else check_gpu_setting(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def rpc_option(value: str | None) -> tuple[str, ...] | None:
    """Click's check of ``--rpc HOST:PORT[,HOST:PORT...]`` (``serve`` and ``load``)."""
    from lmserve.rpc.probe import parse_endpoints

    try:
        return None if value is None else parse_endpoints(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def tensor_split_option(value: str | None) -> tuple[float, ...] | None:
    """Click's check of ``--tensor-split 1,1`` (``serve`` and ``load``)."""
    try:
        return None if value is None else parse_tensor_split(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def placement_lines(placement: list[dict[str, Any]] | None) -> list[str]:
    """Where a model's layers went, a line per device (none for a model on this CPU only)."""
    lines = []
    for device in placement or ():
        where = f"RPC worker {device['rpc']}" if device.get("rpc") else "this machine"
        lines.append(
            f"  {device['device']} ({where}): {device['layers']} layers, "
            f"{device['memory_mib']:.1f} MiB of weights"
        )
    return (["Layers:", *lines]) if lines else []


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Click options as one decorator, in the order given."""

    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def rpc_options(applies_to: str) -> list[Callable[[Any], Any]]:
    """``--rpc`` and ``--tensor-split``, for ``serve`` and ``server start`` (every model the
    server loads) and ``load`` (that model); ``applies_to`` ends their help."""
    return [
        click.option(
            "--rpc",
            default=None,
            metavar="HOST:PORT,...",
            callback=lambda _ctx, _param, v: rpc_option(v),
            help="llama.cpp RPC workers (lmserve rpc-worker) whose CPUs or GPUs hold the "
            "layers, as HOST:PORT[,HOST:PORT...]; split by their free memory unless "
            f"--tensor-split says. {applies_to}",
        ),
        click.option(
            "--tensor-split",
            default=None,
            metavar="SHARES",
            callback=lambda _ctx, _param, v: tensor_split_option(v),
            help="Each device's share of the layers, as 3,1: the RPC workers in --rpc order, "
            "then local GPUs.",
        ),
    ]


def mmproj_option(value: str | None) -> str | None:
    """Click's check of a ``--mmproj`` value (``serve``, ``server start`` and ``load``): an
    existing vision projector, as an absolute path (the server may run elsewhere than here)."""
    try:
        return None if value is None else str(check_projector(value))
    except ProjectorError as exc:
        raise click.BadParameter(str(exc)) from None


def crash_line(record: dict[str, Any], loaded: set[str]) -> str:
    """One sentence on a model whose engine crashed (``ps`` and ``status``)."""
    identifier = record["identifier"]
    count = record["crashes_in_a_row"]
    times = "once" if count == 1 else f"{count} times in a row"
    if identifier in loaded:
        state = "it is loaded again"
    elif record.get("gave_up"):
        state = "it is not loaded again by itself (lmserve load retries)"
    elif record.get("retry_in"):
        state = f"it can be loaded again in {record['retry_in']:.0f} s"
    else:
        state = "it is loaded again on demand"
    return f"{identifier}: the engine crashed {times} ({record['last_crash']}); {state}."
