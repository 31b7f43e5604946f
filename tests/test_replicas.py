"""``lmserve serve --ray``: a model as Ray Serve replicas, on a real two-node Ray cluster on
loopback (a head and one worker node, one CPU each: one SmolLM2 replica of one thread on each),
the real server, the official ``openai`` SDK.

Ray keeps to 127.0.0.1 only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the environment of
every Ray process (the notes): this module sets it for the cluster, the test process (a Ray
driver, to kill a replica and read Serve's status) and lmserve.  Without Ray installed the
module is skipped, unless ``LMSERVE_REQUIRE_RAY`` is set (CI installs ``lmserve[ray]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL_ID as MODEL
from tests.conftest import Server, install_default_model, run_cli, start_server
from tests.helpers import log_records, stream_with

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported
if not os.environ.get("LMSERVE_REQUIRE_RAY"):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (lmserve[ray])")
import ray
from ray import serve
from ray.cluster_utils import Cluster

HEADER = "x-lmserve-replica"
# About 1,200 tokens every request of a "conversation" shares.
SHARED = " ".join(f"Rule {i}: answer briefly and politely about topic {i}." for i in range(80))


def node_args(home: Path) -> dict[str, Any]:
    """A node of one CPU whose lmserve home (its models folder) is ``home``."""
    return {"num_cpus": 1, "env_vars": {"LMSERVE_HOME": str(home)}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    head = {**node_args(tmp_path_factory.mktemp("head-node")), "include_dashboard": False}
    started = Cluster(initialize_head=True, head_node_args=head)
    started.add_node(**node_args(tmp_path_factory.mktemp("worker-node")))
    ray.init(address=started.address, namespace="lmserve-tests", log_to_driver=False)
    try:
        yield started
    finally:
        ray.shutdown()
        started.shutdown()


@pytest.fixture(scope="module")
def server(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, default_model_file: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    install_default_model(home, default_model_file)
    flags = ("--ray", cluster.address, "--replicas", "2", "--threads", "1", "--parallel", "2")
    started = start_server(home, *flags, timeout=240, env=dict(os.environ))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


def ask(api: httpx.Client, question: str, shared: str | None = None, **fields: Any) -> Any:
    messages = [{"role": "user", "content": question}]
    if shared is not None:
        messages.insert(0, {"role": "system", "content": shared})
    body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0, **fields}
    return api.post("/v1/chat/completions", json=body)


def running_replicas(server: Server) -> int:
    app = f"lmserve-{server.port}-{MODEL}"
    deployment = serve.status().applications[app].deployments["ModelReplica"]
    return int(deployment.replica_states.get("RUNNING", 0))


def busy_slots(api: httpx.Client, replica: str) -> int:
    """Slots busy on ``replica`` now, as /lmserve/slots reports them."""
    [model] = api.get("/lmserve/slots").json()["models"]
    [line] = [line for line in model["replicas"] if line["replica"] == replica]
    return int(line["slots_busy"])


def replica_actors() -> dict[str, str]:
    """The model's replica actors alive now: each one's Serve id, to its actor name."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {name.rsplit("#", 1)[-1]: name for name in names if "ModelReplica" in name}


def test_two_replicas_stream_through_the_openai_sdk(server: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.api_url, api_key="any", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to twenty."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    assert raw.headers[HEADER].endswith("@127.0.0.1")
    arrivals, texts = [], []
    for chunk in raw.parse():
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
    # Token by token across Ray: chunks come apart in time, not in one burst at the end.
    assert len(texts) >= 10
    assert arrivals[-1] - arrivals[1] > 0.05
    assert running_replicas(server) == 2


def test_a_shared_prefix_sticks_to_its_replica_and_new_ones_spread(
    api: httpx.Client, server: Server
) -> None:
    with log_records(server, ("llm.prediction.output",)) as records:
        first = ask(api, "What is two and two?", SHARED)
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
    # The log stream (made in the server) says which replica ran each request.
    assert records and records[0]["replica"] == first.headers[HEADER]
    assert first.status_code == 200, first.text
    replica = first.headers[HEADER]
    for question in ["Name a color.", "Say hello.", "Name a fruit."]:
        answer = ask(api, question, SHARED)
        assert answer.headers[HEADER] == replica
        assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 1000
    # Conversations that share nothing go to the replica with least work, one after another.
    seen = {ask(api, f"Say the number {n}.").headers[HEADER] for n in range(2)}
    assert len(seen) == 2
    # /lmserve/slots shows each replica: its node (one per node here) and what it holds.
    [model] = api.get("/lmserve/slots").json()["models"]
    replicas = {line["replica"]: line for line in model["replicas"]}
    assert set(replicas) == seen
    assert len({line["node_id"] for line in replicas.values()}) == 2
    assert replicas[replica]["cached_tokens"] > 1000
    assert len(model["slots"]) == 4 and {slot["replica"] for slot in model["slots"]} == seen


def test_the_listings_show_every_replica(api: httpx.Client, server: Server) -> None:
    """/v1/models, LM Studio's models APIs, lmserve ps and /metrics: both replicas, each on
    its node, and the tokens the one holding the shared prefix caches."""
    holder = ask(api, "Name a tree.", SHARED).headers[HEADER]
    [card] = api.get("/v1/models").json()["data"]
    lines = {line["replica"]: line for line in card["replicas"]}
    assert holder in lines and len(lines) == 2
    assert len({line["node_id"] for line in lines.values()}) == 2
    assert {line["node_address"] for line in lines.values()} == {"127.0.0.1"}
    assert lines[holder]["cached_tokens"] > 1000 and lines[holder]["slots"] == 2
    [v0] = [item for item in api.get("/api/v0/models").json()["data"] if "replicas" in item]
    assert {line["replica"] for line in v0["replicas"]} == set(lines)
    assert api.get(f"/api/v0/models/{MODEL}").json()["replicas"] == v0["replicas"]
    [v1] = [m for m in api.get("/api/v1/models").json()["models"] if m["loaded_instances"]]
    assert {line["replica"] for line in v1["loaded_instances"][0]["replicas"]} == set(lines)
    # The native APIs' stats name the replica that answered.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}
    v0_answer = api.post("/api/v0/chat/completions", json=body)
    assert v0_answer.json()["stats"]["replica"] == v0_answer.headers[HEADER]
    native = {"model": MODEL, "input": "Hi.", "max_output_tokens": 2, "store": False}
    assert api.post("/api/v1/chat", json=native).json()["stats"]["replica"] in lines
    # lmserve ps: every replica's slots in the table, a line per replica under it.
    listed = run_cli(server.home, "ps", "--port", str(server.port))
    assert listed.returncode == 0, listed.stderr
    for name in lines:
        assert f"replica {name}: 0/2 slots busy" in listed.stdout
    assert "0/4" in listed.stdout
    # /metrics: a series per replica, labelled with its model, name and node.
    metrics = api.get("/metrics").text
    for name in lines:
        label = f'{{model="{MODEL}",node="127.0.0.1",replica="{name}"}}'
        assert f"lmserve_replica_slots{label} 2" in metrics
    assert f'lmserve_slots{{model="{MODEL}"}} 4' in metrics


def test_replicas_are_not_split_over_rpc_workers(api: httpx.Client) -> None:
    body = {"model": MODEL, "identifier": "replicated-split", "rpc": "127.0.0.1:50052"}
    refused = api.post("/api/v1/models/load", json=body)
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "model_load_failed"
    assert "cannot also be split over RPC workers" in refused.json()["error"]["message"]


def test_a_client_that_leaves_frees_its_slot_on_the_replica(api: httpx.Client) -> None:
    other = SHARED.replace("briefly", "at length")
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": other}, {"role": "user", "content": "Go."}],
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        replica = response.headers[HEADER]
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data:")
            if chunks > 3:
                break
    # The generation stops on the replica: its slots are all idle again within a few
    # seconds (the rest of its context, ~2,800 tokens, would take it 15 s or more).
    deadline = time.monotonic() + 5
    while busy_slots(api, replica):
        assert time.monotonic() < deadline, "the replica kept generating for a client gone"
        time.sleep(0.1)
    # The same prefix is answered there at once, from the cache.
    started = time.monotonic()
    answers = [ask(api, f"Question {n}.", other) for n in range(2)]
    assert all(a.headers[HEADER] == replica for a in answers)
    assert time.monotonic() - started < 20
    assert answers[1].json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 1000


def test_a_replica_lost_mid_stream_fails_only_its_request_and_comes_back(
    api: httpx.Client, server: Server
) -> None:

    def kill_its_actor(count: int, response: httpx.Response) -> None:
        if count == 3:
            name = replica_actors()[response.headers[HEADER].split("@")[0]]
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    response, events = stream_with(api, MODEL, kill_its_actor)
    replica = response.headers[HEADER]
    unique_id = replica.split("@")[0]
    # The stream ends with the error event, as a crash ends it on one machine.
    assert '"code":"engine_crashed"' in events[-1].replace(" ", ""), events[-3:]
    assert "was lost" in events[-1]
    # The API keeps serving on the other replica meanwhile.
    after = ask(api, "Say hi.")
    assert after.status_code == 200
    assert after.headers[HEADER] != replica
    # Serve replaces the lost replica.
    deadline = time.monotonic() + 120
    while not (running_replicas(server) == 2 and len(replica_actors()) == 2):
        assert time.monotonic() < deadline, serve.status()
        time.sleep(0.5)
    assert unique_id not in replica_actors()


def node_copies(home: Path, model_file: Path) -> list[Path]:
    """The model file in a node's lmserve home, complete and identical to the server's."""
    copies = list((home / "models").rglob(model_file.name))
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    return [c for c in copies if hashlib.sha256(c.read_bytes()).hexdigest() == digest]


def test_auto_replicas_scale_out_onto_nodes_that_copy_the_model_and_outlive_one(
    cluster: Cluster,
    server: Server,  # its two replicas hold the first two nodes' CPUs: this model's go here
    tmp_path_factory: pytest.TempPathFactory,
    default_model_file: Path,
) -> None:
    before = {node.node_id for node in cluster.list_all_nodes()}
    homes = [tmp_path_factory.mktemp(f"added-node-{n}") for n in range(3)]
    added = [cluster.add_node(**node_args(home)) for home in homes[:2]]
    server_home = tmp_path_factory.mktemp("auto-server")
    install_default_model(server_home, default_model_file)
    flags = ("--ray", cluster.address, "--replicas", "auto", "--max-replicas", "2")
    auto = start_server(server_home, *flags, "--threads", "1", "--parallel", "2", timeout=240)
    stop = threading.Event()

    def keep_busy(api: httpx.Client, n: int) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Tell story number {n}."}],
            "max_tokens": 3000,
            "stream": True,
            "ignore_eos": True,
        }
        with api.stream("POST", "/v1/chat/completions", json=body) as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    return  # leaving cancels it

    try:
        with httpx.Client(base_url=auto.base_url, timeout=120) as api:
            assert running_replicas(auto) == 1
            # Two slots generating and two requests waiting, for more than Serve's 5 s
            # upscale delay: a second replica starts.
            busy = [threading.Thread(target=keep_busy, args=(api, n)) for n in range(4)]
            for thread in busy:
                thread.start()
            deadline = time.monotonic() + 90
            while running_replicas(auto) < 2:
                assert time.monotonic() < deadline, serve.status()
                time.sleep(0.5)
            stop.set()
            for thread in busy:
                thread.join()
            # Both replicas run on the added nodes, which had no model: each copied it from
            # the server's node into its own models folder.
            assert all(node_copies(home, default_model_file) for home in homes[:2])
            seen = {ask(api, f"Say the number {n}.").headers[HEADER] for n in range(2)}
            assert len(seen) == 2

            # One of those nodes is lost mid-stream: its stream ends with the error event,
            # the other replica serves, and a node added later gets the replacement.

            def remove_its_node(count: int, response: httpx.Response) -> None:
                if count == 3:
                    [model] = api.get("/lmserve/slots").json()["models"]
                    lines = {r["replica"]: r["node_id"] for r in model["replicas"]}
                    node_id = lines[response.headers[HEADER]]
                    [node] = [node for node in added if node.node_id == node_id]
                    cluster.remove_node(node, allow_graceful=False)

            response, events = stream_with(api, MODEL, remove_its_node)
            replica = response.headers[HEADER]
            assert '"code":"engine_crashed"' in events[-1].replace(" ", ""), events[-3:]
            after = ask(api, "Say hi.")
            assert after.status_code == 200 and after.headers[HEADER] != replica
            cluster.add_node(**node_args(homes[2]))
            # Serve may still count the lost one as running for a while: wait for the new one.
            app = f"lmserve-{auto.port}-"
            deadline = time.monotonic() + 120
            while not (
                running_replicas(auto) == 2
                and any(app in name for name in replica_actors().values())
                and replica.split("@")[0] not in replica_actors()
                and node_copies(homes[2], default_model_file)
            ):
                assert time.monotonic() < deadline, serve.status()
                time.sleep(0.5)
    finally:
        stop.set()
        auto.stop()
        for node in cluster.list_all_nodes():
            if node.node_id not in before:  # the cluster as the module's other tests had it
                with contextlib.suppress(Exception):
                    cluster.remove_node(node)


def test_nothing_listens_beyond_loopback(server: Server) -> None:
    """Ray's processes and lmserve's keep to 127.0.0.1 (the tests' traffic too)."""
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [line for line in listening.splitlines() if "ray" in line or "python" in line]
    assert ours, listening  # ss names the processes (it runs as their user)
    loopback = ("127.", "[::ffff:127.", "[::1]")
    elsewhere = [line for line in ours if not line.split()[3].startswith(loopback)]
    assert not elsewhere, elsewhere


def test_serve_without_ray_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lmserve.cli.main import cli\n"
        "from lmserve.api.app import create_app\n"
        "from lmserve.config import Settings\n"
        "from lmserve.models.manager import ModelManager\n"
        "import pathlib\n"
        "create_app(ModelManager(pathlib.Path(sys.argv[1]), Settings()), settings=Settings())\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray'\n"
    )
    env = {**os.environ, "LMSERVE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
