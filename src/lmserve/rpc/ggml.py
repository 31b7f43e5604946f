"""llama.cpp's backend devices and its RPC backend, through ctypes.

The RPC backend (``libggml-rpc``) is built only when llama-cpp-python is installed with
``CMAKE_ARGS="-DGGML_RPC=on"``; pip may also reuse a wheel it built earlier without it.  A build
without it raises :class:`RpcUnavailable`, which says how to rebuild.  The functions come from
the same build as the rest of llama.cpp here, so a worker and a client of one lmserve always
speak the same protocol version.

Only the engine's worker process and ``lmserve rpc-worker`` load these libraries: the server
process never does (it checks endpoints with :mod:`lmserve.rpc.probe`, plain sockets).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

# enum ggml_backend_dev_type
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU = 0, 1, 2

REBUILD = (
    "this llama-cpp-python was built without llama.cpp's RPC backend (libggml-rpc); rebuild "
    'it with: pip cache remove llama_cpp_python && CMAKE_ARGS="-DGGML_RPC=on" '
    "pip install --force-reinstall --no-deps llama-cpp-python=={version}"
)


class RpcUnavailable(RuntimeError):
    """This llama.cpp build has no RPC backend; the message says how to rebuild it."""


def _library_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def _loaded(stem: str) -> Path | None:
    """The file of ``stem`` (``libggml``) this process has loaded, if any.  The wheel ships
    ``libggml.so`` and ``libggml.so.0`` as two copies: opening the other one would give a
    second ggml, with a device registry llama.cpp never sees."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith(f"{stem}.so"):
            return Path(path)
    return None


@functools.cache
def _ggml() -> ctypes.CDLL:
    import llama_cpp  # noqa: F401  (loads libggml and its backends, as llama.cpp uses them)

    lib = ctypes.CDLL(str(_loaded("libggml") or _library_dir() / "libggml.so.0"))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    return lib


def rpc_library_path() -> Path | None:
    """This build's ``libggml-rpc``, if it has one (the copy libggml loaded)."""
    _ggml()
    found = _loaded("libggml-rpc")
    if found is None and (_library_dir() / "libggml-rpc.so.0").exists():
        found = _library_dir() / "libggml-rpc.so.0"  # a build that loads backends on demand
    return found


@functools.cache
def _rpc() -> ctypes.CDLL:
    path = rpc_library_path()
    if path is None:
        from importlib.metadata import version

        raise RpcUnavailable(REBUILD.format(version=version("llama-cpp-python")))
    _ggml()
    lib = ctypes.CDLL(str(path))
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def require_rpc() -> None:
    """Raise :class:`RpcUnavailable` unless this build has the RPC backend."""
    _rpc()


@dataclass(frozen=True)
class Device:
    """A backend device llama.cpp can place layers on."""

    handle: int
    name: str  # "RPC0", "CUDA0", "CPU"
    description: str  # an RPC device's endpoint
    kind: int

    def memory(self) -> tuple[int, int]:
        """Bytes free and total (an RPC device asks its worker)."""
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _ggml().ggml_backend_dev_memory(self.handle, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value


def _device(handle: int) -> Device:
    lib = _ggml()
    return Device(
        handle=handle,
        name=(lib.ggml_backend_dev_name(handle) or b"?").decode(errors="replace"),
        description=(lib.ggml_backend_dev_description(handle) or b"").decode(errors="replace"),
        kind=int(lib.ggml_backend_dev_type(handle)),
    )


def devices() -> list[Device]:
    """Every device registered now (the CPU, GPUs, RPC devices once added)."""
    lib = _ggml()
    return [_device(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]


def has_local_gpu() -> bool:
    """Whether a GPU of this machine is there (llama.cpp's own check counts an RPC build as
    one, even with no worker added)."""
    lib = _ggml()
    return any(lib.ggml_backend_dev_by_type(kind) for kind in (DEVICE_GPU, DEVICE_IGPU))


def add_rpc_server(endpoint: str) -> list[Device]:
    """Register the devices of the RPC worker at ``endpoint`` (``host:port``) for the models
    loaded after; check it with :func:`lmserve.rpc.probe.check_endpoint` first: llama.cpp
    aborts the process on a worker that answers wrongly."""
    lib = _rpc()
    registry = lib.ggml_backend_rpc_add_server(endpoint.encode())
    if not registry:
        raise ConnectionError(f"the RPC worker at {endpoint} did not answer")
    ggml = _ggml()
    ggml.ggml_backend_register(registry)
    count = ggml.ggml_backend_reg_dev_count(registry)
    return [_device(ggml.ggml_backend_reg_dev_get(registry, i)) for i in range(count)]


def cpu_device() -> Device:
    return _device(_ggml().ggml_backend_dev_by_type(DEVICE_CPU))


def start_server(endpoint: str, cache_dir: str | None, n_threads: int) -> None:
    """Serve this machine's CPU (and its GPU, if the build has one) to RPC clients at
    ``endpoint``; never returns (one client at a time, as llama.cpp's server does)."""
    lib = _rpc()
    local = [d for d in devices() if d.kind in (DEVICE_GPU, DEVICE_IGPU)] or [cpu_device()]
    array = (ctypes.c_void_p * len(local))(*(device.handle for device in local))
    cache = cache_dir.encode() if cache_dir else None
    lib.ggml_backend_rpc_start_server(endpoint.encode(), cache, n_threads, len(local), array)
