"""Vision models' projectors (``mmproj`` GGUF files) on disk: the catalog keeps them out of
every model list and gives each its model, every surface says the model sees, and a
projector named where a model belongs, or given with ``--mmproj`` wrongly, is a clean error.

One server, started with no model, serves the module: nothing here loads a model (the
loader's hand-over of the projector to the worker is checked with a stand-in worker).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import gguf
import httpx
import lmstudio as lms
import pytest

from lmserve.config import ModelDefaults
from lmserve.engine.types import MEDIA_MARKER
from lmserve.engine.wire import WorkerInfo, WorkerSpec
from lmserve.models import loader
from lmserve.models.catalog import Catalog
from lmserve.models.default import DEFAULT_MODEL, GEMMA3_270M
from lmserve.models.loader import LoadOptions
from lmserve.models.projectors import choose_projector
from lmserve.models.repack import VerdictCache
from tests.conftest import (
    GEMMA_ID,
    MODEL_ID,
    Server,
    free_port,
    install_default_model,
    install_model,
    run_cli,
    start_server,
)
from tests.vision_assets import write_projector

# SmolLM2's folder holds two projectors: the one of the model's own quantization is its.
OWN = "mmproj-SmolLM2-135M-Instruct-Q4_1.gguf"
OTHER = "mmproj-SmolLM2-135M-Instruct-F16.gguf"
PROJECTOR_KEY = "mmproj-smollm2-135m-instruct"  # the key both file names would have
# A folder with projectors and no model: one known by its header only (an older conversion,
# no general.type, no mmproj in its name), one by its name only (its header is unreadable).
LONE = Path("someone") / "Encoder-GGUF"


def write_header_only_projector(path: Path) -> Path:
    """A GGUF whose header says projector only by ``clip.has_vision_encoder``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_clip_has_vision_encoder(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, default_model_file: Path, gemma_model_file: Path
) -> Path:
    home = tmp_path_factory.mktemp("vision-home")
    model = install_default_model(home, default_model_file)
    install_model(home, gemma_model_file, GEMMA3_270M)
    write_projector(model.parent / OTHER, n_embd=576, seed=1)
    write_projector(model.parent / OWN, n_embd=576, seed=0)
    lone = home / "models" / LONE
    write_header_only_projector(lone / "vision-encoder.gguf")
    (lone / "mmproj-unreadable.gguf").write_bytes(b"not a GGUF header")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    started = start_server(home, "--no-model")
    try:
        yield started
    finally:
        started.stop()


def model_folder(home: Path) -> Path:
    return DEFAULT_MODEL.target(home / "models").parent


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """A non-zero exit with one 'Error: ...' line and no traceback; returns stderr."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return result.stderr


# -- the catalog ----------------------------------------------------------------------------


def test_the_catalog_keeps_projectors_out_and_gives_each_model_its_own(home: Path) -> None:
    catalog = Catalog.scan(home / "models")

    assert sorted(catalog.public_id(entry) for entry in catalog.entries) == [GEMMA_ID, MODEL_ID]
    smollm2, gemma = catalog.resolve(MODEL_ID), catalog.resolve(GEMMA_ID)
    assert smollm2 is not None and gemma is not None
    assert smollm2.mmproj == model_folder(home) / OWN and smollm2.vision
    assert gemma.mmproj is None and not gemma.vision
    lone = home / "models" / LONE
    assert sorted(catalog.projectors) == sorted(
        [
            model_folder(home) / OTHER,
            model_folder(home) / OWN,
            lone / "mmproj-unreadable.gguf",
            lone / "vision-encoder.gguf",
        ]
    )
    for name in (PROJECTOR_KEY, OWN, f"{DEFAULT_MODEL.publisher}/{DEFAULT_MODEL.repo}/{OWN}"):
        assert catalog.resolve(name) is None
        assert f"the vision projector of {MODEL_ID}" in (catalog.not_a_model(name) or "")
    assert "has no model" in (catalog.not_a_model("vision-encoder") or "")
    assert "has no model" in (catalog.not_a_model("mmproj-unreadable.gguf") or "")
    assert catalog.not_a_model(MODEL_ID) is None and catalog.not_a_model("nothing") is None


def test_the_projector_of_the_models_quantization_else_f16_is_chosen() -> None:
    names = ["mmproj-x-F32.gguf", "mmproj-x-BF16.gguf", "mmproj-x-f16.gguf", "mmproj-x-Q8_0.gguf"]
    assert choose_projector(names, "Q8_0") == "mmproj-x-Q8_0.gguf"
    assert choose_projector(names, "Q4_K_M") == "mmproj-x-f16.gguf"
    assert choose_projector(names[:2], "Q4_K_M") == "mmproj-x-BF16.gguf"
    assert choose_projector(["b/mmproj-model.gguf", "a/mmproj-Model.gguf"], None) == (
        "a/mmproj-Model.gguf"
    )
    assert choose_projector(["mmproj-Q4_K_M.gguf", "mmproj-Q4_K.gguf"], "Q4_K") == (
        "mmproj-Q4_K.gguf"
    )
    assert choose_projector([], "Q8_0") is None


# -- the server's lists ---------------------------------------------------------------------


def test_the_openai_model_list_leaves_projectors_out(server: Server) -> None:
    listed = httpx.get(f"{server.api_url}/models", timeout=30).json()["data"]
    assert sorted(item["id"] for item in listed) == [GEMMA_ID, MODEL_ID]


def test_lm_studios_lists_say_which_model_sees(server: Server) -> None:
    v0 = httpx.get(f"{server.base_url}/api/v0/models", timeout=30).json()["data"]
    assert {item["id"]: item["type"] for item in v0} == {MODEL_ID: "vlm", GEMMA_ID: "llm"}
    one = httpx.get(f"{server.base_url}/api/v0/models/{MODEL_ID}", timeout=30).json()
    assert one["type"] == "vlm"

    v1 = httpx.get(f"{server.base_url}/api/v1/models", timeout=30).json()["models"]
    assert {item["key"]: item["capabilities"]["vision"] for item in v1} == {
        MODEL_ID: True,
        GEMMA_ID: False,
    }


def test_lm_studios_sdk_lists_the_model_as_seeing(server: Server) -> None:
    with lms.Client(f"127.0.0.1:{server.port}") as client:
        downloaded = {model.model_key: model for model in client.list_downloaded_models()}
        assert sorted(downloaded) == [GEMMA_ID, MODEL_ID]
        assert downloaded[MODEL_ID].info.vision is True
        assert downloaded[GEMMA_ID].info.vision is False
        with pytest.raises(lms.LMStudioModelNotFoundError, match="vision projector of"):
            client.llm.model(PROJECTOR_KEY)


def test_a_projector_named_as_a_model_says_whose_it_is(server: Server) -> None:
    base = server.base_url
    one = httpx.get(f"{base}/api/v0/models/{PROJECTOR_KEY}", timeout=30)
    chat = httpx.post(
        f"{server.api_url}/chat/completions",
        json={"model": PROJECTOR_KEY, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    load = httpx.post(f"{base}/api/v1/models/load", json={"model": OWN}, timeout=30)

    for answer in (one, chat, load):
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["code"] == "model_not_found"
        assert f"is not a model: it is the vision projector of {MODEL_ID}" in error["message"]
    listed = httpx.get(f"{base}/api/v1/models", timeout=30).json()["models"]
    assert all(item["loaded_instances"] == [] for item in listed)


# -- the command line -----------------------------------------------------------------------


def test_ls_shows_the_model_that_sees_and_no_projector(home: Path) -> None:
    rows = json.loads(run_cli(home, "ls", "--json").stdout)
    by_key = {row["key"]: row for row in rows}
    assert sorted(by_key) == [GEMMA_ID, MODEL_ID]
    assert (by_key[MODEL_ID]["vision"], by_key[MODEL_ID]["mmproj"]) == (True, OWN)
    assert (by_key[GEMMA_ID]["vision"], by_key[GEMMA_ID]["mmproj"]) == (False, None)

    table = run_cli(home, "ls").stdout
    assert "You have 2 models" in table and "mmproj" not in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert lines[MODEL_ID].rstrip().endswith("vision")
    assert "vision" not in lines[GEMMA_ID]


def test_load_refuses_a_projector_by_name_and_a_bad_mmproj(home: Path, server: Server) -> None:
    port = ("--port", str(server.port))
    by_name = run_cli(home, "load", PROJECTOR_KEY, *port)
    assert f"it is the vision projector of {MODEL_ID}" in assert_clean_error(by_name)

    missing = run_cli(home, "load", MODEL_ID, "--mmproj", str(home / "absent.gguf"), *port)
    assert "does not exist" in assert_clean_error(missing)

    model_file = str(DEFAULT_MODEL.target(home / "models"))
    not_one = run_cli(home, "load", MODEL_ID, "--mmproj", model_file, *port)
    assert "is not a vision projector" in assert_clean_error(not_one)

    # The REST load checks it too (lmserve's own field: LM Studio's load has none).
    answer = httpx.post(
        f"{server.base_url}/api/v1/models/load",
        json={"model": MODEL_ID, "config": {"mmproj": model_file}},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "config.mmproj"
    assert "is not a vision projector" in answer.json()["error"]["message"]
    listed = httpx.get(f"{server.base_url}/api/v1/models", timeout=30).json()["models"]
    assert all(item["loaded_instances"] == [] for item in listed)


def test_serve_checks_its_mmproj_before_it_starts(home: Path) -> None:
    port = ("--port", str(free_port()), "--sdk-port", "off")
    missing = run_cli(home, "serve", *port, "--mmproj", str(home / "absent.gguf"), timeout=60)
    assert "does not exist" in assert_clean_error(missing)

    projector = str(model_folder(home) / OWN)
    without_model = run_cli(home, "serve", *port, "--no-model", "--mmproj", projector, timeout=60)
    assert "--no-model" in assert_clean_error(without_model)

    started = run_cli(home, "server", "start", *port, "--mmproj", str(home), timeout=60)
    assert "is not a file" in assert_clean_error(started)


# -- the loader -----------------------------------------------------------------------------


class StandInWorker:
    """Takes the spec a load would start a worker with, and answers as a ready worker."""

    specs: ClassVar[list[WorkerSpec]] = []

    def __init__(self, spec: WorkerSpec, loop: Any, on_exit: Any = None) -> None:
        self.specs.append(spec)
        self.n_ctx_per_slot = spec.n_ctx_per_slot
        self.n_slots = spec.n_slots
        self.pid = 0
        self.info = WorkerInfo(
            pid=0,
            n_vocab=49152,
            n_ctx_train=8192,
            n_ctx_per_slot=spec.n_ctx_per_slot,
            n_embd=576,
            add_bos=False,
            bos_id=1,
            eos_id=2,
            bos_text="<|im_start|>",
            eos_text="<|im_end|>",
            chat_template=None,
            architecture="llama",
            fim_tokens=None,
            gpu_layers=0,
            gpu_offload=False,
            flash_attention=None,
            flash_attention_reason="left to llama.cpp",
        )


def test_the_loader_hands_the_worker_its_projector_and_the_media_marker(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "EngineWorker", StandInWorker)
    StandInWorker.specs = []
    catalog = Catalog.scan(home / "models")
    smollm2, gemma = catalog.resolve(MODEL_ID), catalog.resolve(GEMMA_ID)
    assert smollm2 is not None and gemma is not None
    given = write_projector(tmp_path / "elsewhere.gguf", n_embd=640)
    loop = asyncio.new_event_loop()

    def load(entry: Any, options: LoadOptions) -> loader.LoadedModel:
        return loader.load_instance(
            entry,
            entry.key,
            options,
            ModelDefaults(repack="off"),
            jit=False,
            ttl=None,
            verdicts=VerdictCache(tmp_path / "selfcheck.json"),
            loop=loop,
        )

    try:
        folders = load(smollm2, LoadOptions())
        asked = load(gemma, LoadOptions(mmproj=str(given)))
        plain = load(gemma, LoadOptions())
    finally:
        loop.close()

    assert [(spec.mmproj, spec.media_marker) for spec in StandInWorker.specs] == [
        (str(model_folder(home) / OWN), MEDIA_MARKER),
        (str(given), MEDIA_MARKER),
        (None, MEDIA_MARKER),
    ]
    assert (folders.vision, asked.vision, plain.vision) == (True, True, False)
    assert folders.config["mmproj"] == str(model_folder(home) / OWN)
    assert plain.config["mmproj"] is None
