"""The conversations: a tree of messages each, in the SQLite file that ``schema.py`` opens.

Every change is one transaction (an import is all or nothing); messages are written once and
never changed (an edit or a regenerated answer is a new branch). A :class:`ConversationDB`
belongs to one thread (``service.py`` gives it a thread of its own); it opens the file on
first use, and again after a failure, so a file fixed by hand works without a restart.
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

from lmserve.api.webui.protocol import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_MESSAGES,
    ConversationUpdate,
    ExportFile,
    NewConversation,
    NewMessage,
)
from lmserve.api.webui.schema import MIGRATIONS, open_database, transaction


class NotFound(Exception):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"No {what} '{ident}'.")
        self.what = what


class BadReference(Exception):
    """A message names a parent (or a conversation a leaf) that it does not hold."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


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
            conversations = [self._get(conn, ident) for ident in idents]
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": time.time(),
            "conversations": conversations,
        }

    def _get(self, conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT id, title, settings, current_leaf, created_at, updated_at "
            "FROM conversations WHERE id = ?",
            (ident,),
        ).fetchone()
        if row is None:
            raise NotFound("conversation", ident)
        messages = conn.execute(
            "SELECT id, parent_id, role, content, reasoning_content, tool_calls, meta, "
            "created_at FROM messages WHERE conversation_id = ? ORDER BY seq",
            (ident,),
        )
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
            self._insert_message(conn, ident, message_id, seq, message, now)
            conn.execute(
                "UPDATE conversations SET current_leaf = ?, updated_at = ? WHERE id = ?",
                (message_id, now, ident),
            )
            return {"id": message_id, "created_at": now, **message.model_dump()}

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
                        conn, ident, ids[message.id], seq, stored, message.created_at
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

    def _insert_message(
        self,
        conn: sqlite3.Connection,
        ident: str,
        message_id: str,
        seq: int,
        message: NewMessage,
        created_at: float,
    ) -> None:
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )
