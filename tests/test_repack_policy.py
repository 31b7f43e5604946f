"""The self-check's decision logic, with stand-in workers that crash on purpose.

Unit tests of logic: which loads are tried in which order, what is cached, what the user is
told.  The real worker processes and the real model are in test_engine_isolation.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmserve.engine.types import WorkerStartError
from lmserve.models.repack import VerdictCache, start_checked, verdict_facts, verdict_key

FACTS = {"cpu": "c0ffee", "llama_cpp": "0.3.36", "quantization": "Q4_1", "gpu": "auto"}
SEGV = WorkerStartError("the engine process was killed by signal SIGSEGV", crashed=True)


class Starter:
    """Records each start(repack, self_check); fails the ones ``outcomes`` says to."""

    def __init__(self, outcomes: dict[bool, WorkerStartError | None]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[bool, bool]] = []

    def __call__(self, repack: bool, self_check: bool) -> str:
        self.calls.append((repack, self_check))
        error = self.outcomes.get(repack)
        if error is not None:
            raise error
        return f"worker(repack={repack})"


def cache(tmp_path: Path) -> VerdictCache:
    return VerdictCache(tmp_path / "selfcheck.json")


def test_a_crash_with_repacking_on_retries_with_it_off_and_caches_that(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    start = Starter({True: SEGV})
    worker, choice = start_checked("auto", verdicts, FACTS, start)
    assert worker == "worker(repack=False)"
    assert start.calls == [(True, True), (False, True)]
    assert not choice.enabled and choice.setting == "auto"
    assert "SIGSEGV" in choice.reason and "repacking on" in choice.reason
    assert verdicts.get(verdict_key(FACTS)) == (False, choice.reason)

    # The next load follows the verdict: no trial with repacking on, no self-check.
    again = Starter({True: SEGV})
    worker, choice = start_checked("auto", verdicts, FACTS, again)
    assert worker == "worker(repack=False)" and again.calls == [(False, False)]
    assert not choice.enabled and "cached" in choice.reason


def test_a_passing_self_check_keeps_repacking_on(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    start = Starter({})
    worker, choice = start_checked("auto", verdicts, FACTS, start)
    assert worker == "worker(repack=True)" and start.calls == [(True, True)]
    assert choice.enabled and "passed" in choice.reason
    assert verdicts.get(verdict_key(FACTS)) == (True, choice.reason)


def test_the_verdict_is_per_cpu_build_and_quantization(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    start_checked("auto", verdicts, FACTS, Starter({True: SEGV}))
    for changed in ({"cpu": "other"}, {"llama_cpp": "0.4"}, {"quantization": "Q8_0"}):
        start = Starter({})
        start_checked("auto", verdicts, {**FACTS, **changed}, start)
        assert start.calls == [(True, True)], changed  # decided afresh


def test_both_failing_names_both_attempts_and_caches_nothing(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    abort = WorkerStartError("llama.cpp aborted on a malformed file (x)", crashed=True)
    with pytest.raises(WorkerStartError) as raised:
        start_checked("auto", verdicts, FACTS, Starter({True: SEGV, False: abort}))
    message = str(raised.value)
    assert "SIGSEGV" in message and "repacking on" in message
    assert "malformed" in message and "with it off" in message
    assert verdicts.get(verdict_key(FACTS)) is None

    with pytest.raises(WorkerStartError, match="tried with weight repacking on and off"):
        start_checked("auto", verdicts, FACTS, Starter({True: abort, False: abort}))


def test_a_clean_load_error_is_not_retried(tmp_path: Path) -> None:
    unreadable = WorkerStartError("llama.cpp cannot read it (corrupt, truncated or unsupported)")
    start = Starter({True: unreadable, False: unreadable})
    with pytest.raises(WorkerStartError, match="cannot read"):
        start_checked("auto", cache(tmp_path), FACTS, start)
    assert start.calls == [(True, True)]


def test_a_failed_self_check_without_a_crash_is_retried(tmp_path: Path) -> None:
    failed = WorkerStartError("the self-check failed: llama_decode failed", self_check=True)
    start = Starter({True: failed})
    _, choice = start_checked("auto", cache(tmp_path), FACTS, start)
    assert start.calls == [(True, True), (False, True)] and not choice.enabled


def test_forced_settings_are_obeyed_and_say_so(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    start = Starter({})
    _, choice = start_checked("off", verdicts, FACTS, start)
    assert start.calls == [(False, True)] and not choice.enabled and "--repack off" in choice.reason
    start = Starter({True: SEGV})
    with pytest.raises(WorkerStartError, match=r"SIGSEGV.*--repack on"):
        start_checked("on", verdicts, FACTS, start)
    assert start.calls == [(True, True)]  # no fallback when the user forced it
    assert verdicts.get(verdict_key(FACTS)) is None  # forced loads decide nothing for auto


def test_a_cached_verdict_that_crashes_is_checked_again(tmp_path: Path) -> None:
    verdicts = cache(tmp_path)
    start_checked("auto", verdicts, FACTS, Starter({}))  # cached: repacking works
    start = Starter({True: SEGV})
    worker, _choice = start_checked("auto", verdicts, FACTS, start)
    assert start.calls == [(True, False), (True, True), (False, True)]
    assert worker == "worker(repack=False)" and verdicts.get(verdict_key(FACTS))[0] is False


def test_an_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "selfcheck.json").write_text("{not json")
    verdicts = cache(tmp_path)
    start_checked("auto", verdicts, FACTS, Starter({}))
    assert verdicts.get(verdict_key(FACTS)) is not None


def test_facts_name_this_machine() -> None:
    facts = verdict_facts("Q4_1", "auto")
    assert set(facts) == {"cpu", "llama_cpp", "quantization", "gpu"}
    assert facts["quantization"] == "Q4_1" and len(facts["cpu"]) == 16
