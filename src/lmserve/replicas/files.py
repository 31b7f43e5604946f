"""A model's files on the nodes its replicas run on.

The server loads a model from its own models folder; a replica on another node needs the
same file on that node.  Each node keeps models where lmserve keeps them there
(``$LMSERVE_HOME/models``, at the same path inside it as on the server's node), so:

- a replica on the server's node loads the server's files as they are;
- elsewhere, a file already in the node's models folder, of the same size, is used; one that
  is not there is copied from the server's node through Ray (:class:`ModelFiles`, an actor on
  that node, reads it in chunks: the model never passes through the driver or sits whole in
  Ray's object store), once per node (a lock file keeps two replicas from copying it twice),
  into a partial file renamed when complete;
- a file outside the server's models folder (loaded by its path) is used where it is, if the
  node sees it (shared storage at the same path), else copied into ``models/lmserve-copies``.

Shared storage needs no copy: point each node's ``LMSERVE_HOME`` (the environment of its
``ray start``) at it.  The prompt cache's disk tier stays on each node's own disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray

from lmserve.engine.wire import WorkerSpec
from lmserve.paths import models_dir, prompt_cache_dir

logger = logging.getLogger("lmserve.replicas")

CHUNK_BYTES = 8 << 20
IN_FLIGHT = 4  # chunks asked for ahead of the one being written
COPIES = "lmserve-copies"  # where files from outside the server's models folder go


@dataclass(frozen=True)
class FileSource:
    """Where a replica's files come from: the server's node, its models folder, and the
    name of the :class:`ModelFiles` actor there."""

    node_id: str
    models_root: str
    actor_name: str
    namespace: str


class ModelFiles:
    """A Ray actor on the server's node that hands out the files of the models it deployed
    (and no others), a chunk at a time."""

    def __init__(self) -> None:
        self._served: set[str] = set()

    def serve(self, paths: list[str]) -> None:
        self._served.update(paths)

    def size(self, path: str) -> int:
        return os.path.getsize(self._checked(path))

    def read(self, path: str, offset: int, size: int) -> bytes:
        with open(self._checked(path), "rb") as file:
            file.seek(offset)
            return file.read(size)

    def _checked(self, path: str) -> str:
        if path not in self._served:
            raise PermissionError(f"{path} is not a file of a model this server deployed")
        return path


def spec_files(spec: WorkerSpec) -> list[str]:
    """The files a worker of ``spec`` loads."""
    return [spec.path, *([spec.mmproj] if spec.mmproj else [])]


def on_this_node(spec: WorkerSpec, source: FileSource) -> WorkerSpec:
    """``spec`` with paths this node has (copying what it lacks first); blocking."""
    if ray.get_runtime_context().get_node_id() == source.node_id:
        return spec
    files = ray.get_actor(source.actor_name, namespace=source.namespace)
    local = {path: _placed(path, source, files) for path in spec_files(spec)}
    cache = spec.prompt_cache
    if cache is not None and cache.disk_folder:  # this node's disk, not the server's path
        cache = dataclasses.replace(cache, disk_folder=str(prompt_cache_dir()))
    return dataclasses.replace(
        spec,
        path=local[spec.path],
        mmproj=local[spec.mmproj] if spec.mmproj else None,
        prompt_cache=cache,
    )


def _placed(path: str, source: FileSource, files: ray.actor.ActorHandle) -> str:
    size = int(ray.get(files.size.remote(path)))
    original = Path(path)
    try:
        target = models_dir() / original.relative_to(source.models_root)
    except ValueError:  # loaded by its path, from outside the server's models folder
        if _has(original, size):
            return path
        target = models_dir() / COPIES / original.name
    if not _has(target, size):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.with_name(target.name + ".lock")):
            if not _has(target, size):  # another replica of this node may have copied it
                _copy(path, size, target, files)
    return str(target)


def _has(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _copy(path: str, size: int, target: Path, files: ray.actor.ActorHandle) -> None:
    logger.info("copying %s (%d MB) from the server's node to %s", path, size >> 20, target)
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    offsets = list(range(0, size, CHUNK_BYTES))
    asked = [files.read.remote(path, offset, CHUNK_BYTES) for offset in offsets[:IN_FLIGHT]]
    try:
        with partial.open("wb") as out:
            for index in range(len(offsets)):
                chunk = ray.get(asked[index])
                if index + IN_FLIGHT < len(offsets):
                    offset = offsets[index + IN_FLIGHT]
                    asked.append(files.read.remote(path, offset, CHUNK_BYTES))
                asked[index] = None  # its bytes are written: let Ray free them
                out.write(chunk)
        if partial.stat().st_size != size:
            raise OSError(f"copying {path} gave {partial.stat().st_size} bytes of {size}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
