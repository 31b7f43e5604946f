"""How a worker process ended, in a user's words: the signal, an assertion, a clean failure.

The messages name no server paths: they reach API clients.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

# A bug in the engine loop (a Python exception, logged with its traceback): the worker exits
# with this status (sysexits' EX_SOFTWARE) so that the server loads the model again.
ENGINE_BUG_STATUS = 70

_ASSERTION = re.compile(r"GGML_ASSERT\((.{1,300}?)\) failed")
# ggml-rpc's RPC_STATUS_ASSERT: a worker went away or answered wrongly mid-run.
_RPC_LOST = "Remote RPC server crashed or returned malformed response"


@dataclass(frozen=True)
class WorkerExit:
    """How a worker ended that the server did not close."""

    name: str
    pid: int
    returncode: int
    reason: str  # e.g. "killed by signal SIGSEGV"
    requests: tuple[str, ...]  # the requests in flight, by their API ids


def exit_description(returncode: int) -> str:
    """``was killed by signal SIGSEGV`` or ``exited with status 1``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with status {returncode}"


def crash_reason(returncode: int, stderr: str, rpc_servers: tuple[str, ...] = ()) -> str:
    """Why a worker died, in a user's words, without server paths; ``rpc_servers``: the RPC
    workers holding its layers, the likely cause when llama.cpp says one went away."""
    if _RPC_LOST in stderr:
        return _rpc_worker_lost(rpc_servers)
    assertion = _ASSERTION.search(stderr)
    if assertion:
        return f"llama.cpp aborted on a malformed file ({assertion.group(1)})"
    if rpc_servers and returncode == -signal.SIGABRT:  # its message may not have reached us
        return _rpc_worker_lost(rpc_servers)
    if returncode == ENGINE_BUG_STATUS:
        return "an internal error stopped the engine (the server's log has the details)"
    # The kernel's out-of-memory killer sends SIGKILL, as does kill -9.
    hint = " (out of memory, or killed by hand)" if returncode == -signal.SIGKILL else ""
    return f"the engine process {exit_description(returncode)}{hint}"


def _rpc_worker_lost(rpc_servers: tuple[str, ...]) -> str:
    """The workers that no longer accept connections (all of them, if none is down now)."""
    from lmserve.rpc.probe import reachable

    down = [endpoint for endpoint in rpc_servers if not reachable(endpoint)]
    which = ", ".join(down or rpc_servers)
    return (
        f"its RPC worker {which} was lost (llama.cpp ends the engine when a worker stops "
        "answering mid-run)"
    )


def load_failure(message: str) -> str:
    """A clean load failure (llama.cpp returned no model) as the user reads it."""
    if "could not load" in message:
        return "llama.cpp cannot read it (corrupt, truncated or unsupported)"
    return message
