"""Whether llama.cpp may repack a model's weights on this machine, decided by a self-check.

llama.cpp repacks weights into CPU-specific layouts (AMX tiles, interleaved AVX blocks) unless
told not to (``use_extra_bufts``, ``llama-server --no-repack``).  On some machines those
kernels crash on any real batch.  With ``--repack auto`` a model's worker first loads with
repacking on and runs the self-check (:mod:`lmserve.engine.selfcheck`); if that worker dies
or the check fails, a second worker loads with repacking off.  The verdict is kept in
``$LMSERVE_HOME/selfcheck.json``, keyed by what decides it: the CPU's feature flags, the
llama.cpp build, the model's quantization and the GPU setting, so later loads skip the trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lmserve.engine.types import WorkerStartError

logger = logging.getLogger("lmserve.models")

T = TypeVar("T")


@dataclass(frozen=True)
class RepackChoice:
    """What a load chose, and why, in a sentence a user understands."""

    setting: str  # auto, on or off
    enabled: bool
    reason: str

    def describe(self) -> dict[str, object]:
        return {
            "repack": self.enabled,
            "repack_setting": self.setting,
            "repack_reason": self.reason,
        }


def cpu_flags() -> str:
    """The CPU's feature flags as the kernel reports them (``/proc/cpuinfo``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as info:
        for line in info:
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    return f"{platform.machine()} {platform.processor()}"


def llama_build() -> str:
    """llama-cpp-python's version and its shared libraries (size and time), without loading
    them: a rebuild with another backend or other CPU features is another build."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    parts = [version]
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib = Path(spec.origin).parent / "lib"
        with contextlib.suppress(OSError):
            for library in sorted(lib.iterdir()):
                stat = library.stat()
                parts.append(f"{library.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return " ".join(parts)


def verdict_facts(quantization: str | None, gpu: str) -> dict[str, str]:
    """What decides whether repacked kernels work, for the verdict's key."""
    return {
        "cpu": hashlib.sha256(cpu_flags().encode()).hexdigest()[:16],
        "llama_cpp": hashlib.sha256(llama_build().encode()).hexdigest()[:16],
        "quantization": quantization or "unknown",
        "gpu": gpu,
    }


def verdict_key(facts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


class VerdictCache:
    """Self-check verdicts in a small JSON file, written whole and atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        verdicts = data.get("verdicts") if isinstance(data, dict) else None
        return verdicts if isinstance(verdicts, dict) else {}

    def get(self, key: str) -> tuple[bool, str] | None:
        """(repack works, why) for ``key``, if a self-check has decided it before."""
        with self._lock:
            verdict = self._read().get(key)
        if not isinstance(verdict, dict) or not isinstance(verdict.get("repack"), bool):
            return None
        return bool(verdict["repack"]), str(verdict.get("reason", ""))

    def put(self, key: str, repack: bool, reason: str, facts: dict[str, str]) -> None:
        with self._lock:
            verdicts = self._read()
            verdicts[key] = {
                "repack": repack,
                "reason": reason,
                "facts": facts,
                "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".selfcheck-")
                with os.fdopen(fd, "w") as out:
                    json.dump({"version": 1, "verdicts": verdicts}, out, indent=2)
                os.replace(temporary, self.path)
            except OSError as exc:  # a read-only home costs a self-check per load, no more
                logger.warning("could not save the self-check verdict: %s", exc)


def start_checked(
    setting: str,
    cache: VerdictCache,
    facts: dict[str, str],
    start: Callable[[bool, bool], T],
) -> tuple[T, RepackChoice]:
    """Start a worker with ``start(repack, self_check)`` as ``setting`` says.

    ``on`` and ``off`` are obeyed (the self-check still runs, so a crash is a clear load
    error); ``auto`` follows a cached verdict, else tries repacking on, then off.  Raises
    :class:`WorkerStartError` naming every attempt that failed.
    """
    if setting in ("on", "off"):
        enabled = setting == "on"
        try:
            worker = start(enabled, True)
        except WorkerStartError as exc:
            raise WorkerStartError(
                f"{exc} (with weight repacking {setting}, as --repack {setting} asks)",
                crashed=exc.crashed,
            ) from exc
        return worker, RepackChoice(setting, enabled, f"--repack {setting} was asked for")
    key = verdict_key(facts)
    cached = cache.get(key)
    if cached is not None:
        enabled, why = cached
        worker, failed = _attempt(start, enabled, self_check=False)
        if failed is None:
            return worker, RepackChoice("auto", enabled, f"{why} (verdict cached)")
        logger.warning("a load that followed the cached self-check verdict failed: %s", failed)
    worker, first = _attempt(start, True, self_check=True)
    if first is None:
        reason = "the self-check passed with weight repacking on"
        cache.put(key, True, reason, facts)
        return worker, RepackChoice("auto", True, reason)
    logger.warning("with weight repacking on, the load failed (%s); trying it off", first)
    try:
        worker = start(False, True)
    except WorkerStartError as second:
        if str(second) == str(first):
            message = f"{first} (tried with weight repacking on and off)"
        else:
            message = f"{first} with weight repacking on; {second} with it off"
        raise WorkerStartError(message, crashed=second.crashed) from second
    reason = (
        f"with weight repacking on, the self-check failed ({first}); llama.cpp's "
        "repacked CPU kernels do not work on this machine"
    )
    cache.put(key, False, reason, facts)
    return worker, RepackChoice("auto", False, reason)


def _attempt(
    start: Callable[[bool, bool], T], repack: bool, *, self_check: bool
) -> tuple[T, None] | tuple[None, WorkerStartError]:
    """``start(repack, self_check)``, or the failure that repacking may have caused (any
    other failure is raised: trying again without repacking would not help)."""
    try:
        return start(repack, self_check), None
    except WorkerStartError as exc:
        if not exc.retry_without_repack:
            raise
        return None, exc
