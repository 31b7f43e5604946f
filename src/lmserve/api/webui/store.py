"""The conversations: a tree of messages each, in the SQLite file that ``schema.py`` opens.

Every change is one transaction (an import is all or nothing); messages are written once and
never changed (an edit or a regenerated answer is a new branch). A :class:`ConversationDB`
belongs to one thread (``service.py`` gives it a thread of its own); it opens the file on
first use, and again after a failure, so a file fixed by hand works without a restart.

A user message's images are kept once per conversation (``images.py``); a message read
names them (``{id, media_type, size}``), and :meth:`ConversationDB.image` reads one. An
export holds their data, as ``data:`` URLs. An answer keeps the MCP calls the server ran for
it (``mcp_calls``: server, tool, arguments, output or error), as JSON beside its text.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmserve.api.webui.images import BadImage, StoredImage, read_data_url
from lmserve.api.webui.protocol import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_MESSAGES,
    ConversationUpdate,
    ExportFile,
    NewConversation,
    NewImage,
    NewMessage,
)
from lmserve.api.webui.schema import MIGRATIONS, open_database, transaction


class NotFound(Exception):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"No {what} '{ident}'.")
        self.what = what


class BadReference(Exception):
    """A message names a parent (or an image, or a conversation a leaf) that it does not
    hold; or (``code`` "invalid_image") one of its images is no image the store keeps."""

    def __init__(self, message: str, param: str, code: str = "invalid_reference") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ConversationDB:
    """The conversations in one SQLite file; see the module's docstring.

    Raises :class:`~lmserve.api.webui.schema.StoreUnusable` (the file), :class:`NotFound` and
    :class:`BadReference` (the request), and ``sqlite3.Error`` (the disk, a lock held too long).
    """

    def __init__(self, path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> None:
        self.path = path
        self._migrations = migrations
        self._conn: sqlite3.Connection | None = None

    # -- opening ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file; the next call opens (and checks) it again."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, self._migrations)
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        with transaction(conn):
            yield conn

    # -- reading ---------------------------------------------------------------------------

    def summaries(self) -> list[dict[str, Any]]:
        """Every conversation, most recently changed first, without its messages."""
        rows = self._connection().execute(
            """SELECT id, title, created_at, updated_at,
                      (SELECT count(*) FROM messages WHERE conversation_id = c.id)
               FROM conversations AS c ORDER BY updated_at DESC, id"""
        )
        return [
            {"id": i, "title": t, "created_at": c, "updated_at": u, "messages": n}
            for i, t, c, u, n in rows
        ]

    def get(self, ident: str) -> dict[str, Any]:
        """One conversation with all its messages, in the order they were written."""
        conn = self._connection()
        with transaction(conn, "BEGIN"):  # one snapshot of both tables
            return self._get(conn, ident)

    def export(self, idents: Sequence[str] | None = None) -> dict[str, Any]:
        """``ExportFile``'s shape: the conversations named, or every one."""
        conn = self._connection()
        with transaction(conn, "BEGIN"):
            if idents is None:
                idents = [row[0] for row in conn.execute("SELECT id FROM conversations")]
            conversations = [self._get(conn, ident, with_data=True) for ident in idents]
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": time.time(),
            "conversations": conversations,
        }

    def image(self, ident: str, image_id: str) -> StoredImage:
        """One image of a conversation, with its data."""
        return self._image(self._connection(), ident, image_id)

    def _get(
        self, conn: sqlite3.Connection, ident: str, *, with_data: bool = False
    ) -> dict[str, Any]:
        """The conversation; its messages' images as references, or (``with_data``, for an
        export) as ``{"url": data URL}``."""
        row = conn.execute(
            "SELECT id, title, settings, current_leaf, created_at, updated_at "
            "FROM conversations WHERE id = ?",
            (ident,),
        ).fetchone()
        if row is None:
            raise NotFound("conversation", ident)
        messages = conn.execute(
            "SELECT id, parent_id, role, content, reasoning_content, tool_calls, meta, "
            "created_at, images, mcp_calls FROM messages WHERE conversation_id = ? ORDER BY seq",
            (ident,),
        ).fetchall()
        data_urls: dict[str, str] = {}

        def images(column: str | None) -> list[dict[str, Any]]:
            refs = json.loads(column) if column is not None else []
            if not with_data:
                return refs
            for ref in refs:
                if ref["id"] not in data_urls:
                    data_urls[ref["id"]] = self._image(conn, ident, ref["id"]).data_url()
            return [{"url": data_urls[ref["id"]]} for ref in refs]

        return {
            "id": row[0],
            "title": row[1],
            "settings": json.loads(row[2]),
            "current_leaf": row[3],
            "created_at": row[4],
            "updated_at": row[5],
            "messages": [
                {
                    "id": m[0],
                    "parent_id": m[1],
                    "role": m[2],
                    "content": m[3],
                    "reasoning_content": m[4],
                    "tool_calls": json.loads(m[5]) if m[5] is not None else None,
                    "meta": json.loads(m[6]),
                    "created_at": m[7],
                    "images": images(m[8]),
                    "mcp_calls": json.loads(m[9]) if m[9] is not None else None,
                }
                for m in messages
            ],
        }

    # -- writing ---------------------------------------------------------------------------

    def create(self, new: NewConversation) -> dict[str, Any]:
        ident = new_id("conv")
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, NULL, ?, ?)",
                (ident, new.title, _dumps(new.settings.model_dump()), now, now),
            )
            return self._get(conn, ident)

    def update(self, ident: str, update: ConversationUpdate) -> dict[str, Any]:
        with self._write() as conn:
            self._get_row(conn, ident)
            if update.title is not None:
                conn.execute(
                    "UPDATE conversations SET title = ? WHERE id = ?", (update.title, ident)
                )
            if update.settings is not None:
                settings = _dumps(update.settings.model_dump())
                conn.execute(
                    "UPDATE conversations SET settings = ? WHERE id = ?", (settings, ident)
                )
            if update.title is not None or update.settings is not None:
                conn.execute(
                    "UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), ident)
                )
            if update.current_leaf is not None:
                if not self._has_message(conn, ident, update.current_leaf):
                    raise BadReference(
                        f"The conversation has no message '{update.current_leaf}'.",
                        "current_leaf",
                    )
                # Switching branches is no change: the conversation keeps its place.
                conn.execute(
                    "UPDATE conversations SET current_leaf = ? WHERE id = ?",
                    (update.current_leaf, ident),
                )
            return self._get(conn, ident)

    def delete(self, ident: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM conversations WHERE id = ?", (ident,)).rowcount == 0:
                raise NotFound("conversation", ident)

    def add_message(self, ident: str, message: NewMessage) -> dict[str, Any]:
        """Add ``message`` under its parent; it becomes the conversation's current leaf."""
        with self._write() as conn:
            self._get_row(conn, ident)
            seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE conversation_id = ?",
                (ident,),
            ).fetchone()[0]
            if seq > MAX_MESSAGES:
                raise BadReference(
                    f"A conversation holds at most {MAX_MESSAGES} messages.", "parent_id"
                )
            if message.parent_id is not None and not self._has_message(
                conn, ident, message.parent_id
            ):
                raise BadReference(
                    f"The conversation has no message '{message.parent_id}'.", "parent_id"
                )
            now = time.time()
            message_id = new_id("msg")
            refs = self._insert_message(conn, ident, message_id, seq, message, now)
            conn.execute(
                "UPDATE conversations SET current_leaf = ?, updated_at = ? WHERE id = ?",
                (message_id, now, ident),
            )
            return {
                "id": message_id,
                "created_at": now,
                **message.model_dump(exclude={"images"}),
                "images": refs,
            }

    def import_file(self, document: ExportFile) -> list[dict[str, Any]]:
        """Add every conversation of an export as a new one (new ids: nothing here is ever
        replaced), all or nothing; their summaries."""
        created = []
        with self._write() as conn:
            for index, conversation in enumerate(document.conversations):
                ident = new_id("conv")
                where = f"conversations[{index}]"
                conn.execute(
                    "INSERT INTO conversations VALUES (?, ?, ?, NULL, ?, ?)",
                    (
                        ident,
                        conversation.title,
                        _dumps(conversation.settings.model_dump()),
                        conversation.created_at,
                        conversation.updated_at,
                    ),
                )
                ids: dict[str, str] = {}
                for seq, message in enumerate(conversation.messages, start=1):
                    param = f"{where}.messages[{seq - 1}]"
                    if message.id in ids:
                        raise BadReference(f"Message id '{message.id}' repeats.", f"{param}.id")
                    if message.parent_id is not None and message.parent_id not in ids:
                        raise BadReference(
                            f"The parent '{message.parent_id}' is not an earlier message of "
                            "this conversation.",
                            f"{param}.parent_id",
                        )
                    ids[message.id] = new_id("msg")
                    stored = NewMessage.model_validate(
                        {
                            **message.model_dump(exclude={"id", "created_at"}),
                            "parent_id": ids.get(message.parent_id or ""),
                        }
                    )
                    self._insert_message(
                        conn, ident, ids[message.id], seq, stored, message.created_at, param
                    )
                leaf = conversation.current_leaf
                if leaf is not None and leaf not in ids:
                    raise BadReference(
                        f"The current leaf '{leaf}' is not a message of this conversation.",
                        f"{where}.current_leaf",
                    )
                conn.execute(
                    "UPDATE conversations SET current_leaf = ? WHERE id = ?",
                    (ids[leaf] if leaf else None, ident),
                )
                created.append({"id": ident, "title": conversation.title, "messages": len(ids)})
        return created

    # -- helpers ---------------------------------------------------------------------------

    def _get_row(self, conn: sqlite3.Connection, ident: str) -> None:
        if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (ident,)).fetchone() is None:
            raise NotFound("conversation", ident)

    def _has_message(self, conn: sqlite3.Connection, ident: str, message_id: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM messages WHERE conversation_id = ? AND id = ?", (ident, message_id)
        ).fetchone()
        return row is not None

    def _image(self, conn: sqlite3.Connection, ident: str, image_id: str) -> StoredImage:
        row = conn.execute(
            "SELECT media_type, data FROM images WHERE conversation_id = ? AND id = ?",
            (ident, image_id),
        ).fetchone()
        if row is None:
            raise NotFound("image", image_id)
        return StoredImage(image_id, row[0], bytes(row[1]))

    def _store_images(
        self, conn: sqlite3.Connection, ident: str, images: list[NewImage], param: str
    ) -> list[dict[str, Any]]:
        """Keep a message's new images (once per conversation); their references, in order."""
        refs = []
        for index, image in enumerate(images):
            where = f"{param}images[{index}]"
            if image.url is None:
                row = conn.execute(
                    "SELECT media_type, length(data) FROM images "
                    "WHERE conversation_id = ? AND id = ?",
                    (ident, image.id),
                ).fetchone()
                if row is None:
                    raise BadReference(f"The conversation has no image '{image.id}'.", where)
                refs.append({"id": image.id, "media_type": row[0], "size": row[1]})
                continue
            try:
                stored = read_data_url(image.url)
            except BadImage as exc:
                raise BadReference(str(exc), f"{where}.url", "invalid_image") from None
            conn.execute(
                "INSERT OR IGNORE INTO images (conversation_id, id, media_type, data) "
                "VALUES (?, ?, ?, ?)",
                (ident, stored.id, stored.media_type, stored.data),
            )
            refs.append(stored.ref())
        return refs

    def _insert_message(
        self,
        conn: sqlite3.Connection,
        ident: str,
        message_id: str,
        seq: int,
        message: NewMessage,
        created_at: float,
        param: str = "",
    ) -> list[dict[str, Any]]:
        """Write the message (and its images); its images' references."""
        refs = self._store_images(conn, ident, message.images, f"{param}." if param else "")
        calls = [call.model_dump() for call in message.mcp_calls or []] or None
        conn.execute(
            "INSERT INTO messages (conversation_id, id, seq, parent_id, role, content, "
            "reasoning_content, tool_calls, meta, created_at, images, mcp_calls) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ident,
                message_id,
                seq,
                message.parent_id,
                message.role,
                message.content,
                message.reasoning_content,
                _dumps(message.tool_calls) if message.tool_calls is not None else None,
                _dumps(message.meta),
                created_at,
                _dumps(refs) if refs else None,
                _dumps(calls) if calls else None,
            ),
        )
        return refs
