"""The ``repository`` namespace: searching for models and downloading them, on Hugging Face.

LM Studio searches its own catalog and Hugging Face; lmserve searches Hugging Face, as
``lmserve get`` does (``HF_ENDPOINT`` and ``HF_TOKEN`` apply), so every result is an ``hf``
identifier.  A search with no term (``lms get`` alone: LM Studio's staff picks) lists the hub's
most downloaded GGUF models; a term that names a repository (``lms get
https://huggingface.co/publisher/repo``, or ``publisher/repo`` from an SDK) gives that
repository alone, as an exact match, or nothing if the hub has none.
``getModelDownloadOptions`` lists a repository's GGUF models, one per quantization, the one
lmserve would take first (``recommended``); a download identifier is
``publisher/repo/path.gguf``.  ``downloadModel`` runs as a job of the server's (the same as
``POST /api/v1/models/download``: one at a time per model, resumable, checked against the
hub's sha256), with its progress on the channel every quarter second, then ``startFinalizing``
and ``success`` with the key the model now has among the downloaded ones; a model already
downloaded gets ``success`` alone, as from LM Studio (``lms get`` then says it is there).  A
``cancel`` on the channel stops the download (its part stays, for a later resume).

The namespace's other endpoints (artifacts, plugins' dependencies, LM Studio hub logins) are
refused by name (:mod:`lmserve.api.lmstudio_ws.endpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from lmserve.api.lmstudio_ws.errors import SDKError
from lmserve.api.lmstudio_ws.protocol import (
    DownloadModelParameter,
    DownloadOptionsParameter,
    SearchModelsParameter,
)
from lmserve.api.lmstudio_ws.session import Channel, ChannelEndpoint, Context, Namespace, Rpc
from lmserve.models.download_jobs import DownloadJob
from lmserve.models.hub import DownloadOption, download_options, resolve_plan
from lmserve.models.references import DownloadError
from lmserve.models.search import (
    SEARCH_LIMIT,
    SearchHit,
    find_repository,
    is_search_term,
    names_repository,
    search_models,
)

PROGRESS_EVERY = 0.25  # seconds between two progress packets


def _memory_bytes() -> int | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


async def search(ctx: Context, param: SearchModelsParameter) -> Any:
    opts = param.opts
    if opts.compatibilityTypes is not None and "gguf" not in opts.compatibilityTypes:
        return {"results": []}  # lmserve runs GGUF models only
    term = (opts.searchTerm or "").strip()
    limit = opts.limit or SEARCH_LIMIT
    try:
        if not term or is_search_term(term):
            hits = await asyncio.to_thread(search_models, term, limit)
        elif names_repository(term):
            found = await asyncio.to_thread(find_repository, term)
            return {"results": [_result(found, exact=True)] if found else []}
        else:
            raise SDKError(
                "lmserve searches Hugging Face by a search term: words of a model's name "
                "(letters, digits, spaces, '.', '_', '+' and '-'), or a repository "
                f"(publisher/repo or its hub URL), not {term!r}."
            )
    except DownloadError as exc:
        raise SDKError(str(exc)) from None
    return {"results": [_result(hit, exact=_is_exact(hit.repo_id, term)) for hit in hits]}


def _is_exact(repo_id: str, term: str) -> bool:
    """Whether ``term`` is the repository's name, with or without its "-GGUF" (LM Studio then
    takes it without asking which)."""
    name = repo_id.split("/")[-1].lower()
    return bool(term) and term.lower() in (name, name.removesuffix("-gguf"))


def _result(hit: SearchHit, *, exact: bool) -> Any:
    result: dict[str, Any] = {
        "name": hit.repo_id,
        "identifier": {"type": "hf", "identifier": hit.repo_id},
    }
    if exact:
        result["exact"] = True
    return result


def _option(repo_id: str, option: DownloadOption, first: bool, memory: int | None) -> Any:
    answer: dict[str, Any] = {}
    if option.quantization:
        answer["quantization"] = option.quantization
    identifier = f"{repo_id}/{option.path}"
    answer |= {
        "name": option.path.rsplit("/", 1)[-1],
        "sizeBytes": option.size,
        # lmserve runs models on the CPU unless told otherwise: it fits if memory holds it.
        "fitEstimation": "willNotFit" if memory and option.size > memory else "fitWithoutGPU",
        "recommended": first,
        "downloadIdentifier": identifier,
        "indexedModelIdentifier": identifier,
    }
    return answer


async def get_download_options(ctx: Context, param: DownloadOptionsParameter) -> Any:
    wanted = param.modelSearchResultIdentifier
    if wanted.type != "hf":
        raise SDKError(
            "LM Studio's catalog is not searched by lmserve: give a Hugging Face repository "
            "(an 'hf' identifier, as searchModels returns)."
        )
    try:
        options = await asyncio.to_thread(download_options, wanted.identifier)
    except DownloadError as exc:
        raise SDKError(str(exc)) from None
    if not options:
        raise SDKError(f"{wanted.identifier} has no GGUF model to download.")
    memory = _memory_bytes()
    return {
        "results": [
            _option(wanted.identifier, option, index == 0, memory)
            for index, option in enumerate(options)
        ]
    }


def _reference(download_identifier: str) -> str:
    """``publisher/repo/path.gguf`` as ``lmserve get`` takes it (a file's hub URL); anything
    shorter (``publisher/repo``, ``publisher/repo@q4_k_m``) as it is."""
    parts = download_identifier.strip().split("/")
    if len(parts) < 3:
        return download_identifier
    return f"https://huggingface.co/{parts[0]}/{parts[1]}/blob/main/{'/'.join(parts[2:])}"


async def _progress(job: DownloadJob, channel: Channel, *, done: bool = False) -> None:
    update = {
        "downloadedBytes": job.plan.total_bytes if done else job.downloaded_bytes,
        "totalBytes": job.plan.total_bytes,
        "speedBytesPerSecond": job.bytes_per_second,
    }
    await channel.send({"type": "downloadProgress", "update": update})


async def download_model(ctx: Context, param: DownloadModelParameter, channel: Channel) -> None:
    try:
        plan = await asyncio.to_thread(
            resolve_plan, _reference(param.downloadIdentifier), models_root=ctx.models.models_root
        )
        present = await asyncio.to_thread(plan.already_present)
    except DownloadError as exc:
        raise SDKError(str(exc)) from None
    if not present:
        job = ctx.downloads.start(plan)
        while job.status == "downloading":
            await _progress(job, channel)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.cancelled.wait(), PROGRESS_EVERY)
            if channel.cancelled.is_set():
                job.cancel.set()
                raise SDKError("The download was cancelled; what it fetched is kept for later.")
        if job.status != "completed":
            raise SDKError(job.error or f"The download ended {job.status}.")
        await _progress(job, channel, done=True)
        await channel.send({"type": "startFinalizing"})
    catalog = ctx.models.rescan()
    target = plan.targets[0].resolve()
    entry = next((e for e in catalog.entries if e.path.resolve() == target), None)
    if entry is None:
        raise SDKError(f"{plan.targets[0].name} was downloaded but is no model lmserve lists.")
    await channel.send({"type": "success", "defaultIdentifier": catalog.public_id(entry)})


def repository_namespace() -> Namespace:
    rpcs = {
        "searchModels": Rpc(SearchModelsParameter, search),
        "getModelDownloadOptions": Rpc(DownloadOptionsParameter, get_download_options),
    }
    # Long-lived: a download never holds up a drain (the server's jobs stop with it).
    download = ChannelEndpoint(DownloadModelParameter, download_model, long_lived=True)
    channels = {"downloadModel": download}
    return Namespace(rpcs, channels)
