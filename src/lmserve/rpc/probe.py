"""Checking an RPC worker before llama.cpp sees it.

llama.cpp aborts the whole process when an RPC endpoint answers its handshake wrongly (a web
server on that port, an incompatible build) or drops mid-handshake.  So the server speaks the
handshake itself first, with plain sockets and time limits: a TCP connect, then llama.cpp's
``HELLO`` (command 14: a 24-byte capabilities block; the answer is the protocol's major, minor
and patch versions, a pad byte and the worker's capabilities), and says what is wrong in a
user's words.  A worker serves one client at a time: one busy with another client accepts the
connection but does not answer until that client goes.
"""

from __future__ import annotations

import socket
import struct

# ggml-rpc.h of the llama.cpp that llama-cpp-python 0.3.36 vendors (the pinned version).
PROTOCOL = (7, 0, 0)
_HELLO = 14
_CAPS_BYTES = 24  # RPC_CONN_CAPS_SIZE
_ANSWER_BYTES = 4 + _CAPS_BYTES

CONNECT_TIMEOUT = 3.0
ANSWER_TIMEOUT = 5.0


class RpcEndpointError(ConnectionError):
    """An RPC endpoint that cannot be used; the message names it and says why."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:50052``); raises ``ValueError``."""
    host, colon, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' is not an RPC endpoint (host:port)")
    return host, int(port)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """A comma-separated list of ``host:port``; raises ``ValueError``."""
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise ValueError("no RPC endpoint given (host:port[,host:port...])")
    for endpoint in endpoints:
        parse_endpoint(endpoint)
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"an RPC endpoint is named twice in '{text}'")
    return endpoints


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            break
        data += part
    return data


def check_endpoint(endpoint: str) -> tuple[int, int, int]:
    """The protocol version of the llama.cpp RPC worker at ``endpoint``; raises
    :class:`RpcEndpointError` saying why it cannot be used."""
    host, port = parse_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        raise RpcEndpointError(
            f"RPC worker {endpoint}: no answer to connect (unreachable)"
        ) from None
    except ConnectionRefusedError:
        raise RpcEndpointError(
            f"RPC worker {endpoint}: connection refused (nothing listens)"
        ) from None
    except OSError as exc:
        raise RpcEndpointError(f"RPC worker {endpoint}: {exc.strerror or exc}") from None
    with sock:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.sendall(struct.pack("<BQ", _HELLO, _CAPS_BYTES) + bytes(_CAPS_BYTES))
            header = _receive(sock, 8)
            size = struct.unpack("<Q", header)[0] if len(header) == 8 else None
            answer = _receive(sock, _ANSWER_BYTES) if size == _ANSWER_BYTES else b""
        except TimeoutError:
            raise RpcEndpointError(
                f"RPC worker {endpoint}: no handshake within {ANSWER_TIMEOUT:g} s (busy with "
                "another client: a worker serves one at a time)"
            ) from None
        except OSError as exc:
            raise RpcEndpointError(f"RPC worker {endpoint}: {exc.strerror or exc}") from None
    if len(answer) != _ANSWER_BYTES:
        raise RpcEndpointError(
            f"RPC worker {endpoint}: not a llama.cpp RPC worker (it did not answer the handshake)"
        )
    major, minor, patch = answer[0], answer[1], answer[2]
    if major != PROTOCOL[0] or minor > PROTOCOL[1]:
        raise RpcEndpointError(
            f"RPC worker {endpoint}: protocol {major}.{minor}.{patch}, this lmserve speaks "
            f"{'.'.join(map(str, PROTOCOL))} (run the same lmserve and llama.cpp on both ends)"
        )
    return major, minor, patch


def reachable(endpoint: str, timeout: float = 1.0) -> bool:
    """Whether anything accepts a connection at ``endpoint`` (no handshake: it would take
    the worker from a client it serves)."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
