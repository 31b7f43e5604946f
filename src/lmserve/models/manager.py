"""Which models are loaded: explicit loads, just-in-time loads, idle TTL, eviction, crashes.

Everything here runs on the event loop except the load itself, which runs in a worker thread;
a model that several requests ask for at once is loaded exactly once (they share one task).
A model loaded just in time unloads the models loaded just in time before it (LM Studio's JIT
auto-evict, unless ``--no-jit-auto-evict``); explicit loads stay.

Each loaded model's engine runs in its own process.  When one dies, the model leaves the
loaded set at once (its requests have already failed); an explicitly loaded model is loaded
again by itself, a just-in-time one by its next request, both after the back-off that
:mod:`lmserve.models.crashes` sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmserve.config import ModelDefaults, Settings, default_memory_budget
from lmserve.engine.exits import WorkerExit
from lmserve.models.catalog import Catalog, CatalogEntry
from lmserve.models.crashes import CrashHistory
from lmserve.models.drafts import attach_draft
from lmserve.models.errors import (
    ModelCapacityError,
    ModelCrashedError,
    ModelLoadFailed,
    ModelNotFound,
)
from lmserve.models.loader import (
    LoadedModel,
    LoadOptions,
    estimate_memory,
    fitting_context,
    load_instance,
    plan_context,
    projector_for,
)
from lmserve.models.repack import VerdictCache
from lmserve.models.unnamed import sole_model
from lmserve.paths import selfcheck_file
from lmserve.rpc.probe import reachable

logger = logging.getLogger("lmserve.models")

_REAP_INTERVAL = 1.0  # seconds between TTL checks
RPC_WAIT_INTERVAL = 1.0  # seconds between checks of a crashed model's lost RPC worker

# Told of each model that a just-in-time load unloads (LM Studio's auto-evict), before it goes.
EvictionNotice = Callable[[LoadedModel], Awaitable[None]]


class ModelManager:
    """Owns the catalog of downloaded models and the set of loaded instances."""

    def __init__(
        self,
        models_root: Path,
        settings: Settings | None = None,
        verdicts: VerdictCache | None = None,
    ) -> None:
        settings = settings or Settings()
        self.models_root = models_root
        self.defaults: ModelDefaults = settings.models
        self.jit = settings.jit
        self.jit_ttl = settings.jit_ttl
        self.jit_auto_evict = settings.jit_auto_evict
        self.max_loaded = settings.max_loaded_models
        self.max_memory = settings.max_memory or default_memory_budget()
        self.catalog = Catalog.scan(models_root)
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._loading_paths: dict[str, Path] = {}
        self._restarting: set[str] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.verdicts = verdicts or VerdictCache(selfcheck_file())
        self.crashes = CrashHistory()
        # With --ray, models load as Ray Serve replicas (Ray imported only then).
        self.replicas: Any = None
        if settings.ray is not None:
            from lmserve.replicas.cluster import RayReplicas

            self.replicas = RayReplicas(settings.ray, self.models_root)

    # -- lookup ------------------------------------------------------------------------------
    def rescan(self) -> Catalog:
        self.catalog = Catalog.scan(self.models_root)
        return self.catalog

    def resolve_entry(self, name: str) -> CatalogEntry | None:
        """The downloaded model ``name`` refers to, scanning the folder again on a miss."""
        return self.catalog.resolve(name) or self.rescan().resolve(name)

    def not_found(self, name: str, known: list[str]) -> ModelNotFound:
        """The error for a name no model has, saying whose projector it is if it is one."""
        return ModelNotFound(name, known, self.catalog.not_a_model(name))

    def find_loaded(self, name: str) -> LoadedModel | None:
        """A loaded instance by identifier, or by any name of its catalog entry."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        entry = self.catalog.resolve(name)
        if entry is None:
            return None
        return next((m for m in self._loaded.values() if m.entry.path == entry.path), None)

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    @property
    def loading(self) -> list[str]:
        """Identifiers of the models being loaded right now (not counting restarts)."""
        return [name for name in self._loading if name not in self._restarting]

    @property
    def restarting(self) -> list[str]:
        """Identifiers of crashed models waiting to be loaded again, or being loaded again."""
        return sorted(self._restarting)

    def _pending_load(self, name: str) -> asyncio.Task[LoadedModel] | None:
        """A load under way of the model ``name`` refers to (by identifier or file)."""
        task = self._loading.get(name)
        if task is not None:
            return task
        entry = self.catalog.resolve(name)
        if entry is None:
            return None
        # _loading_paths has exactly _loading's keys: both are kept by _start_load.
        for identifier, path in self._loading_paths.items():
            if path == entry.path:
                return self._loading[identifier]
        return None

    def _check_crashes(self, identifier: str) -> None:
        """Refuse a model that crashed and is waiting out its back-off (or was given up)."""
        record = self.crashes.get(identifier)
        if record is None or not record.streak:
            return
        if record.retry_in() > 0 or identifier in self._restarting:
            raise ModelCrashedError(record)

    def known_names(self) -> list[str]:
        names = list(self._loaded)
        if self.jit:
            names += [self.catalog.public_id(e) for e in self.catalog.entries]
        return list(dict.fromkeys(names))

    async def attach_draft(self, model: LoadedModel, name: str) -> str:
        """Draft for ``model`` with the downloaded model ``name``
        (:func:`lmserve.models.drafts.attach_draft`); its public name."""
        entry = self.resolve_entry(name)
        public = self.catalog.public_id(entry) if entry is not None else None
        return await attach_draft(model, name, entry, public)

    def present(self) -> dict[str, str]:
        """The models loaded, being loaded or waiting to be loaded again after a crash: their
        identifiers and catalog model types (``llm`` where the catalog no longer knows one)."""
        found = {model.identifier: model.entry.model_type for model in self.loaded()}
        for identifier in [*self.loading, *self.restarting]:
            entry = self.catalog.resolve(identifier)
            found.setdefault(identifier, entry.model_type if entry is not None else "llm")
        return found

    def sole_model(self, kind: str = "llm") -> str:
        """The model that serves a request naming none: the one of ``kind`` present
        (:func:`lmserve.models.unnamed.sole_model`)."""
        return sole_model(self.present(), self.catalog, self.jit, kind)

    # -- use by requests ---------------------------------------------------------------------
    async def acquire(
        self, name: str | None, ttl: float | None = None, kind: str = "llm"
    ) -> LoadedModel:
        """The model a request names, loading it just in time if it is downloaded; for a
        request that names none (``None``), the one loaded (:meth:`sole_model`).

        The caller must :meth:`release` it when the request is over; until then it is never
        evicted or unloaded by TTL.
        """
        if name is None:
            name = self.sole_model(kind)
        model = self.find_loaded(name)
        if model is None:
            pending = self._pending_load(name)
            if pending is not None:  # loading, maybe again after a crash: wait for it
                model = await asyncio.shield(pending)
        if model is None:
            self._check_crashes(name)
            entry = self.resolve_entry(name) if self.jit else None
            if entry is None:
                raise self.not_found(name, self.known_names())
            self._check_crashes(self.catalog.public_id(entry))
            model = self.find_loaded(name) or await self._load_once(
                entry,
                LoadOptions(ttl=ttl),
                jit=True,
                ttl=ttl if ttl is not None else self.jit_ttl,
                evict=True,
            )
        model.in_flight += 1
        model.last_used = time.monotonic()
        return model

    def release(self, model: LoadedModel) -> None:
        model.in_flight = max(0, model.in_flight - 1)
        model.last_used = time.monotonic()

    async def refit(self, model: LoadedModel, prompt_tokens: int) -> LoadedModel | None:
        """``model`` loaded again with a context that holds a prompt of ``prompt_tokens`` and
        its answer, for the one request that holds it: a just-in-time load takes the context
        its request needs, up to what the model was trained on.  ``None`` where the context
        was chosen (an explicit load, a context length given), another request uses the
        model, or no context would hold the prompt within the training or memory limits.
        """
        options = replace(
            model.options,
            identifier=model.identifier,
            context_length=fitting_context(prompt_tokens),
        )
        parallel, n_ctx = plan_context(model.entry, options, self.defaults)  # trained length
        needed = estimate_memory(model.entry, parallel * n_ctx, mmproj=model.mmproj)
        chosen = not model.jit or model.options.context_length is not None
        shared = model.in_flight > 1 or model.engine.in_flight > 0
        too_long = prompt_tokens >= n_ctx or needed > (self.max_memory or needed)
        if chosen or shared or too_long or self._loaded.get(model.identifier) is not model:
            return None
        logger.info("loading %s again with %d tokens per slot", model.identifier, n_ctx)
        # The new load is under way before the old engine is gone, so that no request loads
        # the model in between with the default context.
        del self._loaded[model.identifier]
        model.in_flight = 0
        task = self._start_load(model.entry, options, jit=True, ttl=model.ttl)
        await asyncio.to_thread(model.close, "the model is loaded again with a longer context")
        refitted = await asyncio.shield(task)
        refitted.in_flight += 1
        return refitted

    @contextlib.asynccontextmanager
    async def using(
        self, name: str | None, ttl: float | None = None, kind: str = "llm"
    ) -> AsyncIterator[LoadedModel]:
        model = await self.acquire(name, ttl, kind)
        try:
            yield model
        finally:
            self.release(model)

    # -- explicit management -----------------------------------------------------------------
    async def load(
        self,
        name: str,
        options: LoadOptions | None = None,
        *,
        jit: bool = False,
        on_evict: EvictionNotice | None = None,
    ) -> LoadedModel:
        """Load ``name`` (``lmserve load``, the native API); an instance with the same
        identifier that is already loaded is returned as it is (with its TTL and draft model
        updated, if the load gives them).  ``jit``: a load just in time, as the SDKs'
        ``model(key)`` loads (the JIT TTL unless the options give one; the other models
        loaded just in time are unloaded, ``on_evict`` told of each first)."""
        options = options or LoadOptions()
        entry = self.resolve_entry(name)
        if entry is None:
            raise self.not_found(name, [self.catalog.public_id(e) for e in self.catalog.entries])
        identifier = options.identifier or self.catalog.public_id(entry)
        loaded = self._loaded.get(identifier)
        if loaded is None:
            self.crashes.forgive(identifier)
            ttl = options.ttl if options.ttl is not None or not jit else self.jit_ttl
            loaded = await self._load_once(
                entry, options, jit=jit, ttl=ttl, evict=jit, on_evict=on_evict
            )
        elif options.ttl is not None:
            loaded.ttl = options.ttl
        if options.draft_model is not None:
            await self.attach_draft(loaded, options.draft_model)
            loaded.options = replace(loaded.options, draft_model=options.draft_model)
        return loaded

    async def unload(self, identifier: str, reason: str = "the model was unloaded") -> None:
        model = self._loaded.pop(identifier, None)
        if model is None and identifier in self._restarting:
            # Crashed and waiting to be loaded again (out its back-off, or for its RPC
            # workers): unloading it calls that off.
            self._restarting.discard(identifier)
            logger.info("%s will not be loaded again after its crash: unloaded", identifier)
            return
        if model is None:
            raise ModelNotFound(identifier, list(self._loaded))
        await asyncio.to_thread(model.close, reason)
        logger.info("unloaded %s", identifier)

    async def unload_all(self) -> list[str]:
        identifiers = list(self._loaded)
        for identifier in identifiers:
            await self.unload(identifier)
        return identifiers

    def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        models, self._loaded = list(self._loaded.values()), {}
        for model in models:
            model.close("the server is shutting down")
        if self.replicas is not None:
            self.replicas.close()

    # -- loading -------------------------------------------------------------------------------
    def _start_load(
        self,
        entry: CatalogEntry,
        options: LoadOptions,
        *,
        jit: bool,
        ttl: float | None,
        evict: bool = False,
        on_evict: EvictionNotice | None = None,
    ) -> asyncio.Task[LoadedModel]:
        """The task loading ``entry``: a new one, or the one already under way.  ``evict``: a
        new load just in time, which unloads the others loaded so (:meth:`_evict_jit`)."""
        identifier = options.identifier or self.catalog.public_id(entry)
        task = self._loading.get(identifier)
        if task is None:
            evicting = on_evict if evict else None
            task = asyncio.ensure_future(
                self._load(entry, identifier, options, jit, ttl, evict, evicting)
            )
            self._loading[identifier] = task
            self._loading_paths[identifier] = entry.path

            def done(_: object) -> None:
                self._loading.pop(identifier, None)
                self._loading_paths.pop(identifier, None)

            task.add_done_callback(done)
        return task

    async def _load_once(
        self,
        entry: CatalogEntry,
        options: LoadOptions,
        *,
        jit: bool,
        ttl: float | None,
        evict: bool = False,
        on_evict: EvictionNotice | None = None,
    ) -> LoadedModel:
        # shield: one impatient client going away must not cancel a load others wait for.
        task = self._start_load(entry, options, jit=jit, ttl=ttl, evict=evict, on_evict=on_evict)
        return await asyncio.shield(task)

    async def _load(
        self,
        entry: CatalogEntry,
        identifier: str,
        options: LoadOptions,
        jit: bool,
        ttl: float | None,
        evict: bool = False,
        on_evict: EvictionNotice | None = None,
    ) -> LoadedModel:
        if evict:
            await self._evict_jit(entry, on_evict)
        parallel, n_ctx = plan_context(entry, options, self.defaults)
        needed = estimate_memory(entry, parallel * n_ctx, mmproj=projector_for(entry, options))
        await self._make_room(needed, entry)
        loop = self._loop = asyncio.get_running_loop()

        def on_exit(exit: WorkerExit) -> None:  # on the worker's pipe thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
                loop.call_soon_threadsafe(self._worker_died, exit)

        try:
            # The model loads in its own process: a file that crashes llama.cpp ends that one.
            model = await asyncio.to_thread(
                load_instance,
                entry,
                identifier,
                options,
                self.defaults,
                jit=jit,
                ttl=ttl,
                verdicts=self.verdicts,
                loop=loop,
                on_exit=on_exit,
                deploy=self.replicas.deploy if self.replicas is not None else None,
            )
        except Exception as exc:
            logger.error("could not load %s: %s", entry.relative_path, exc)
            raise ModelLoadFailed(f"could not load {entry.relative_path}: {exc}") from exc
        if self._closed:  # the server stopped while the model loaded
            await asyncio.to_thread(model.close, "the server is shutting down")
            raise ModelLoadFailed(f"could not load {entry.relative_path}: the server stopped")
        self._loaded[identifier] = model
        self._start_reaper()
        return model

    # -- crashes -------------------------------------------------------------------------------
    def _worker_died(self, exit: WorkerExit) -> None:
        """A loaded model's worker process died; its requests have already been failed."""
        model = self._loaded.get(exit.name)
        if model is None or model.engine.pid != exit.pid or self._closed:
            return
        del self._loaded[exit.name]
        record = self.crashes.note(exit.name, exit.reason, exit.requests)
        wait = record.retry_in()
        if record.gave_up:
            then = f"it crashed {record.streak} times in a row, so it is not loaded again"
        elif model.jit:
            then = "its next request loads it again" + (f" after {wait:.0f} s" if wait else "")
        else:
            then = f"loading it again in {wait:.0f} s" if wait else "loading it again now"
            self._restart(model, wait)
        logger.error("%s is unloaded: %s; %s", exit.name, exit.reason, then)

    def _restart(self, crashed: LoadedModel, delay: float) -> None:
        """Load an explicitly loaded model again after its crash, in ``delay`` seconds.

        Until the load starts, requests for it get 503 ``model_crashed``; once it has started
        they wait for it.  A failed load counts as one more crash and backs off again.
        """
        self._restarting.add(crashed.identifier)
        self._continue_restart(crashed, delay)

    def _continue_restart(self, crashed: LoadedModel, delay: float, waited: bool = False) -> None:
        """The rest of :meth:`_restart`, unless an unload called it off meanwhile."""
        identifier = crashed.identifier
        if identifier not in self._restarting:
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._continue_restart, crashed, 0.0)
            return
        if self._closed or identifier in self._loaded:
            self._restarting.discard(identifier)
            return
        workers = tuple(crashed.config.get("rpc") or ())  # type: ignore[call-overload]
        if workers and not waited:
            asyncio.get_running_loop().create_task(self._await_rpc_workers(crashed, workers))
            return
        # Under the same identifier, whatever the catalog would call the file now.
        options = replace(crashed.options, identifier=identifier)
        task = self._start_load(crashed.entry, options, jit=False, ttl=crashed.ttl)

        def done(task: asyncio.Task[LoadedModel]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is None and identifier not in self._restarting:  # unloaded as it loaded
                asyncio.get_running_loop().create_task(self.unload(identifier))
                return
            if error is None:
                self._restarting.discard(identifier)
                logger.info("%s is loaded again after its crash", identifier)
                return
            record = self.crashes.note(identifier, str(error))
            if isinstance(error, ModelLoadFailed) and not record.gave_up and not self._closed:
                self._continue_restart(crashed, record.retry_in())
                return
            self._restarting.discard(identifier)
            logger.error("%s is not loaded again: %s", identifier, error)

        task.add_done_callback(done)

    async def _await_rpc_workers(self, crashed: LoadedModel, workers: tuple[str, ...]) -> None:
        """Load a model split over RPC workers again only once every worker accepts
        connections: a lost worker is the usual cause of its crash, and loading before it is
        back would fail at once, again and again, until the back-off gave up."""
        identifier = crashed.identifier
        told = False
        while not self._closed and identifier in self._restarting:
            down = [w for w in workers if not await asyncio.to_thread(reachable, w)]
            if not down:
                self._continue_restart(crashed, 0.0, waited=True)
                return
            if not told:
                logger.warning(
                    "%s: waiting for its RPC worker %s to come back", identifier, ", ".join(down)
                )
                told = True
            await asyncio.sleep(RPC_WAIT_INTERVAL)

    async def _evict_jit(self, entry: CatalogEntry, on_evict: EvictionNotice | None) -> None:
        """LM Studio's JIT auto-evict (unless ``--no-jit-auto-evict``): a model loaded just in
        time unloads the models loaded just in time before it, those answering no request
        (one that is answering goes at the next such load).  Explicit loads stay."""
        if not self.jit_auto_evict:
            return
        others = [
            model
            for model in self._loaded.values()
            if model.jit and not model.busy and model.entry.path != entry.path
        ]
        for model in others:
            if on_evict is not None:
                with contextlib.suppress(Exception):  # the client went away: unload anyway
                    await on_evict(model)
            logger.info(
                "evicting %s: %s is loaded just in time, which unloads the other models "
                "loaded so (JIT auto-evict; --no-jit-auto-evict keeps them)",
                model.identifier,
                entry.relative_path,
            )
            with contextlib.suppress(ModelNotFound):
                await self.unload(model.identifier, "another model was loaded just in time")

    async def _make_room(self, needed: int, entry: CatalogEntry) -> None:
        """Unload least recently used idle JIT models until the new one fits the limits."""

        def over() -> bool:
            count = len(self._loaded) + 1
            used = sum(model.memory_bytes for model in self._loaded.values()) + needed
            too_many = self.max_loaded is not None and count > self.max_loaded
            too_big = self.max_memory is not None and used > self.max_memory
            return too_many or too_big

        while over():
            candidates = [m for m in self._loaded.values() if m.jit and not m.busy]
            if not candidates:
                raise ModelCapacityError(
                    f"cannot load {entry.relative_path}: {len(self._loaded)} models are loaded "
                    f"(limit {self.max_loaded or 'none'}, memory budget "
                    f"{(self.max_memory or 0) / 2**30:.1f} GiB) and none can be unloaded now"
                )
            victim = min(candidates, key=lambda m: m.last_used)
            logger.info("evicting %s to make room for %s", victim.identifier, entry.relative_path)
            await self.unload(victim.identifier, "the model was unloaded to make room")

    # -- TTL -------------------------------------------------------------------------------------
    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_forever())

    async def _reap_forever(self) -> None:
        while self._loaded:
            await asyncio.sleep(_REAP_INTERVAL)
            for model in list(self._expired()):
                logger.info("unloading %s: idle for its TTL of %g s", model.identifier, model.ttl)
                with contextlib.suppress(ModelNotFound):
                    await self.unload(model.identifier, "the model's idle TTL expired")

    def _expired(self) -> Iterator[LoadedModel]:
        now = time.monotonic()
        for model in self._loaded.values():
            if model.ttl is not None and not model.busy and model.ttl_remaining(now) == 0:
                yield model
