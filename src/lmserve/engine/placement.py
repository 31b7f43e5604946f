"""Where a model's layers go when devices besides this machine's CPU hold some: llama.cpp RPC
workers (``--rpc``) and local GPUs.

Before the model loads, :func:`plan` registers each RPC worker's devices with llama.cpp (in
the worker process, which llama.cpp may abort: the server checked the endpoints first) and
fixes each device's share of the layers: the one given (``--tensor-split``), else each
device's free memory, as llama.cpp itself would.  Passing the shares outright lets
:func:`describe` count the layers each device holds by llama.cpp's own rule, and the
weights' megabytes come from llama.cpp's load log (:attr:`LlamaModel.buffer_mib`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from lmserve.rpc.ggml import (
    DEVICE_GPU,
    DEVICE_IGPU,
    Device,
    RpcUnavailable,
    add_rpc_server,
    devices,
)


class PlacementError(RuntimeError):
    """The layers cannot go where the load asked: no RPC backend in this build, a worker
    that does not answer, shares that do not fit the devices.  The load fails with it."""


@dataclass(frozen=True)
class Plan:
    """The devices layers may go to, in llama.cpp's order (RPC first), and their shares."""

    devices: tuple[Device, ...]
    endpoints: tuple[str | None, ...]  # each device's RPC worker (None: a local GPU)
    shares: tuple[float, ...]


def plan(rpc_servers: tuple[str, ...], tensor_split: tuple[float, ...]) -> Plan:
    """Register the RPC workers' devices; raises :class:`PlacementError`."""
    # This machine's GPUs, before the RPC devices join the list (as type GPU, too).
    local = [(d, None) for d in devices() if d.kind in (DEVICE_GPU, DEVICE_IGPU)]
    remote: list[tuple[Device, str | None]] = []
    for endpoint in rpc_servers:
        try:
            remote += [(device, endpoint) for device in add_rpc_server(endpoint)]
        except (RpcUnavailable, ConnectionError) as exc:
            raise PlacementError(str(exc)) from None
    chosen = remote + local
    if tensor_split:
        if len(tensor_split) != len(chosen):
            names = ", ".join(device.name for device, _ in chosen)
            raise PlacementError(
                f"--tensor-split gives {len(tensor_split)} shares for {len(chosen)} devices "
                f"({names})"
            )
        shares = tensor_split
    else:
        shares = tuple(float(device.memory()[0]) for device, _ in chosen)
    if not any(share > 0 for share in shares):
        raise PlacementError("every device's share of the layers is 0")
    return Plan(
        tuple(device for device, _ in chosen),
        tuple(endpoint for _, endpoint in chosen),
        tuple(shares),
    )


def layer_counts(plan: Plan, n_layers: int, n_gpu_layers: int) -> tuple[list[int], int]:
    """Layers (the repeating ones and the output layer) on each of ``plan``'s devices, and
    on this machine's CPU: llama.cpp's rule (``llama_model::load_tensors``)."""
    n_all = n_layers + 1
    offloaded = n_all if n_gpu_layers < 0 else min(n_gpu_layers, n_all)
    first = n_all - offloaded
    total = sum(plan.shares)
    bounds, running = [], 0.0
    for share in plan.shares:
        running += share
        bounds.append(running / total)
    counts = [0] * len(plan.devices)
    cpu = 0
    for layer in range(n_all):
        if layer < first or not plan.devices:
            cpu += 1
            continue
        index = bisect.bisect_right(bounds, (layer - first) / offloaded)
        counts[min(index, len(counts) - 1)] += 1
    return counts, cpu


def describe(
    plan: Plan, n_layers: int, n_gpu_layers: int, buffer_mib: dict[str, float]
) -> tuple[dict[str, Any], ...]:
    """One entry per device (its name, RPC endpoint, layers, weights' MiB), the CPU last."""
    counts, cpu = layer_counts(plan, n_layers, n_gpu_layers)
    entries = []
    for index, (device, endpoint, count) in enumerate(
        zip(plan.devices, plan.endpoints, counts, strict=True)
    ):
        # llama.cpp names an RPC device's buffer "RPC<its index on the worker>[endpoint]", a
        # GPU's after the device.
        if endpoint is not None:
            on_worker = plan.endpoints[:index].count(endpoint)
            buffer = f"RPC{on_worker}[{endpoint}]"
        else:
            buffer = device.name
        mib = buffer_mib.get(buffer, 0.0)
        entries.append(
            {"device": device.name, "rpc": endpoint, "layers": count, "memory_mib": round(mib, 1)}
        )
    local = sum(size for name, size in buffer_mib.items() if name.startswith("CPU"))
    entries.append(
        # The input layer (token embeddings) always stays here, as in llama.cpp.
        {"device": "CPU", "rpc": None, "layers": cpu, "memory_mib": round(local, 1)}
    )
    return tuple(entries)
