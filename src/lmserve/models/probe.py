"""Trying a model file in a child process before the server loads it.

llama.cpp answers some malformed files not with an error but with ``GGML_ASSERT`` and
``abort()``: a GGUF whose header claims 1,000 layers takes the whole process down, with every
other model and request in it.  So each file is first loaded once by a short-lived child
process (``python -m lmserve.models.probe FILE``); only if that child exits cleanly does the
server load the file itself.  The verdict is kept per file (path, size, modification time),
so the cost (a fraction of a second for small models) is paid once per file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

PROBE_TIMEOUT = 300.0  # seconds: large models on slow disks take a while even memory-mapped
_ASSERTION = re.compile(r"GGML_ASSERT\((.{1,300}?)\) failed")


class ProbeFailed(RuntimeError):
    """The file crashed or failed a trial load; the message says why, without server paths."""


class ModelFileProbe:
    """Trial loads in child processes; :meth:`close` kills any still running."""

    def __init__(self) -> None:
        self._verified: set[tuple[str, int, int]] = set()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def check(self, path: Path) -> None:
        """Return if ``path`` loads in a child process; raise :class:`ProbeFailed` if not.

        Blocking: call it from a worker thread.
        """
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in self._verified:
            return
        with self._lock:
            if self._closed:
                raise ProbeFailed("the server is shutting down")
            child = subprocess.Popen(
                [sys.executable, "-m", "lmserve.models.probe", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            self._running.add(child)
        try:
            _, stderr = child.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ProbeFailed(f"a trial load took more than {PROBE_TIMEOUT:.0f} s") from None
        finally:
            with self._lock:
                self._running.discard(child)
        if child.returncode != 0:
            raise ProbeFailed(_reason(child.returncode, stderr.decode("utf-8", "replace")))
        self._verified.add(key)

    def close(self) -> None:
        """Kill running trial loads (the server is stopping): no child outlives the server."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for child in running:
            child.kill()


def _reason(returncode: int, stderr: str) -> str:
    assertion = _ASSERTION.search(stderr)
    if assertion:
        return f"llama.cpp aborted on a malformed file ({assertion.group(1)})"
    if returncode < 0:
        return f"llama.cpp crashed reading it (signal {-returncode})"
    return "llama.cpp cannot read it (corrupt, truncated or unsupported)"


def main(argv: list[str]) -> int:
    from lmserve.engine.llama import LlamaModel, ModelLoadError

    try:
        LlamaModel(Path(argv[0])).close()
    except ModelLoadError:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
