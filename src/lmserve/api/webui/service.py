"""The conversations API's logic: the database on a thread of its own, its failures as API
errors.

SQLite calls block (a write waits for the disk, or for another process's transaction), so
none runs on the event loop: :class:`Conversations` hands each to one worker thread, which
owns the connection. One thread is enough (a call takes a millisecond or so) and makes the
writes of concurrent tabs queue in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lmserve.api.common.errors import (
    APIError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from lmserve.api.webui.images import StoredImage
from lmserve.api.webui.protocol import ConversationUpdate, ExportFile, NewConversation, NewMessage
from lmserve.api.webui.schema import StoreUnusable
from lmserve.api.webui.store import BadReference, ConversationDB, NotFound

T = TypeVar("T")
logger = logging.getLogger("lmserve.webui")


class Conversations:
    """The conversations database, as coroutines that raise the API's errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = ConversationDB(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmserve-sqlite")

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=False)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, functools.partial(call, *args))
        except NotFound as exc:
            raise NotFoundError(str(exc), code=f"{exc.what}_not_found") from exc
        except BadReference as exc:
            raise InvalidRequestError(str(exc), param=exc.param, code=exc.code) from exc
        except StoreUnusable as exc:
            logger.warning("%s", exc)
            raise APIError(str(exc), code="conversations_unusable") from exc
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise self._failed(exc) from exc
            raise ServiceUnavailableError(
                "The conversations database is busy (another process holds it). Try again.",
                code="conversations_busy",
                headers={"Retry-After": "1"},
            ) from exc
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: sqlite3.Error) -> APIError:
        """A failure of the disk or the file after it was opened: open it afresh (and check
        it again) on the next call."""
        logger.error("the conversations database %s failed: %s", self.path, exc)
        self._thread.submit(self._db.close)
        return APIError(
            f"The conversations database failed ({exc}). Nothing was changed.",
            code="conversations_failed",
        )

    async def summaries(self) -> list[dict[str, Any]]:
        return await self._run(self._db.summaries)

    async def get(self, ident: str) -> dict[str, Any]:
        return await self._run(self._db.get, ident)

    async def create(self, new: NewConversation) -> dict[str, Any]:
        return await self._run(self._db.create, new)

    async def update(self, ident: str, update: ConversationUpdate) -> dict[str, Any]:
        return await self._run(self._db.update, ident, update)

    async def delete(self, ident: str) -> None:
        await self._run(self._db.delete, ident)

    async def add_message(self, ident: str, message: NewMessage) -> dict[str, Any]:
        return await self._run(self._db.add_message, ident, message)

    async def image(self, ident: str, image_id: str) -> StoredImage:
        return await self._run(self._db.image, ident, image_id)

    async def export(self, ident: str | None = None) -> dict[str, Any]:
        return await self._run(self._db.export, None if ident is None else [ident])

    async def import_file(self, document: ExportFile) -> list[dict[str, Any]]:
        return await self._run(self._db.import_file, document)


def export_filename(document: dict[str, Any]) -> str:
    """``lmserve-conversations.json``, or the one conversation's id in the name."""
    conversations = document["conversations"]
    if len(conversations) == 1:
        return f"lmserve-{conversations[0]['id']}.json"
    return "lmserve-conversations.json"
