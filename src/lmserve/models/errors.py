"""What the model layer raises, for the API layer to map onto HTTP answers.

- :class:`ModelNotFound`: no loaded or downloaded model has the name (404).
- :class:`NoModelNamed`: a request names no model, and not exactly one is loaded (400).
- :class:`ModelCapacityError`: the model count or memory limit leaves no room (503).
- :class:`ModelLoadFailed`: llama.cpp could not load the file (500).
- :class:`ModelCrashedError`: the model's engine crashed and waits out its back-off (503).
"""

from __future__ import annotations

from lmserve.models.crashes import CrashRecord


class ModelNotFound(LookupError):
    """No loaded (or, for loading, downloaded) model has this name.

    ``note`` says why, when there is more to say than that: the name is a vision projector's
    (:meth:`lmserve.models.catalog.Catalog.not_a_model`).
    """

    def __init__(self, name: str, known: list[str], note: str | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.known = known
        self.note = note


class NoModelNamed(LookupError):
    """A request names no model, and there is not exactly one loaded model to serve it.

    ``candidates``: the loaded models of the kind asked for (several, or none), called
    ``what`` ("chat model"...); ``loaded``: every loaded model; ``downloaded``: those a request
    could name instead (loaded just in time when ``jit``).
    """

    def __init__(
        self,
        what: str,
        candidates: list[str],
        loaded: list[str],
        downloaded: list[str],
        jit: bool,
    ) -> None:
        self.candidates = candidates
        self.loaded = loaded
        if candidates:
            super().__init__(
                f"No model was named, and {len(candidates)} {what}s are loaded: "
                f"{', '.join(candidates)}. Name one of them."
            )
            return
        if loaded:
            situation = f"no {what} is loaded (loaded: {', '.join(loaded)})"
        else:
            situation = "none is loaded" if downloaded else "none is loaded or downloaded"
        if downloaded and jit:
            advice = f"Name a downloaded one, which loads it ({', '.join(downloaded)})"
        elif downloaded:
            advice = f"Load one with 'lmserve load' (downloaded: {', '.join(downloaded)})"
        else:
            advice = "Download one with 'lmserve get', then load it with 'lmserve load'"
        super().__init__(f"No model was named, and {situation}. {advice}.")


class DraftModelRefused(ValueError):
    """A draft model cannot draft for a model: it is not downloaded (``code``
    ``draft_model_not_found``) or its vocabulary is another (``draft_model_incompatible``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ModelCapacityError(RuntimeError):
    """Loading would exceed the model count or memory limit and nothing can be evicted."""


class ModelLoadFailed(RuntimeError):
    """llama.cpp could not load the file (corrupt, unsupported, out of memory)."""


class ModelCrashedError(RuntimeError):
    """The model's engine crashed and is waiting out its back-off (or was given up on)."""

    def __init__(self, record: CrashRecord) -> None:
        retry = record.retry_in()
        if record.gave_up:
            then = "it is not loaded again by itself: load it with 'lmserve load' to retry"
        else:
            then = f"it will be loaded again in {retry:.0f} s"
        super().__init__(
            f"the model '{record.identifier}' crashed {record.streak} times in a row "
            f"(last: {record.last_reason}); {then}"
        )
        self.record = record
        self.retry_after = None if record.gave_up else max(1, round(retry))
