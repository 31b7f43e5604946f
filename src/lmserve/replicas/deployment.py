"""One replica of a model, as a Ray Serve deployment: today's engine on a node of the cluster.

A replica starts the model's worker process on its node (its files there first:
:mod:`lmserve.replicas.files`) (:class:`lmserve.engine.client.
EngineWorker`, with the load's :class:`WorkerSpec`: slots, context, batching, prompt cache,
speculative decoding as on one machine) and serves it to lmserve's server over Ray:
``generate`` streams a request's events, the first item naming the replica; ``cancel`` stops a
request this replica runs (the router sends it here by the replica's id); ``call`` runs any of
the engine's other calls (tokenizing, embedding, a snapshot of its slots).  A worker that
dies fails its requests as on one machine, and the replica's health check then fails, so
Serve replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from lmserve.engine.client import EngineWorker
from lmserve.engine.exits import WorkerExit
from lmserve.engine.types import GenerationRequest, GenerationStream
from lmserve.engine.wire import WorkerSpec
from lmserve.replicas.files import FileSource, on_this_node

REPLICA = "replica"  # the first item of a stream: ("replica", its name, its Serve id)


def _listen_on_the_node_only() -> None:
    """Serve (2.60) opens an inter-deployment gRPC server in every replica on all interfaces
    (``[::]:0``).  lmserve's calls never use it (a handle's calls go by Ray's actor calls
    unless ``RAY_SERVE_USE_GRPC_BY_DEFAULT``), so it is bound to the node's own address
    instead: a replica listens where its node does (loopback, in the tests) and nowhere
    else.  It runs in the replica's process, before Serve starts that server."""
    from ray.serve._private import replica as serve_replica

    add_port = getattr(serve_replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "lmserve", False):
        return  # another Serve than 2.60's, or done already
    host = ray.util.get_node_ip_address()

    def add_port_on_node(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{host}:{address.removeprefix('[::]:')}"
        return add_port(server, address)

    add_port_on_node.lmserve = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = add_port_on_node


class ModelReplica:
    """See the module's docstring."""

    async def __init__(self, spec: WorkerSpec, source: FileSource) -> None:
        _listen_on_the_node_only()
        loop = asyncio.get_running_loop()
        # The model's files on this node: the server's, or this node's copy of them.
        spec = await asyncio.to_thread(on_this_node, spec, source)
        self.crash: str | None = None
        self.worker = await asyncio.to_thread(EngineWorker, spec, loop, self._died)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id
        self.node_id = ray.get_runtime_context().get_node_id()
        node = next((n for n in ray.nodes() if n["NodeID"] == self.node_id), {})
        self.node_address = str(node.get("NodeManagerAddress", "?"))
        self._streams: dict[str, GenerationStream] = {}

    def _died(self, exit: WorkerExit) -> None:  # on the worker's pipe thread
        self.crash = exit.reason

    def check_health(self) -> None:
        """Serve's health check: a replica whose worker died is replaced."""
        if self.crash is not None:
            raise RuntimeError(self.crash)

    def name(self) -> str:
        """How answers name this replica (``x-lmserve-replica``)."""
        return f"{self.replica_id.unique_id}@{self.node_address}"

    async def describe(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "info": worker.info,
            "n_slots": worker.n_slots,
            "max_queue": worker.max_queue,
            "n_ctx_per_slot": worker.n_ctx_per_slot,
            "pid": worker.pid,
            "replica": self.name(),
            "replica_id": self.replica_id,
            "node_id": self.node_id,
        }

    async def generate(
        self, request: GenerationRequest, *, token: str, prefix: list[str]
    ) -> AsyncIterator[Any]:
        """The request's events, after one item naming this replica.  Closing the stream
        (the client went) cancels the request on the worker."""
        stream = self.worker.submit(request)
        self._streams[token] = stream
        try:
            yield (REPLICA, self.name(), self.replica_id)
            async for event in stream:
                yield event
        finally:
            self._streams.pop(token, None)
            if stream.finished is None:
                stream.cancel()

    async def cancel(self, token: str, *, replica: Any) -> bool:
        """Stop a request this replica runs; it still ends with its own last event."""
        stream = self._streams.get(token)
        if stream is None:
            return False
        stream.cancel()
        return True

    async def report(self, *, replica: Any) -> dict[str, Any]:
        """This replica's snapshot (its slots, engine counters, prompt cache) and where it
        runs."""
        snapshot = await self.worker.snapshot()
        where = {"node_id": self.node_id, "node_address": self.node_address}
        return {"replica": self.name(), **where, **snapshot}

    async def call(self, method: str, *args: Any, replica: Any = None) -> Any:
        """One of the engine's calls (``tokenize``, ``embed``, ``snapshot``, ...)."""
        return await getattr(self.worker, method)(*args)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.worker.close("the replica is stopping")
