"""Prefix-affinity routing, as a Ray Serve request router.

A request's prompt is cut into blocks of :data:`BLOCK_TOKENS` tokens; each block is named by a
hash of the prompt up to its end (:func:`prefix_keys`), so two prompts share a key exactly
when they share that many first tokens.  The router remembers which replica each key was last
sent to.  A request goes to the replica holding its longest remembered prefix, unless that
replica is saturated (a request in flight for each of its slots); else, and for a prefix no
replica holds, to the least loaded replica, and among equally loaded ones to the one that got
a request least recently, so distinct conversations spread over the replicas even when they
arrive one at a time.  Only generations count: the engine's short calls (tokenizing, a
snapshot) go to the least loaded replica and leave no trace.  A call that names its replica
(``replica=``: a cancel for the request it runs) goes there.  The router lives in the process
that holds the deployment's handle (lmserve's server), which sees every request.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

BLOCK_TOKENS = 64  # tokens per prefix block: a request shorter than one has no key
MAX_KEYS = 100_000  # keys remembered, least recently used forgotten first


def prefix_keys(tokens: Sequence[int], block: int = BLOCK_TOKENS) -> list[str]:
    """The keys of a prompt's whole blocks, shortest prefix first."""
    keys = []
    digest = hashlib.blake2b(digest_size=12)
    for start in range(0, len(tokens) - block + 1, block):
        chunk = tokens[start : start + block]
        digest.update(b"".join(token.to_bytes(4, "little", signed=True) for token in chunk))
        keys.append(digest.copy().hexdigest())
    return keys


def keys_of(pending: PendingRequest | None) -> list[str]:
    """The prefix keys a request carries (its call's ``prefix`` keyword)."""
    if pending is None:
        return []
    keys = pending.kwargs.get("prefix")
    return list(keys) if isinstance(keys, list) else []


class PrefixAffinityRouter(RequestRouter):
    """See the module's docstring."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._slots = int(kwargs.get("slots", 1))  # a replica's slots: saturated beyond
        self._owner: OrderedDict[str, ReplicaID] = OrderedDict()  # prefix key -> replica
        self._in_flight: dict[ReplicaID, int] = {}
        self._last_routed: dict[ReplicaID, int] = {}
        self._clock = itertools.count(1)
        self._routed: dict[str, ReplicaID] = {}  # request id -> the replica it was sent to

    def _load(self, replica: RunningReplica) -> int:
        """Generations in flight on ``replica``: this router sends them all (Serve's queue
        length cache also counts short calls, and lags behind)."""
        return self._in_flight.get(replica.replica_id, 0)

    def _saturated(self, replica: RunningReplica) -> bool:
        return self._load(replica) >= self._slots

    def _holder(self, keys: list[str], candidates: dict[ReplicaID, RunningReplica]) -> Any:
        for key in reversed(keys):  # the longest prefix first
            owner = self._owner.get(key)
            if owner is not None and owner in candidates:
                return candidates[owner]
        return None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        pinned = pending_request.kwargs.get("replica") if pending_request is not None else None
        if pinned is not None:
            return [[by_id[pinned]]] if pinned in by_id else [candidate_replicas]
        keys = keys_of(pending_request)
        ranks: list[list[RunningReplica]] = []
        holder = self._holder(keys, by_id)
        if holder is not None and not self._saturated(holder):
            ranks.append([holder])
        others = sorted(
            (replica for replica in candidate_replicas if replica is not holder),
            key=lambda r: (self._load(r), self._last_routed.get(r.replica_id, 0)),
        )
        # One replica per rank: Serve tries the first, and takes the next only if the first
        # is full, so the least loaded is the one chosen, not one of two at random.
        ranks += [[replica] for replica in others]
        if holder is not None and ranks[0][0] is not holder:
            ranks.append([holder])  # saturated: still a place, last
        if pending_request is not None and pending_request.metadata.call_method == "generate":
            self._routing(pending_request.metadata.internal_request_id, ranks[0][0], keys)
        return ranks

    def _routing(self, request_id: str, replica: RunningReplica, keys: list[str]) -> None:
        """Count the request on the replica it is about to go to (Serve tells a router which
        one it went to only under its strict queue limits), and remember its prefix there."""
        replica_id = replica.replica_id
        previous = self._routed.get(request_id)
        if previous is not None:  # routed again (its first choice was full)
            self._in_flight[previous] = max(0, self._in_flight.get(previous, 0) - 1)
        self._routed[request_id] = replica_id
        self._in_flight[replica_id] = self._in_flight.get(replica_id, 0) + 1
        self._last_routed[replica_id] = next(self._clock)
        for key in keys:
            self._owner[key] = replica_id
            self._owner.move_to_end(key)
        while len(self._owner) > MAX_KEYS:
            self._owner.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        counted = self._routed.pop(internal_request_id, None)
        if counted is not None:
            self._in_flight[counted] = max(0, self._in_flight.get(counted, 0) - 1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._in_flight.pop(replica_id, None)
        for key in [key for key, owner in self._owner.items() if owner == replica_id]:
            del self._owner[key]


class RandomRouter(RequestRouter):
    """Each generation to a replica picked at random, whatever it holds or runs: the
    baseline ``bench/replicas.py`` measures prefix affinity against (``--replica-routing
    random``).  Serve's own default prefers the replica on the caller's node, which on one
    head node is no spread at all.  Calls that name a replica still go to it."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        pinned = pending_request.kwargs.get("replica") if pending_request is not None else None
        if pinned is not None and pinned in by_id:
            return [[by_id[pinned]]]
        shuffled = random.sample(candidate_replicas, len(candidate_replicas))
        return [[replica] for replica in shuffled]
