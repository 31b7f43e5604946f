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
import logging
import secrets
from typing import Any

import numpy as np
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from lmserve.engine.types import (
    EngineClosedError,
    Finished,
    GenerationRequest,
    GenerationStream,
    ImageInput,
    Outbox,
    TextDelta,
    TokenizedPrompt,
)
from lmserve.engine.wire import WorkerInfo, WorkerSpec
from lmserve.replicas.deployment import REPLICA
from lmserve.replicas.routing import prefix_keys

logger = logging.getLogger("lmserve.replicas")


class ReplicatedEngine:
    """One model's replicas, behind the deployment's handle.  See the module docstring."""

    replicated = True  # its requests' streams say which replica runs them

    def __init__(
        self,
        spec: WorkerSpec,
        handle: DeploymentHandle,
        described: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        app_name: str,
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
        self.busy_slots = 0
        self.queue_depth = 0
        self._streams: dict[GenerationStream, asyncio.Task[None]] = {}  # each one's relay
        self._closed: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if self._closed is not None:
            raise EngineClosedError(self._closed)
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        where: dict[str, Any] = {}
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
                    where["replica"], where["replica_id"] = item[1], item[2]
                    continue
                if isinstance(item, TextDelta):
                    completion_tokens = item.completion_tokens
                stream.deliver(item)
                if isinstance(item, Finished):
                    return
            raise RuntimeError("the replica's stream ended without a last event")
        except asyncio.CancelledError:
            response.cancel()
            raise
        except (RayError, RuntimeError) as exc:
            replica = where.get("replica", "a replica")
            message = f"the engine of model '{self.name}' crashed: {replica} was lost ({exc})"
            logger.error("%s", message)
            stream.deliver(
                Finished.failure(
                    request, message, completion_tokens=completion_tokens, crashed=True
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

    async def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]:
        result: list[int] = await self._call("tokenize", text, add_special, parse_special)
        return result

    async def tokenize_prompt(self, text: str) -> list[int]:
        result: list[int] = await self._call("tokenize_prompt", text)
        return result

    async def tokenize_images(self, text: str, images: list[ImageInput]) -> TokenizedPrompt:
        result: TokenizedPrompt = await self._call("tokenize_images", text, images)
        return result

    async def detokenize(self, tokens: list[int]) -> str:
        result: str = await self._call("detokenize", tokens)
        return result

    async def rerank(self, query: str, documents: list[str]) -> list[tuple[float, int]]:
        result: list[tuple[float, int]] = await self._call("rerank", query, documents)
        return result

    async def embed(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        result: list[np.ndarray] = await self._call("embed", token_lists)
        return result

    async def load_draft(self, name: str, path: str) -> None:
        await self._call("load_draft", name, path)

    async def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("snapshot")
        return result

    async def clear_prompt_cache(self, memory: bool, disk: bool) -> dict[str, int]:
        result: dict[str, int] = await self._call("clear_prompt_cache", memory, disk)
        return result

    def close(self, reason: str = "the server is shutting down") -> None:
        """Stop serving the model: its Serve application is deleted (blocking)."""
        if self._closed is not None:
            return
        self._closed = reason
        from ray import serve

        with contextlib.suppress(Exception):
            serve.delete(self.app_name, _blocking=True)


async def _quietly(call: Any) -> None:
    try:
        await call
    except Exception:
        logger.debug("a cancel did not reach its replica", exc_info=True)
