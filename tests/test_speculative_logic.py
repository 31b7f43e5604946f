"""Unit tests of prompt-lookup drafting and the policy that decides how much to draft.

The tests that speculation keeps outputs the same, with the real model and server, are in
test_speculative.py.
"""

from __future__ import annotations

import random

from lmserve.engine.speculative import MAX_DRAFT, DraftPolicy, PromptLookup, StepCost
from lmserve.engine.types import DraftCounts


def test_lookup_proposes_what_followed_the_last_earlier_occurrence() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3, 4])
    assert lookup.draft(3) == [5, 6, 9]
    assert lookup.draft(100) == [5, 6, 9, 9, 1, 2, 3, 4]  # up to the end of the history
    lookup.append(5)
    assert lookup.draft(2) == [6, 9]


def test_lookup_prefers_the_longest_match_then_the_latest() -> None:
    # "7 8" last continued with 1, but "6 7 8" (longer) continued with 2.
    lookup = PromptLookup([6, 7, 8, 2, 0, 7, 8, 1, 0, 6, 7, 8])
    assert lookup.draft(1) == [2]
    # Of two occurrences of the same n-gram, the later one counts.
    lookup = PromptLookup([4, 5, 1, 4, 5, 2, 4, 5])
    assert lookup.draft(1) == [2]


def test_lookup_never_matches_its_own_end_and_needs_two_tokens() -> None:
    assert PromptLookup([1, 2, 3, 4]).draft(4) == []
    assert PromptLookup([7]).draft(4) == []
    assert PromptLookup([1, 2, 1]).draft(4) == []  # single tokens are not n-grams here
    assert PromptLookup([1, 2, 3, 1, 2]).draft(0) == []


def test_draft_counts_add_up() -> None:
    counts = DraftCounts()
    counts.add(drafted=5, accepted=2, rejected=1)
    counts.add(drafted=3, accepted=3, rejected=0)
    counts.add(drafted=4, accepted=0, rejected=0)  # generation stopped before any was checked
    assert (counts.total, counts.accepted, counts.rejected, counts.ignored) == (12, 5, 1, 6)
    assert counts.accepted + counts.rejected + counts.ignored == counts.total


def test_step_cost_fits_a_line_and_follows_drift() -> None:
    cost = StepCost()
    for _ in range(50):
        for tokens in (1, 2, 5, 9):
            cost.observe(tokens, 0.0046 + 0.0042 * tokens)
    fixed, per_token = cost.line()
    assert abs(fixed - 0.0046) < 1e-6 and abs(per_token - 0.0042) < 1e-6
    for _ in range(2000):  # the machine got twice as slow
        for tokens in (1, 2, 5, 9):
            cost.observe(tokens, 2 * (0.0046 + 0.0042 * tokens))
    fixed, per_token = cost.line()
    assert abs(fixed - 0.0092) < 1e-4 and abs(per_token - 0.0084) < 1e-4


def test_step_cost_before_steps_of_different_sizes() -> None:
    cost = StepCost()
    for _ in range(10):
        cost.observe(1, 0.010)
    fixed, per_token = cost.line()
    assert fixed == per_token and abs(per_token - 0.005) < 1e-12


def _policy_with_cpu_costs() -> DraftPolicy:
    policy = DraftPolicy("auto")
    for _ in range(20):
        for tokens in (1, 2, 5, 8, 9, 17):
            policy.cost.observe(tokens, 0.0046 + 0.0042 * tokens)
    return policy


def test_policy_drafts_long_for_a_sequence_whose_drafts_are_kept() -> None:
    policy = _policy_with_cpu_costs()
    state = policy.start([1, 2, 3], None)
    assert state is not None and not state.forced
    for _ in range(30):
        policy.settle(state, drafted=8, accepted=8, rejected=0)
    assert policy.draft_length(state, generating=1, limit=8) == 8
    # Beside 7 sequences that do not draft, its draft costs llama.cpp a second pass over the
    # weights: not worth it even when every token is kept...
    assert policy.draft_length(state, generating=8, limit=8) == 0
    # ...but when all 8 sequences have such drafts, of the same length, it is.
    k, chosen = policy.plan([(state, 8)] * 8, generating=8)
    assert k > 1 and chosen == list(range(8))
    k, chosen = policy.plan([(state, 8)] * 8, generating=9)  # one does not draft
    assert k > 1 and len(chosen) == 8
    assert policy.plan([(state, 8)], generating=9) == (0, [])  # eight do not


def test_a_sequence_whose_short_drafts_are_all_kept_tries_longer_ones() -> None:
    # Only the first position of a draft has a record: later ones take after it.
    policy = _policy_with_cpu_costs()
    state = policy.start([1, 2, 3], None)
    assert state is not None
    for _ in range(30):
        policy.settle(state, drafted=1, accepted=1, rejected=0)
    assert policy.draft_length(state, generating=1, limit=8) == 8


def test_policy_stops_drafting_when_drafts_fail_and_probes_now_and_then() -> None:
    policy = _policy_with_cpu_costs()
    state = policy.start([1, 2, 3], None)
    assert state is not None
    for _ in range(30):
        policy.settle(state, drafted=4, accepted=0, rejected=1)
    lengths = []
    for _ in range(100):
        length = policy.draft_length(state, generating=1, limit=8)
        lengths.append(length)
        if length:
            policy.settle(state, drafted=length, accepted=0, rejected=1)
    # A probe of one token after 16 steps, then after 32 more (each failure doubles the gap).
    assert [index for index, length in enumerate(lengths) if length] == [15, 47]
    assert max(lengths) == 1


def test_policy_under_load_needs_a_higher_acceptance_rate() -> None:
    policy = _policy_with_cpu_costs()
    state = policy.start([1, 2, 3], None)
    assert state is not None
    chance = random.Random(7)
    for _ in range(200):  # each token kept with probability 0.7, whatever came before
        accepted = 0
        while accepted < 8 and chance.random() < 0.7:
            accepted += 1
        policy.settle(state, drafted=8, accepted=accepted, rejected=int(accepted < 8))
    assert 0 < policy.draft_length(state, generating=1, limit=8) < 8
    assert policy.draft_length(state, generating=16, limit=8) == 0


def test_policy_sees_that_guesses_come_in_runs() -> None:
    """Half the drafts fail at their first token, the rest are kept whole (a passage being
    copied, then not): with the same overall rate as tokens kept one by one at 0.55, long
    drafts pay here and not there."""
    runs, independent = _policy_with_cpu_costs(), _policy_with_cpu_costs()
    in_runs, one_by_one = runs.start([1, 2], None), independent.start([1, 2], None)
    assert in_runs is not None and one_by_one is not None
    chance = random.Random(3)
    for index in range(200):
        whole = index % 2 == 0
        runs.settle(in_runs, drafted=8, accepted=8 if whole else 0, rejected=0 if whole else 1)
        accepted = 0
        while accepted < 8 and chance.random() < 0.55:
            accepted += 1
        independent.settle(one_by_one, drafted=8, accepted=accepted, rejected=int(accepted < 8))
    assert runs.draft_length(in_runs, generating=1, limit=8) == 8
    assert independent.draft_length(one_by_one, generating=1, limit=8) <= 2


def test_policy_tells_drafts_from_long_matches_from_drafts_from_short_ones() -> None:
    """A copied passage matches 4 tokens back and is kept; words that merely recur match 2
    and are not: each kind of draft is judged by its own record, in this sequence and, for a
    new one, across the engine."""
    policy = _policy_with_cpu_costs()
    state = policy.start([1, 2, 3], None)
    assert state is not None
    for _ in range(30):
        state.match = 4
        policy.settle(state, drafted=8, accepted=8, rejected=0)
        state.match = 2
        policy.settle(state, drafted=8, accepted=0, rejected=1)
    for fresh in (state, policy.start([4, 5, 6], None)):
        assert fresh is not None
        fresh.match = 4
        assert policy.draft_length(fresh, generating=1, limit=8) == 8
        fresh.match = 2
        fresh.steps_since_draft = 0  # not due for a probe
        assert policy.draft_length(fresh, generating=1, limit=8) == 0


def test_lookup_says_how_long_its_match_was() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 3, 4])
    assert lookup.draft(2) == [5, 9] and lookup.match == 2  # ...3, 4 matched
    lookup.extend([5, 9])  # now ...3, 4, 5, 9 as before, whose match continues with 3
    assert lookup.draft(1) == [3] and lookup.match == 4
    assert PromptLookup([1, 2, 3]).draft(4) == []


def test_modes_and_the_per_request_switch() -> None:
    assert DraftPolicy("off").start([1, 2], None) is None
    assert DraftPolicy("auto").start([1, 2], False) is None
    forced = DraftPolicy("off").start([1, 2], True)
    assert forced is not None and forced.forced
    on = DraftPolicy("on")
    state = on.start([1, 2], None)
    assert state is not None and state.forced
    for _ in range(30):
        on.settle(state, drafted=4, accepted=0, rejected=1)
    assert on.draft_length(state, generating=8, limit=MAX_DRAFT) == MAX_DRAFT
    assert on.draft_length(state, generating=8, limit=0) == 0


def test_a_named_draft_model_drafts_at_every_step_unless_turned_off() -> None:
    state = DraftPolicy("off").start([1, 2], None, "a-draft")
    assert state is not None and state.forced and state.draft_model == "a-draft"
    assert state.counts.model == "a-draft"
    assert DraftPolicy("auto").start([1, 2], False, "a-draft") is None
    lookup = DraftPolicy("auto").start([1, 2], None)
    assert lookup is not None and lookup.counts.model is None and not lookup.forced
