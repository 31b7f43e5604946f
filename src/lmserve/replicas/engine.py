"""A model served by Ray Serve replicas, as lmserve's server sees it: one engine.

:class:`ReplicatedEngine` has the calls of :class:`lmserve.engine.client.EngineWorker`, so the
models and API layers serve a replicated model as they serve a local one.  ``submit`` sends
the request through the deployment's handle, which routes it by its prompt's prefix
(:mod:`lmserve.replicas.routing`), and relays the replica's events to the request's stream as
they come (one Ray stream item per engine event: nothing is buffered per response).  A cancel
goes to the replica running the request, which ends it with its own last event; a replica
that is lost mid-request (its node gone, its actor killed) ends the request as a crash does
on one machine, and the next requests go to the others while Serve replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from typing import Any

import ray
from ray.exceptions import RayError
from ray.serve._private.common import ReplicaID
from ray.serve.handle import DeploymentHandle

from lmserve.engine.client import EngineCalls
from lmserve.engine.types import (
    EngineClosedError,
    Finished,
    GenerationRequest,
    GenerationStream,
    Outbox,
    TextDelta,
)
from lmserve.engine.wire import WorkerInfo, WorkerSpec
from lmserve.replicas.deployment import REPLICA
from lmserve.replicas.routing import prefix_keys

logger = logging.getLogger("lmserve.replicas")


class ReplicatedEngine(EngineCalls):
    """One model's replicas, behind the deployment's handle.  See the module docstring."""

    replicated = True  # its requests' streams say which replica runs them

    def __init__(
        self,
        spec: WorkerSpec,
        handle: DeploymentHandle,
        described: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        app_name: str,
        replicas: int | None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.handle = handle
        self.app_name = app_name
        self._loop = loop
        self.info: WorkerInfo = described["info"]
        self.n_slots: int = described["n_slots"]
        self.max_queue: int = described["max_queue"]
        self.n_ctx_per_slot: int = described["n_ctx_per_slot"]
        self.pid: int = described["pid"]  # the first replica's worker (on its node)
        self.replicas = replicas  # None: autoscaled
        self._streams: dict[GenerationStream, asyncio.Task[None]] = {}  # each one's relay
        self._closed: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def busy_slots(self) -> int:
        """Generations in flight (all replicas' slots together; more wait in their queues)."""
        return min(len(self._streams), self.n_slots * (self.replicas or 1))

    @property
    def queue_depth(self) -> int:
        return len(self._streams) - self.busy_slots

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if self._closed is not None:
            raise EngineClosedError(self._closed)
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        where: dict[str, Any] = {}  # the Serve id of the replica that runs it, once known
        stream = GenerationStream(
            request, loop, Outbox(), on_cancel=lambda: self._cancel(token, where)
        )
        self._streams[stream] = loop.create_task(self._relay(stream, request, token, where))
        return stream

    async def _relay(
        self,
        stream: GenerationStream,
        request: GenerationRequest,
        token: str,
        where: dict[str, Any],
    ) -> None:
        completion_tokens = 0
        response = self.handle.options(stream=True).generate.remote(
            request, token=token, prefix=prefix_keys(request.prompt_tokens)
        )
        try:
            async for item in response:
                if isinstance(item, tuple) and item[:1] == (REPLICA,):
                    stream.place(item[1])
                    where["replica_id"] = item[2]
                    continue
                if isinstance(item, TextDelta):
                    completion_tokens = item.completion_tokens
                if isinstance(item, Finished):
                    stream.deliver(dataclasses.replace(item, replica=stream.replica))
                    return
                stream.deliver(item)
            raise RuntimeError("the replica's stream ended without a last event")
        except asyncio.CancelledError:
            response.cancel()
            raise
        except (RayError, RuntimeError) as exc:
            replica = stream.replica or "a replica"
            message = f"the engine of model '{self.name}' crashed: {replica} was lost ({exc})"
            logger.error("%s", message)
            stream.deliver(
                Finished.failure(
                    request, message, completion_tokens=completion_tokens, crashed=True
                )
            )
        except Exception as exc:  # Serve refused it (its queues are full, it is shutting down)
            message = f"the replicas of model '{self.name}' could not take it: {exc}"
            stream.deliver(
                Finished.failure(
                    request, message, completion_tokens=completion_tokens, unavailable=True
                )
            )
        finally:
            stream.place(None)
            self._streams.pop(stream, None)

    def _cancel(self, token: str, where: dict[str, Any]) -> None:
        """Ask the replica running the request to stop it."""
        replica = where.get("replica_id")
        call = self.handle.cancel.remote(token, replica=replica)
        self._loop.create_task(_quietly(call))

    # -- the engine's other calls ----------------------------------------------------------------

    async def _call(self, method: str, *args: Any) -> Any:
        if self._closed is not None:
            raise EngineClosedError(self._closed)
        return await self.handle.call.remote(method, *args)

    async def replica_ids(self) -> list[ReplicaID]:
        """The Serve ids of the model's replicas alive now (from their actors' names)."""
        actors = await asyncio.to_thread(ray.util.list_named_actors, True)
        marker = f"{self.app_name}#ModelReplica#"
        names = [actor["name"] for actor in actors if marker in actor["name"]]
        return [ReplicaID.from_full_id_str(name) for name in names]

    async def _reports(self) -> list[dict[str, Any]]:
        """The snapshot of every replica alive now, each naming its replica and node."""
        ids = await self.replica_ids()
        reports = await asyncio.gather(
            *(self.handle.report.remote(replica=replica) for replica in ids),
            return_exceptions=True,
        )
        return [report for report in reports if isinstance(report, dict)]

    async def snapshot(self) -> dict[str, Any]:
        """Every replica's slots and counters: the slots of all (each naming its replica),
        the counters summed, and one line per replica (node, slots busy, cached tokens)."""
        if self._closed is not None:
            raise EngineClosedError(self._closed)
        alive = await self._reports()
        if not alive:
            result: dict[str, Any] = await self._call("snapshot")
            return result
        return merge_reports(alive)

    def close(self, reason: str = "the server is shutting down") -> None:
        """Stop serving the model: its Serve application is deleted (blocking)."""
        if self._closed is not None:
            return
        self._closed = reason
        from ray import serve

        with contextlib.suppress(Exception):
            serve.delete(self.app_name, _blocking=True)


def _summed(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Counters of several replicas, added up (what is not a number: the first one's)."""
    present = [part for part in parts if part]
    if not present:
        return None
    total = dict(present[0])
    for part in present[1:]:
        for key, value in part.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def replica_lines(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per replica: its name, node, slots, slots busy and tokens its slots hold."""
    return [
        {
            "replica": report["replica"],
            "node_id": report["node_id"],
            "node_address": report["node_address"],
            "slots": len(report["slots"]),
            "slots_busy": sum(1 for slot in report["slots"] if slot["busy"]),
            "cached_tokens": sum(slot["cached_tokens"] for slot in report["slots"]),
            "prompt_cache": report.get("prompt_cache"),
        }
        for report in reports
    ]


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Replicas' snapshots as one model's, with a line per replica."""
    slots = [
        {**slot, "replica": report["replica"]} for report in reports for slot in report["slots"]
    ]
    return {
        "slots": slots,
        "stats": _summed([report["stats"] for report in reports]),
        "prompt_cache": _summed([report.get("prompt_cache") for report in reports]),
        "replicas": replica_lines(reports),
    }


async def _quietly(call: Any) -> None:
    try:
        await call
    except Exception:
        logger.debug("a cancel did not reach its replica", exc_info=True)
