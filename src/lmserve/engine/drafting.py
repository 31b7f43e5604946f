"""Each step's drafts: which generating sequences put guessed tokens in the batch, and which.

:class:`lmserve.engine.speculative.DraftPolicy` decides how much a prompt-lookup draft is
worth; a draft model (:mod:`lmserve.engine.draft`) proposes for the requests that named
it.  This module applies them to the step's slots, so that neither needs to know a slot.
"""

from __future__ import annotations

from lmserve.engine.draft import DraftModel
from lmserve.engine.sequence import Sequence
from lmserve.engine.slots import Slot
from lmserve.engine.speculative import MAX_DRAFT, DraftPolicy, DraftRequest, DraftState


def choose_drafts(
    policy: DraftPolicy,
    busy: list[Slot],
    n_batch: int,
    n_ctx_per_slot: int,
    draft_model: DraftModel | None = None,
) -> None:
    """Give each generating sequence that may draft the draft worth checking this step:
    from ``draft_model`` for the requests that named it, else by prompt lookup as
    ``policy`` judges it worth."""
    generating = [
        s for s in busy if s.sequence is not None and s.sequence.pending_token is not None
    ]
    batch_tokens = len(generating)
    wanted: list[tuple[Sequence, DraftRequest]] = []
    candidates: list[tuple[Sequence, DraftState, list[int]]] = []
    for slot in generating:
        sequence = slot.sequence
        assert sequence is not None
        sequence.draft = []
        state = sequence.drafting
        if state is None:
            continue
        # Room: in the batch, in the slot's context, and within max_tokens (a step gives
        # at most one token more than its draft).
        room = min(n_batch - batch_tokens, n_ctx_per_slot - len(slot.tokens) - 1, MAX_DRAFT)
        limit = sequence.request.max_tokens
        if limit is not None:
            room = min(room, limit - sequence.generated - 1)
        if room <= 0:
            continue
        if draft_model is not None and state.draft_model == draft_model.name:
            state.match = 0
            wanted.append((sequence, DraftRequest(slot.seq, state.lookup.tokens, room)))
            batch_tokens += room
            continue
        draft = state.lookup.draft(room)
        state.match = state.lookup.match
        if not draft:
            continue
        if state.forced:
            sequence.draft = draft
            batch_tokens += len(draft)
        else:
            candidates.append((sequence, state, draft))
    if candidates:
        planned = [(state, len(draft)) for _, state, draft in candidates]
        k, chosen = policy.decide(planned, len(generating))
        for index in chosen:
            sequence, _, draft = candidates[index]
            sequence.draft = draft[:k]
    if wanted and draft_model is not None:
        drafts = draft_model.propose([request for _, request in wanted])
        for sequence, request in wanted:
            sequence.draft = drafts.get(request.seq, [])
