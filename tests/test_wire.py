"""The server reads its worker's messages in pieces of whatever size the socket gives."""

from __future__ import annotations

import os
import pickle
import random
import socket
import struct
import threading
from multiprocessing.connection import Connection

from lmserve.engine.wire import MessageReader


def framed_by_multiprocessing(messages: list[object]) -> bytes:
    """The bytes ``Connection.send`` writes for ``messages``, as the worker sends them."""
    ours, theirs = socket.socketpair()
    sender = Connection(os.dup(theirs.fileno()))
    theirs.close()

    def send_all() -> None:  # in a thread: the socket's buffer holds less than they take
        for message in messages:
            sender.send(message)

    writer = threading.Thread(target=send_all)
    writer.start()
    stream = bytearray()
    length = sum(4 + len(pickle.dumps(m)) for m in messages)  # 4-byte length, then the pickle
    while len(stream) < length:
        stream += ours.recv(1 << 20)
    writer.join()
    sender.close()
    ours.close()
    return bytes(stream)


def test_messages_split_anywhere_come_out_whole_and_in_order() -> None:
    rng = random.Random(7)
    messages: list[object] = [
        ("events", [(n, "x" * rng.randrange(0, 40_000))], 1, 0) for n in range(40)
    ]
    stream = framed_by_multiprocessing(messages)
    reader = MessageReader()
    received = []
    start = 0
    while start < len(stream):
        size = rng.choice([1, 3, 4, 5, 100, 20_000, 70_000])
        received += reader.feed(stream[start : start + size])
        start += size
    assert received == messages


def test_the_long_length_form_and_several_messages_in_one_read() -> None:
    big, small = ("reply", 1, True, "y" * 10), ("events", [], 0, 0)
    body = pickle.dumps(big)
    data = struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body
    data += framed_by_multiprocessing([small, small])
    reader = MessageReader()
    assert reader.feed(data[:7]) == []  # the 8-byte length is not whole yet
    assert reader.feed(data[7:]) == [big, small, small]
    assert reader.feed(b"") == []
