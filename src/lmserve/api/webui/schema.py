"""The conversations database file: opening it safely, its schema and migrations.

- **Never loses the user's file.** Before anything is written, the file is checked: a file
  that is not SQLite, a damaged database, another program's database (its
  ``PRAGMA application_id`` is not ours and it has tables) or one from a newer lmserve
  (``PRAGMA user_version`` beyond ours) raises :class:`StoreUnusable`, which says why, and
  the file is left exactly as it was. Nothing here deletes or replaces a file.
- **Versioned.** ``user_version`` is the number of :data:`MIGRATIONS` applied; each step runs
  in one transaction with the version bump, so a failed step leaves the previous version.
- **Atomic.** :func:`transaction` wraps every change (``BEGIN IMMEDIATE``: writers queue
  behind each other, across processes too, up to :data:`BUSY_TIMEOUT`). WAL mode lets
  readers go on while one writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

APPLICATION_ID = 0x6C6D7376  # "lmsv": marks the file as lmserve's (PRAGMA application_id)
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another's transaction

# Step n takes the schema from version n to n + 1. Append; never change a released step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            settings TEXT NOT NULL,  -- JSON object: protocol.ChatSettings
            current_leaf TEXT,       -- the message whose path the page shows
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            id TEXT NOT NULL,
            seq INTEGER NOT NULL,    -- the order in which the messages were written
            parent_id TEXT,          -- NULL: a first message
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            reasoning_content TEXT,
            tool_calls TEXT,         -- JSON array, or NULL
            meta TEXT NOT NULL,      -- JSON object: model, request id, stats, rendered prompt
            created_at REAL NOT NULL,
            PRIMARY KEY (conversation_id, id),
            UNIQUE (conversation_id, seq),
            FOREIGN KEY (conversation_id, parent_id) REFERENCES messages (conversation_id, id)
                ON DELETE CASCADE
        )""",
        "CREATE INDEX conversations_by_update ON conversations (updated_at DESC)",
    ),
    (
        # Images the user attached (webui/images.py): their bytes once per conversation, out
        # of the messages' rows, so that listing or opening a conversation reads none.
        """CREATE TABLE images (
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            id TEXT NOT NULL,          -- the SHA-256 of data, in hex
            media_type TEXT NOT NULL,  -- image/png, image/jpeg, image/webp, image/gif, image/bmp
            data BLOB NOT NULL,
            PRIMARY KEY (conversation_id, id)
        )""",
        # JSON array of the message's images in order ({id, media_type, size}), or NULL.
        "ALTER TABLE messages ADD COLUMN images TEXT",
    ),
    (
        # The MCP calls the server ran for an answer (protocol.McpCall), JSON array, or NULL.
        "ALTER TABLE messages ADD COLUMN mcp_calls TEXT",
        # Two new settings (protocol.ChatSettings): every conversation spells them out, so
        # what the page reads back is the shape it writes.
        """UPDATE conversations SET settings = json_set(
            settings, '$.mcp_servers', json_array(), '$.tool_choice', json('null'))
           WHERE json_valid(settings) AND json_type(settings) = 'object'""",
    ),
)


class StoreUnusable(Exception):
    """The database file cannot be used as it is; it was left untouched."""


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction: committed if the block ends normally, rolled back if it raises."""
    conn.execute(begin)
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite ends some failed transactions by itself
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_database(
    path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS
) -> sqlite3.Connection:
    """A connection to the database at ``path``, checked and migrated (created if absent);
    :class:`StoreUnusable` if the file cannot be used as it is."""
    _check_file(path)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise _unusable(path, f"could not be opened ({exc})") from exc
    try:
        _check_contents(path, conn, len(migrations))
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(path, conn, migrations)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _unusable(path, f"is damaged ({exc})") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _unusable(path: Path, why: str) -> StoreUnusable:
    return StoreUnusable(
        f"The conversations database {path} {why}. lmserve left it as it is; move it away (or "
        "restore a backup) to keep conversations again. The rest of the server works meanwhile."
    )


def _check_file(path: Path) -> None:
    """Read the first bytes ourselves: SQLite would take any file for an empty one at first."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not path.is_file():
        raise _unusable(path, "is not a file")
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise _unusable(path, "is not a SQLite database: it is damaged or another kind of file")


def _check_contents(path: Path, conn: sqlite3.Connection, known: int) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _unusable(path, f"is damaged ({problems[0]})")
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if application_id != APPLICATION_ID and (application_id != 0 or objects):
        raise _unusable(path, "belongs to another program (it is not an lmserve database)")
    if version > known:
        raise _unusable(
            path,
            f"was written by a newer lmserve (schema version {version}; this one knows up to "
            f"{known})",
        )


def _migrate(path: Path, conn: sqlite3.Connection, migrations: Sequence[Sequence[str]]) -> None:
    while True:
        with transaction(conn):
            # Read inside the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= len(migrations):
                return
            try:
                for statement in migrations[version]:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise _unusable(
                    path, f"could not be upgraded to schema version {version + 1} ({exc})"
                ) from exc
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {version + 1}")
