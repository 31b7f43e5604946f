"""Stored responses: what ``previous_response_id`` continues and ``input_items`` lists.

Kept in memory, the most recently used :data:`STORE_CAPACITY` of them; a restart forgets them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from fastapi import Request

from lmserve.api.errors import NotFoundError
from lmserve.api.responses_output import function_call_item, new_item_id, output_text
from lmserve.api.responses_protocol import InputItem

STORE_CAPACITY = 1000


@dataclass
class StoredResponse:
    response: dict[str, Any]
    # Input and output items up to and including this response: the next turn's history.
    conversation: list[InputItem]
    # The same conversation as OpenAI lists it, every item with an id: the inputs that made
    # this response (earlier turns included), then its output.
    input_items: list[dict[str, Any]]
    output_items: list[dict[str, Any]]

    @property
    def items(self) -> list[dict[str, Any]]:
        return [*self.input_items, *self.output_items]


V = TypeVar("V")


class LRUStore(Generic[V]):
    """The most recently used values, by id (least recently used ones are forgotten)."""

    def __init__(self, capacity: int = STORE_CAPACITY) -> None:
        self.capacity = capacity
        self._values: OrderedDict[str, V] = OrderedDict()

    def continued(self, previous_id: str) -> V:
        """What a request's ``previous_response_id`` continues; a 404 if it is not kept."""
        found = self.get(previous_id)
        if found is None:
            raise NotFoundError(
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return found

    def get(self, response_id: str) -> V | None:
        stored = self._values.get(response_id)
        if stored is not None:
            self._values.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: V) -> None:
        self._values[response_id] = stored
        self._values.move_to_end(response_id)
        while len(self._values) > self.capacity:
            self._values.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._values.pop(response_id, None) is not None


class ResponseStore(LRUStore[StoredResponse]):
    """Stored Responses API responses."""


def response_store(request: Request) -> ResponseStore:
    return request.app.state.responses  # type: ignore[no-any-return]


def response_not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found.", param=param, code="response_not_found"
    )


def public_item(item: InputItem) -> dict[str, Any]:
    """An input item as the API lists it back: with an id, text in typed content parts."""
    if item.type == "message":
        kind = "output_text" if item.role == "assistant" else "input_text"
        content = item.content or ""
        if isinstance(content, str):
            parts = [output_text(content) if kind == "output_text" else _input_text(content)]
        else:
            parts = [part.model_dump() for part in content]
        return {
            "type": "message",
            "id": new_item_id("msg"),
            "status": "completed",
            "role": item.role,
            "content": parts,
        }
    if item.type == "function_call":
        assert item.call_id is not None and item.name is not None  # the model checks them
        return function_call_item(new_item_id("fc"), item.call_id, item.name, item.arguments)
    if item.type == "function_call_output":
        output = (
            item.output
            if isinstance(item.output, str)
            else [part.model_dump() for part in item.output or []]
        )
        return {
            "type": "function_call_output",
            "id": new_item_id("fco"),
            "call_id": item.call_id,
            "output": output,
            "status": "completed",
        }
    return {"type": "reasoning", "id": new_item_id("rs"), "summary": []}


def _input_text(text: str) -> dict[str, Any]:
    return {"type": "input_text", "text": text}


def item_page(
    items: list[dict[str, Any]],
    *,
    limit: int,
    order: Literal["asc", "desc"],
    after: str | None,
    before: str | None,
) -> dict[str, Any]:
    """One page of ``items`` (oldest first) in OpenAI's list shape, cursors by item id."""
    ordered = items if order == "asc" else items[::-1]
    ids = [item["id"] for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    window = ordered[start:end]
    data = window[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(window) > limit,
    }
