"""The conversations database on its own: schema versions and migrations, files it must refuse
(and leave as they were), concurrent writers, all-or-nothing imports."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmserve.api.webui.protocol import (
    ConversationUpdate,
    ExportFile,
    NewConversation,
    NewMessage,
)
from lmserve.api.webui.schema import APPLICATION_ID, MIGRATIONS, StoreUnusable, open_database
from lmserve.api.webui.store import BadReference, ConversationDB, NotFound
from tests.vision_assets import data_url, image_bytes


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pragma(path: Path, name: str) -> int:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[ConversationDB]:
    store = ConversationDB(tmp_path / "conversations.sqlite3")
    yield store
    store.close()


def test_a_new_file_is_created_at_the_latest_version_and_marked_as_ours(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "conversations.sqlite3"
    store = ConversationDB(path)
    assert store.summaries() == []
    store.close()
    assert pragma(path, "user_version") == len(MIGRATIONS)
    assert pragma(path, "application_id") == APPLICATION_ID


def test_an_empty_file_is_taken_as_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    path.touch()  # what `touch` or a crash before the first write leaves
    store = ConversationDB(path)
    store.create(NewConversation(title="first"))
    assert [c["title"] for c in store.summaries()] == ["first"]
    store.close()


def test_messages_form_a_tree_and_the_newest_is_the_current_leaf(db: ConversationDB) -> None:
    conversation = db.create(NewConversation(title="t"))
    ident = conversation["id"]
    question = db.add_message(ident, NewMessage(role="user", content="Hi"))
    first = db.add_message(
        ident, NewMessage(role="assistant", content="A", parent_id=question["id"])
    )
    second = db.add_message(
        ident, NewMessage(role="assistant", content="B", parent_id=question["id"])
    )
    stored = db.get(ident)
    assert stored["current_leaf"] == second["id"]
    assert [m["content"] for m in stored["messages"]] == ["Hi", "A", "B"]
    assert {m["parent_id"] for m in stored["messages"][1:]} == {question["id"]}
    switched = db.update(ident, ConversationUpdate(current_leaf=first["id"]))
    assert switched["current_leaf"] == first["id"]
    other = db.create(NewConversation())
    with pytest.raises(BadReference):  # a parent from another conversation
        db.add_message(other["id"], NewMessage(role="user", content="x", parent_id=first["id"]))
    with pytest.raises(BadReference):
        db.update(other["id"], ConversationUpdate(current_leaf=first["id"]))
    db.delete(ident)
    with pytest.raises(NotFound):
        db.get(ident)
    with closing(
        sqlite3.connect(db.path, isolation_level=None)
    ) as conn:  # the messages went with it
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_a_later_migration_upgrades_a_file_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    old = ConversationDB(path)
    ident = old.create(NewConversation(title="kept"))["id"]
    old.add_message(ident, NewMessage(role="user", content="still here"))
    old.close()
    step = ("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",)
    upgraded = ConversationDB(path, migrations=(*MIGRATIONS, step))
    assert upgraded.get(ident)["messages"][0]["content"] == "still here"
    upgraded.close()
    assert pragma(path, "user_version") == len(MIGRATIONS) + 1
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("SELECT pinned FROM conversations").fetchall() == [(0,)]


def test_a_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    old = ConversationDB(path)
    ident = old.create(NewConversation(title="kept"))["id"]
    old.close()
    # The first statement would succeed; the second fails: neither may stay.
    step = ("CREATE TABLE half_done (x)", "ALTER TABLE no_such_table ADD COLUMN y")
    broken = ConversationDB(path, migrations=(*MIGRATIONS, step))
    with pytest.raises(
        StoreUnusable, match=f"could not be upgraded to schema version {len(MIGRATIONS) + 1}"
    ):
        broken.summaries()
    assert pragma(path, "user_version") == len(MIGRATIONS)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables
    again = ConversationDB(path)
    assert again.get(ident)["title"] == "kept"
    again.close()


def write_foreign_database(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('precious')")


def write_newer_database(path: Path) -> None:
    store = ConversationDB(path)
    store.summaries()
    store.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")


def write_damaged_database(path: Path) -> None:
    store = ConversationDB(path)
    ident = store.create(NewConversation(title="x"))["id"]
    for n in range(300):
        store.add_message(ident, NewMessage(role="user", content=f"message {n} " * 20))
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    # Keep the header (it looks like SQLite), scramble the pages after the first.
    data[page : page * 4] = bytes((i * 7) % 251 for i in range(page * 3))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_text("my shopping list\n"), "is not a SQLite database"),
        (lambda p: p.write_bytes(b"\x00\x01binary" * 100), "is not a SQLite database"),
        (write_foreign_database, "belongs to another program"),
        (write_newer_database, "was written by a newer lmserve"),
        (write_damaged_database, "is damaged"),
        (lambda p: p.mkdir(), "is not a file"),
    ],
    ids=["text", "binary", "foreign", "newer", "damaged", "folder"],
)
def test_a_file_that_is_not_ours_is_refused_and_left_as_it_was(
    tmp_path: Path, make, reason: str
) -> None:
    path = tmp_path / "conversations.sqlite3"
    make(path)
    before = digest(path) if path.is_file() else None
    store = ConversationDB(path)
    for call in (store.summaries, lambda: store.create(NewConversation())):
        with pytest.raises(StoreUnusable) as refused:
            call()
        message = str(refused.value)
        assert reason in message and str(path) in message and "left it as it is" in message
    if before is not None:
        assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversations.sqlite3"]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Two connections (as two servers, or two threads) adding to one conversation at once:
    every message is kept, each with its own place in the order."""
    path = tmp_path / "conversations.sqlite3"
    first = ConversationDB(path)
    ident = first.create(NewConversation())["id"]
    first.close()
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        store = ConversationDB(path)
        try:
            for n in range(40):
                store.add_message(ident, NewMessage(role="user", content=f"{name}{n}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = ConversationDB(path)
    messages = store.get(ident)["messages"]
    store.close()
    assert sorted(m["content"] for m in messages) == sorted(
        f"{name}{n}" for name in "abc" for n in range(40)
    )
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM messages ORDER BY seq")]
    assert seqs == list(range(1, 121))


def test_an_import_is_all_or_nothing_and_never_replaces(db: ConversationDB) -> None:
    ident = db.create(NewConversation(title="mine"))["id"]
    question = db.add_message(ident, NewMessage(role="user", content="Q"))
    db.add_message(ident, NewMessage(role="assistant", content="A", parent_id=question["id"]))
    exported = db.export()
    created = db.import_file(ExportFile.model_validate(exported))
    assert len(created) == 1 and created[0]["id"] != ident
    copy = db.get(created[0]["id"])
    original = db.get(ident)
    assert [m["content"] for m in copy["messages"]] == ["Q", "A"]
    assert copy["messages"][1]["parent_id"] == copy["messages"][0]["id"]
    assert {m["id"] for m in copy["messages"]}.isdisjoint(m["id"] for m in original["messages"])
    assert copy["current_leaf"] == copy["messages"][1]["id"]
    # A second conversation whose message names a parent it does not hold: nothing at all
    # of this import is kept, not even the first, valid conversation.
    broken = exported["conversations"][0] | {
        "messages": [exported["conversations"][0]["messages"][1]]
    }
    document = ExportFile.model_validate(
        exported | {"conversations": [exported["conversations"][0], broken]}
    )
    with pytest.raises(BadReference) as refused:
        db.import_file(document)
    assert refused.value.param == "conversations[1].messages[0].parent_id"
    assert len(db.summaries()) == 2


# -- images -----------------------------------------------------------------------------------


def test_images_are_kept_once_and_read_only_when_asked_for(db: ConversationDB) -> None:
    png = image_bytes("PNG", seed=1)
    sha = hashlib.sha256(png).hexdigest()  # the id the server's prompt shows, too
    ident = db.create(NewConversation())["id"]
    first = db.add_message(
        ident, NewMessage(role="user", content="What is it?", images=[{"url": data_url(png)}])
    )
    assert first["images"] == [{"id": sha, "media_type": "image/png", "size": len(png)}]
    # An edit keeps the image by its id; sending it again stores nothing new.
    again = db.add_message(ident, NewMessage(role="user", images=[{"id": sha}]))
    db.add_message(ident, NewMessage(role="user", images=[{"url": data_url(png)}]))
    assert again["images"] == first["images"]
    # A conversation read names its images; their bytes come one by one.
    messages = db.get(ident)["messages"]
    assert [m["images"] for m in messages] == [first["images"]] * 3
    assert db.image(ident, sha).data == png
    with closing(sqlite3.connect(db.path, isolation_level=None)) as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    # An export holds the data; its import is a conversation with the same images.
    exported = db.export([ident])
    assert exported["conversations"][0]["messages"][0]["images"] == [{"url": data_url(png)}]
    copy = db.import_file(ExportFile.model_validate(exported))[0]["id"]
    assert db.get(copy)["messages"][1]["images"] == first["images"]
    assert db.image(copy, sha).data == png
    db.delete(ident)
    with pytest.raises(NotFound):
        db.image(ident, sha)


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ({"url": "data:image/png;base64," + base64.b64encode(b"<svg onload=x>").decode()}, "PNG"),
        ({"url": "data:image/png;base64,%%%"}, "base64"),
        ({"url": "https://example.invalid/x.png"}, "data: URL"),
        ({"url": data_url(b"\x89PNG\r\n\x1a\n" + bytes(20 * 2**20))}, "20 MiB"),
        ({"id": "0" * 64}, "no image"),
    ],
    ids=["not-an-image", "bad-base64", "a-link", "too-large", "unknown-id"],
)
def test_what_is_not_a_kept_image_is_refused(
    db: ConversationDB, image: dict[str, str], why: str
) -> None:
    ident = db.create(NewConversation())["id"]
    with pytest.raises(BadReference, match=why) as refused:
        db.add_message(ident, NewMessage(role="user", content="x", images=[image]))
    assert refused.value.param.startswith("images[0]")
    assert db.get(ident)["messages"] == []


def test_only_a_user_message_holds_images() -> None:
    with pytest.raises(ValidationError, match="only a user message"):
        NewMessage(role="assistant", images=[{"url": data_url(image_bytes())}])


def test_a_file_from_before_images_is_upgraded_and_takes_them(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    ident = "conv_1"
    with closing(open_database(path, MIGRATIONS[:1])) as old:  # what lmserve wrote then
        old.execute("INSERT INTO conversations VALUES (?, 't', '{}', 'm1', 1, 1)", (ident,))
        old.execute(
            "INSERT INTO messages VALUES (?, 'm1', 1, NULL, 'user', 'before', NULL, NULL, '{}', 1)",
            (ident,),
        )
    store = ConversationDB(path)
    store.add_message(
        ident, NewMessage(role="user", content="after", images=[{"url": data_url(image_bytes())}])
    )
    messages = store.get(ident)["messages"]
    store.close()
    assert [(m["content"], len(m["images"])) for m in messages] == [("before", 0), ("after", 1)]


def test_a_file_from_before_mcp_is_upgraded_and_keeps_calls(tmp_path: Path) -> None:
    """Schema 3: every conversation's settings spell out the new ones (no MCP server on), and
    an answer keeps the MCP calls the server ran for it."""
    path = tmp_path / "conversations.sqlite3"
    ident = "conv_1"
    with closing(open_database(path, MIGRATIONS[:2])) as old:  # what lmserve wrote then
        old.execute(
            "INSERT INTO conversations VALUES (?, 't', '{\"seed\": 3}', 'm1', 1, 1)", (ident,)
        )
        old.execute(
            "INSERT INTO messages VALUES "
            "(?, 'm1', 1, NULL, 'user', 'before', NULL, NULL, '{}', 1, NULL)",
            (ident,),
        )
    store = ConversationDB(path)
    call = {"server_label": "local", "name": "secret_word", "output": "nonce"}
    store.add_message(
        ident, NewMessage(role="assistant", content="after", parent_id="m1", mcp_calls=[call])
    )
    conversation = store.get(ident)
    store.close()
    assert conversation["settings"] == {"seed": 3, "mcp_servers": [], "tool_choice": None}
    calls = [m["mcp_calls"] for m in conversation["messages"]]
    assert calls[0] is None and calls[1][0]["output"] == "nonce"
