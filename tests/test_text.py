"""Stop strings across pieces, UTF-8 across tokens, BOS once (pure logic)."""

from __future__ import annotations

from pathlib import Path

from lmserve.engine.llama import drop_doubled_bos
from lmserve.engine.text import StopMatcher, Utf8Assembler
from tests.helpers import vocabulary


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


def test_stop_inside_one_piece() -> None:
    assert feed_all(StopMatcher(["END"]), ["abc", "xENDy", "more"]) == ("abcx", True)


def test_stop_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["<stop>"])
    emitted = []
    for piece in ["hello <", "st", "op> world"]:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "hello "
    assert all("<" not in part for part in emitted)


def test_false_start_is_released() -> None:
    assert feed_all(StopMatcher(["abc"]), ["xa", "b", "d"]) == ("xabd", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["world", "lo w"]), ["hello world"]) == ("hel", True)


def test_no_stops_passes_through() -> None:
    assert StopMatcher([]).feed("anything") == ("anything", False)


def test_utf8_split_across_tokens() -> None:
    data = "héllo 🌊".encode()
    assembler = Utf8Assembler()
    out = "".join(assembler.feed(data[i : i + 1]) for i in range(len(data)))
    assert out + assembler.flush() == "héllo 🌊"


def test_doubled_bos_is_dropped_once() -> None:
    assert drop_doubled_bos([1, 1, 5, 6], bos_id=1) == [1, 5, 6]
    assert drop_doubled_bos([1, 5, 1], bos_id=1) == [1, 5, 1]
    assert drop_doubled_bos([5, 6], bos_id=1) == [5, 6]


def test_bos_is_not_doubled_for_a_model_that_adds_it(gemma_model_file: Path) -> None:
    gemma = vocabulary(gemma_model_file)
    assert gemma.add_bos
    bos = gemma.token_text(gemma.bos_id)
    # The template wrote BOS; llama.cpp would add another.
    assert gemma.tokenize(bos + "hi", add_special=True)[:2] == [gemma.bos_id] * 2
    tokens = gemma.tokenize_prompt(bos + "hi")
    assert tokens[0] == gemma.bos_id and tokens[1] != gemma.bos_id
    assert gemma.tokenize_prompt("hi")[0] == gemma.bos_id  # and added when it did not


class _Handle:
    """A request's stand-in: it collects what the sequence publishes."""

    def __init__(self, request: object) -> None:
        self.request = request
        self.cancelled = False
        self.events: list[object] = []

    def publish(self, event: object) -> None:
        self.events.append(event)


def _run(model: object, text: str, **request: object) -> tuple[str | None, object, str]:
    from lmserve.engine.sequence import Sequence
    from lmserve.engine.types import Finished, GenerationRequest, TextDelta

    handle = _Handle(GenerationRequest(prompt_tokens=[1], **request))  # type: ignore[arg-type]
    sequence = Sequence.create(model, handle, seed=1)  # type: ignore[arg-type]
    reason = None
    for token in model.tokenize(text, add_special=False, parse_special=False):  # type: ignore[attr-defined]
        reason = sequence.accept(model, token, 0.0)  # type: ignore[arg-type]
        if reason is not None:
            break
    sequence.finish(reason or "eosFound")
    finished = next(e for e in handle.events if isinstance(e, Finished))
    shown = "".join(e.text for e in handle.events if isinstance(e, TextDelta))
    return reason, finished, shown


def test_turn_end_text_ends_the_turn_unlike_a_stop_string(default_model_file: Path) -> None:
    """ChatML's markers written as text (by a model without a template) end its turn as the
    end-of-generation token would: not a client's stop string, and never shown."""
    model = vocabulary(default_model_file)
    marker = dict(turn_end=("<|im_end|>",), stop=("STOP",))
    reason, finished, shown = _run(model, "Hello there<|im_end|>more", **marker)
    assert reason == "eosFound" and finished.stopped_by is None  # type: ignore[attr-defined]
    assert finished.finish_reason == "stop" and shown == "Hello there"  # type: ignore[attr-defined]
    reason, finished, shown = _run(model, "Hello STOP more", **marker)
    assert reason == "stopStringFound" and finished.stopped_by == "STOP"  # type: ignore[attr-defined]
    assert shown == "Hello "
