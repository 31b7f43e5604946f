"""Stateful conversations: a turn kept under its response id, continued by a later request.

The Responses API and LM Studio's native chat both work so.  A request names the model, the
new input and maybe ``previous_response_id``; it is served as a chat completion of the whole
conversation, and unless it says ``store: false`` its answer's ``resp_…`` id names the
conversation so far, for the next request to continue.  Each surface keeps its own kind of
history (Responses its items, LM Studio's chat its messages) in its own store, in memory: the
most recently used :data:`STORE_CAPACITY` turns; a restart forgets them.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any, Generic, Protocol, TypeVar

from lmserve.api.common.chat import ChatTurn
from lmserve.api.common.errors import NotFoundError

STORE_CAPACITY = 1000

V = TypeVar("V")


class ConversationStore(Generic[V]):
    """The most recently used turns, by response id (least recently used ones are forgotten)."""

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


class ConversationRequest(Protocol):
    """What the requests of both stateful surfaces carry, under the same names."""

    model: str
    max_output_tokens: int | None
    stream: bool
    store: bool
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repeat_penalty: float | None
    seed: int | None
    ttl: float | None


class ConversationTurn(ChatTurn, Generic[V]):
    """One request of a stateful conversation, served as a chat completion.

    ``previous`` is the kept turn it continues (a 404 if ``previous_response_id`` names none);
    once answered, the surface keeps this turn with :meth:`save` when :attr:`stores`.
    Without a store (``None``) nothing is looked up or kept.
    """

    def __init__(self, body: ConversationRequest, store: ConversationStore[V] | None) -> None:
        super().__init__(f"resp_{secrets.token_hex(24)}")
        self._store = store if body.store else None
        self.previous: V | None = None
        if store is not None and body.previous_response_id is not None:
            self.previous = store.continued(body.previous_response_id)
        self._body = body

    @property
    def stores(self) -> bool:
        return self._store is not None

    def save(self, turn: V) -> None:
        """Keep this turn under its id, for a later ``previous_response_id``."""
        assert self._store is not None, "only a stored turn is saved"
        self._store.put(self.id, turn)

    def chat_fields(self) -> dict[str, Any]:
        """The request's model and sampling settings, as chat request fields."""
        body = self._body
        return {
            "model": body.model,
            "max_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "min_p": body.min_p,
            "repeat_penalty": body.repeat_penalty,
            "seed": body.seed,
            "stream": body.stream,
            "ttl": body.ttl,
            "speculative": body.speculative,
            "draft_model": body.draft_model,
        }
