"""lmserve on a Ray cluster: joining it, and each loaded model deployed as Serve replicas.

``lmserve serve --ray ADDRESS`` joins the cluster (``auto``: the one ``RAY_ADDRESS`` or a local
``ray start --head`` names) and starts Serve without its HTTP proxy: lmserve's own server stays
the only ingress, on the host and port the user gave.  Each model it loads becomes a Serve
application of :class:`ModelReplica` replicas (``--replicas N``, or ``auto``: Serve's
autoscaling between 1 and ``--max-replicas`` on ongoing requests), each taking as many CPUs as
the model's threads, routed by :class:`PrefixAffinityRouter`.  A replica on another node
loads the model from that node's models folder, copied there from this one the first time
(:mod:`lmserve.replicas.files`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lmserve.config import RaySettings
from lmserve.engine.types import WorkerStartError
from lmserve.engine.wire import WorkerSpec
from lmserve.replicas.deployment import ModelReplica
from lmserve.replicas.engine import ReplicatedEngine
from lmserve.replicas.files import IN_FLIGHT, FileSource, ModelFiles, spec_files
from lmserve.replicas.routing import PrefixAffinityRouter, RandomRouter

logger = logging.getLogger("lmserve.replicas")

NAMESPACE = "lmserve"
# Calls besides the requests a replica's slots and queue take: cancels, tokenizing, snapshots.
CONTROL_CALLS = 8


def app_name(server_port: int, identifier: str) -> str:
    """The Serve application of a model this server loaded."""
    return f"lmserve-{server_port}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", identifier)


class RayReplicas:
    """lmserve's part of a Ray cluster: its Serve applications, one per loaded model."""

    def __init__(self, settings: RaySettings, models_root: Path) -> None:
        self.settings = settings
        self.models_root = models_root
        self._started = False
        self._files: Any = None  # the ModelFiles actor on this node
        self._source: FileSource | None = None

    def connect(self) -> None:
        """Join the cluster and start Serve (blocking)."""
        if self._started:
            return
        address = None if self.settings.address == "auto" else self.settings.address
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        self._started = True
        here = ray.get_runtime_context().get_node_id()
        files_name = f"lmserve-files-{self.settings.server_port}"
        self._files = (
            ray.remote(ModelFiles)
            .options(
                name=files_name,
                namespace=NAMESPACE,
                num_cpus=0,
                max_concurrency=IN_FLIGHT * 2,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            )
            .remote()
        )
        self._source = FileSource(here, str(self.models_root), files_name, NAMESPACE)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        logger.info(
            "joined the Ray cluster at %s: %d node%s, %g CPUs",
            ray.get_runtime_context().gcs_address,
            len(nodes),
            "" if len(nodes) == 1 else "s",
            ray.cluster_resources().get("CPU", 0),
        )

    def deploy(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> ReplicatedEngine:
        """Deploy ``spec``'s model as replicas and wait until they are up (blocking);
        raises :class:`WorkerStartError` if they cannot load it."""
        self.connect()
        name = app_name(self.settings.server_port, spec.name)
        settings = self.settings
        options: dict[str, Any] = {
            "name": "ModelReplica",
            "max_ongoing_requests": spec.n_slots + spec.max_queue + CONTROL_CALLS,
            # Beyond every replica's queue, a request waits in Serve's, up to this many.
            "max_queued_requests": spec.max_queue,
            "ray_actor_options": {"num_cpus": max(1, spec.n_threads or 1)},
            "health_check_period_s": 2,
            "health_check_timeout_s": 30,
        }
        router = PrefixAffinityRouter if settings.routing == "prefix" else RandomRouter
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=router, request_router_kwargs={"slots": spec.n_slots}
        )
        if settings.replicas is None:
            options["autoscaling_config"] = {
                "min_replicas": 1,
                "max_replicas": settings.max_replicas,
                "target_ongoing_requests": max(1, spec.n_slots),
                # A replica loads in seconds: add one soon when every slot is taken; keep
                # it a while, since loading again costs more than idling.
                "upscale_delay_s": 5,
                "downscale_delay_s": 120,
            }
        else:
            options["num_replicas"] = settings.replicas
        ray.get(self._files.serve.remote(spec_files(spec)))
        application = serve.deployment(ModelReplica).options(**options).bind(spec, self._source)
        try:
            handle = serve.run(application, name=name, route_prefix=None)
            described = handle.describe.remote().result()
        except Exception as exc:  # the replicas could not load the model
            serve.delete(name)
            message = str(exc)
            raise WorkerStartError(
                f"its replicas did not start: {message[-2000:]}",
                self_check="self-check" in message,
            ) from None
        logger.info(
            "%s: %s replica%s (Serve application %s), each %d slots",
            spec.name,
            settings.replicas
            if settings.replicas is not None
            else "1 to " + str(settings.max_replicas),
            "" if settings.replicas == 1 else "s",
            name,
            described["n_slots"],
        )
        return ReplicatedEngine(spec, handle, described, loop, name, settings.replicas)

    def close(self) -> None:
        """Leave the cluster (lmserve is stopping; each model's engine has deleted its own
        application: Serve itself, and other servers' applications, stay)."""
        if self._started:
            ray.shutdown()
            self._started = False
