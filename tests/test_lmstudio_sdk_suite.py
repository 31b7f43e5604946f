"""LM Studio's own SDK test suite (``lmstudio`` 1.5.0's ``tests/``) against lmserve.

The suite ships in the SDK's source distribution, fetched at test time (``pip download
--no-binary``) into the tests' cache outside the repository: the project never copies it.
LM Studio runs it against its desktop app with four models loaded (its ``tests/README.md``);
here lmserve serves stand-ins at the paths LM Studio's files would have, so each loads under
the key and identifier the suite expects:

- ``llama-3.2-1b-instruct``: SmolLM2 135M;
- ``mobilevlm_v2-1.7b``: SmolLM2 with the tiny vision projector of :mod:`tests.vision_assets`;
- ``qwen2.5-7b-instruct-1m`` (the tool-using model): Gemma 3 270M;
- ``text-embedding-nomic-embed-text-v1.5``: the tiny BERT of :mod:`tests.embedding_assets`,
  as wide (768) and with the trained context (2048) of nomic-embed-text v1.5;
- ``smollm2-135m-instruct`` (for the JIT tests), downloaded, not loaded.

The suite's download test searches LM Studio's hub for ``smollm2-135m`` and downloads the
first option: lmserve asks Hugging Face, here :class:`tests.hf_standin.HubStandIn` on a
loopback port (``HF_ENDPOINT``), which holds SmolLM2's repository.

The suite runs in its own pytest, in a subprocess, with :mod:`lmserve_suite_plugin`
(``tests/lmstudio_suite/``) pointing the SDK's discovery at this server's SDK port and
putting the models back before each test.  Predictions that set no token limit stop at
:data:`MAX_TOKENS` (the server's ``--max-tokens``): the stand-ins would go on to the end of
their context, where the real models stop at once.  Every test must pass except those in
:data:`STAND_IN_ONLY`, which only the real models can pass, each with its reason; a listed test
that passes fails this test too (unless its stand-in output is sampled: :data:`SAMPLED`), so
the list stays true.  The plugin examples ``test_plugin_examples.py`` runs are only in the
SDK's repository, not in the sdist: lmserve's own test plugin (``tests/lmstudio_plugin``)
stands in for them, run and stopped by the suite's test as a dev plugin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from importlib import metadata
from pathlib import Path

from tests.conftest import free_port, install_default_model, start_server
from tests.embedding_assets import write_embedding_model
from tests.hf_standin import HubStandIn
from tests.vision_assets import write_projector

SUITE = "lmstudio==1.5.0"
PLUGIN_DIR = Path(__file__).parent / "lmstudio_suite"
TEST_PLUGIN = Path(__file__).parent / "lmstudio_plugin"

LLM = "hugging-quants/Llama-3.2-1B-Instruct-Q4_1-GGUF/llama-3.2-1b-instruct-q4_1.gguf"
VLM = "ZiangWu/MobileVLM_V2-1.7B-GGUF/ggml-model-q4_k.gguf"
VLM_PROJECTOR = "ZiangWu/MobileVLM_V2-1.7B-GGUF/mmproj-model-f16.gguf"
TOOL_LLM = "lmstudio-community/Qwen2.5-7B-Instruct-1M-GGUF/qwen2.5-7b-instruct-1m-Q4_K_M.gguf"
EMBEDDING = "nomic-ai/nomic-embed-text-v1.5-GGUF/text-embedding-nomic-embed-text-v1.5.Q4_1.gguf"
MAX_TOKENS = 128
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"  # on the stand-in hub
# The identifier each loads under, and the model it is (the suite's tests/support).
LOADED = {
    "llama-3.2-1b-instruct": "hugging-quants/llama-3.2-1b-instruct",
    "mobilevlm_v2-1.7b": "ZiangWu/MobileVLM_V2-1.7B-GGUF",
    "qwen2.5-7b-instruct-1m": "qwen2.5-7b-instruct-1m",
    "text-embedding-nomic-embed-text-v1.5": "nomic-ai/nomic-embed-text-v1.5",
}

# -- the suite's tests that only LM Studio's real models pass --------------------------------

_ECHO = (
    "wants the model to repeat 'Hello, world!' word for word (greedy): SmolLM2 135M answers "
    "something else"
)
_SCHEMA = (
    "completes 'Hello' into JSON of a schema or grammar, sampled, with no token limit: the "
    "real model closes the object at once; SmolLM2 writes a string on to the run's token "
    "limit (or, where the schema allows, keys of its own), and now and then closes it in time"
)
_TOOLS = (
    "act() with tools, sampled: the 7B tool model calls a tool and answers from its result; "
    "Gemma 3 270M, a base model, answers in one round without a call"
)
_QUESTION = (
    "a prediction of 'Hello' over the raw protocol, sampled, must be a question ('?'): "
    "SmolLM2 rambles on without one more often than not"
)
_ROBOT = (
    "five concurrent predictions (greedy) must say 'I am a robot' or 'I cannot repeat': "
    "SmolLM2's greedy answer is \"I'm a robotic AI ...\""
)
_FORMATS = ["LMStudioResponseFormat", "OtherResponseFormat"]
_FORMATS += [f"format_type{index}" for index in range(2, 7)]  # the suite's RESPONSE_FORMATS


def _twins(module: str, test: str, reason: str, ids: list[str] | None = None) -> dict[str, str]:
    """A test of the suite's async and sync twins (``tests/async|sync/<module>_*.py``)."""
    return {
        f"tests/{kind}/{module}_{kind}.py::{test}_{kind}{f'[{id_}]' if id_ else ''}": reason
        for kind in ("async", "sync")
        for id_ in ids or [""]
    }


# Each test only the real models pass, and why; those whose stand-in output is sampled (the
# suite sets no seed) may pass now and then: SAMPLED.
STAND_IN_ONLY: dict[str, str] = {
    **_twins("test_inference", "test_respond_past_history", _ECHO),
    **_twins("test_inference", "test_complete_structured_response_format", _SCHEMA, _FORMATS),
    **_twins("test_inference", "test_complete_structured_config_json", _SCHEMA),
    **_twins("test_inference", "test_complete_structured_config_gbnf", _SCHEMA),
    **_twins("test_inference", "test_tool_using_agent", _TOOLS),
    **_twins("test_inference", "test_tool_using_agent_callbacks", _TOOLS),
    **_twins("test_inference", "test_tool_using_agent_error_handling", _TOOLS),
    **_twins("test_sdk_bypass", "test_connect_and_predict", _QUESTION),
    "tests/test_inference.py::test_concurrent_predictions": _ROBOT,
}
SAMPLED = {test for test, reason in STAND_IN_ONLY.items() if reason in (_SCHEMA, _TOOLS, _QUESTION)}


# -- fetching and running the suite -----------------------------------------------------------


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmserve-tests" / "sdist"


def suite_sdist() -> Path:
    """The SDK's source distribution, downloaded once (it must be the installed SDK's)."""
    name, version = SUITE.split("==")
    assert metadata.version(name) == version, f"the suite is {SUITE}'s; install that SDK"
    folder = _cache()
    archive = folder / f"{name}-{version}.tar.gz"
    if not archive.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--no-binary", ":all:", SUITE, "--dest", str(folder)]
        subprocess.run(command, check=True, timeout=600)
    return archive


def unpack_suite(destination: Path) -> Path:
    """The sdist's ``tests/`` and ``pyproject.toml`` (its pytest settings) in ``destination``."""
    with tarfile.open(suite_sdist()) as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.name.split("/")[1:2] in (["tests"], ["pyproject.toml"])
        ]
        archive.extractall(destination, members=members, filter="data")
    [root] = destination.iterdir()
    # Where the suite's plugin test looks for the SDK repository's examples.
    examples = root / "examples" / "plugins"
    shutil.copytree(
        TEST_PLUGIN, examples / TEST_PLUGIN.name, ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def make_home(home: Path, default_model_file: Path, gemma_model_file: Path) -> Path:
    """The models where LM Studio keeps the suite's, each a stand-in."""
    models = home / "models"
    smollm2 = install_default_model(home, default_model_file)
    for relative, source in [(LLM, smollm2), (VLM, smollm2), (TOOL_LLM, gemma_model_file)]:
        (models / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(source, models / relative)
    write_projector(models / VLM_PROJECTOR, n_embd=576)
    write_embedding_model(models / EMBEDDING, embed=768, context=2048, heads=12)
    return home


def run_suite(root: Path, base_url: str, sdk_port: int, results: Path) -> str:
    path = [str(PLUGIN_DIR)]
    if importlib.util.find_spec("pytest_subtests") is None:
        path.append(str(PLUGIN_DIR / "compat"))  # pytest 9's own subtests
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "LMSERVE_SUITE_URL": base_url,
        "LMSERVE_SUITE_SDK_PORT": str(sdk_port),
        "LMSERVE_SUITE_MODELS": json.dumps(LOADED),
        "LMSERVE_SUITE_RESULTS": str(results),
    }
    command = [sys.executable, "-m", "pytest", "-p", "lmserve_suite_plugin", "-p"]
    command += ["no:cacheprovider", "-q"]
    # The suite makes every warning an error; pytest 9 warns of what pytest 10 will remove
    # (parametrize over a zip), which is the suite's affair, not the server's.
    command += ["-W", "ignore::pytest.PytestRemovedIn10Warning", "tests"]
    done = subprocess.run(
        command,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        # The suite's plugin tests stop their child with SIGINT, which a shell's background
        # job ignores (and its children inherit): give it back its default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return done.stdout + done.stderr


def test_lm_studios_sdk_suite_passes_but_for_what_only_real_models_can(
    tmp_path: Path, default_model_file: Path, gemma_model_file: Path
) -> None:
    root = unpack_suite(tmp_path / "suite")
    home = make_home(tmp_path / "home", default_model_file, gemma_model_file)
    sdk_port = free_port()
    results = tmp_path / "results.json"
    with HubStandIn() as hub:
        smollm2 = default_model_file.read_bytes()
        hub.add_file(SMOLLM2_REPO, default_model_file.name, smollm2)
        env = hub.env(tmp_path / "hf")
        # A prediction that sets no limit stops at MAX_TOKENS: the stand-ins, unlike the
        # real models, would go on to the end of their context (minutes on 2 cores).
        flags = ("--no-model", "--sdk-port", str(sdk_port), "--max-tokens", str(MAX_TOKENS))
        server = start_server(home, *flags, env=env)
        try:
            output = run_suite(root, server.base_url, sdk_port, results)
            assert server.process.poll() is None, f"lmserve died:\n{server.log()[-4000:]}"
        finally:
            server.stop()
    assert results.exists(), output[-4000:]
    outcomes: dict[str, str] = json.loads(results.read_text())
    failed = {test for test, outcome in outcomes.items() if outcome == "failed"}
    expected = failed & set(STAND_IN_ONLY)
    against_lmserve = sorted(failed - expected)
    now_passing = sorted(set(STAND_IN_ONLY) - SAMPLED - failed)
    counts = Counter(outcomes.values())
    print(
        f"\nLM Studio's SDK suite ({SUITE}): {counts['passed']} passed, "
        f"{len(expected)} expected stand-in failures, {len(against_lmserve)} failed against "
        f"lmserve, {counts['skipped']} skipped"
    )
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert not against_lmserve, (
        f"failed against lmserve: {against_lmserve}\n{summary}\n{output[-12000:]}"
    )
    assert not now_passing, f"listed as only for real models, but did not fail: {now_passing}"
