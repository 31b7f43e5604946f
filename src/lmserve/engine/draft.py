"""Draft models: a smaller model of the same vocabulary proposes the next tokens, the model
being served checks them all in one step (LM Studio's ``draft_model``).

The draft runs in the target's worker process, with a context of its own holding one KV stream
per slot of the target's; each stream mirrors what the target has accepted so far, and is
brought up to date before each draft (only the tokens it lacks are decoded).  The draft picks
greedily: a fixed proposal, checked by sampling from the target as without it (see
:mod:`lmserve.engine.speculative`), so the output distribution is the target's alone.
"""

from __future__ import annotations

import numpy as np

from lmserve.engine.llama import ContextConfig, LlamaContext, LlamaModel
from lmserve.engine.speculative import DraftRequest
from lmserve.engine.tokens import common_prefix_length
from lmserve.engine.types import DraftModelError


def check_same_vocabulary(target: LlamaModel, draft: LlamaModel) -> None:
    """Raise :class:`DraftModelError` unless every token id means the same text in both."""
    if target.n_vocab != draft.n_vocab:
        raise DraftModelError(
            f"its vocabulary has {draft.n_vocab} tokens, the model's has {target.n_vocab}"
        )
    for token in range(target.n_vocab):
        if target.token_text(token) != draft.token_text(token):
            raise DraftModelError(
                f"token {token} is {draft.token_text(token)!r} in it but "
                f"{target.token_text(token)!r} in the model"
            )


class DraftModel:
    """A draft model loaded beside the target, with one KV stream per target slot."""

    def __init__(
        self, name: str, path: str, target: LlamaModel, config: ContextConfig, *, repack: bool
    ) -> None:
        self.name = name
        self.path = path
        self.model = LlamaModel(path, n_gpu_layers=0, repack=repack)
        try:
            check_same_vocabulary(target, self.model)
            self.context = LlamaContext(self.model, config)
        except BaseException:
            self.model.close()
            raise
        self._held: list[list[int]] = [[] for _ in range(config.n_slots)]

    def propose(self, requests: list[DraftRequest]) -> dict[int, list[int]]:
        """Greedy drafts of ``count`` tokens following each request's history, by slot."""
        ctx, n_batch = self.context, self.context.n_batch
        drafts: dict[int, list[int]] = {}
        active: list[DraftRequest] = []
        for request in requests:
            held = self._held[request.seq]
            # Keep what the stream shares with the history, but decode at least its last
            # token again: its logits give the first draft token.
            keep = min(common_prefix_length(held, request.history), len(request.history) - 1)
            if keep < len(held) and not ctx.forget(request.seq, keep):
                ctx.forget(request.seq, 0)
                keep = 0
            del held[keep:]
            missing = request.history[keep:-1]
            for start in range(0, len(missing), n_batch):  # catch up: no logits needed
                ctx.clear_batch()
                for token in missing[start : start + n_batch]:
                    ctx.add(token, len(held), request.seq, False)
                    held.append(token)
                if ctx.decode() != 0:
                    self._reset(request.seq)
                    break
            else:
                drafts[request.seq] = []
                active.append(request)
        while active:
            ctx.clear_batch()
            rows = []
            for request in active:
                draft, held = drafts[request.seq], self._held[request.seq]
                token = draft[-1] if draft else request.history[-1]
                rows.append(ctx.add(token, len(held), request.seq, True))
                held.append(token)
            if ctx.decode() != 0:
                for request in active:
                    self._reset(request.seq)
                break
            still = []
            for request, row in zip(active, rows, strict=True):
                draft = drafts[request.seq]
                draft.append(int(np.argmax(ctx.logits(row))))
                if len(draft) < request.count:
                    still.append(request)
            active = still
        return drafts

    def _reset(self, seq: int) -> None:
        self.context.forget(seq, 0)
        self._held[seq].clear()

    def close(self) -> None:
        self.context.close()
        self.model.close()
