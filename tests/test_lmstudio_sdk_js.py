"""LM Studio's JavaScript SDK (``@lmstudio/sdk`` 1.5.0 from npm, on the machine's Node) against
the real server: listings, respond, a stream, a completion, structured output, cancel,
embeddings and an unknown model, by ``tests/js/sdk_check.cjs``.

The SDK checks every packet against its schemas and silently drops one that misses a field,
then waits for ever; so each step must finish, within the script's time limit, for its line
to appear.  The SDK is installed once into a cache outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest

from tests.conftest import MODEL_ID, Server

SDK = ("@lmstudio/sdk", "1.5.0")
SCRIPT = Path(__file__).parent / "js" / "sdk_check.cjs"
SCRIPT_TIMEOUT = 600.0


def sdk_dir() -> Path:
    """Where the SDK is installed: outside the repository, kept between runs."""
    configured = os.environ.get("LMSERVE_SDK_JS_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "lmserve-sdk-js"


def installed_version(root: Path) -> str | None:
    manifest = root / "node_modules" / SDK[0] / "package.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text()).get("version"))


@pytest.fixture(scope="module")
def node_modules() -> Path:
    root = sdk_dir()
    if installed_version(root) != SDK[1]:
        npm = shutil.which("npm")
        assert npm, "npm is needed to install LM Studio's SDK (apt-get install nodejs npm)"
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "package.json").exists():
            (root / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", f"{SDK[0]}@{SDK[1]}"],
            cwd=root,
            check=True,
            timeout=900,
            capture_output=True,
        )
    return root / "node_modules"


def run_script(
    script: Path, node_modules: Path, server: Server, **env: str
) -> list[dict[str, Any]]:
    """Run one of ``tests/js``'s scripts against ``server``: the JSON lines it printed, each
    a step, the last ``done``; ``env`` adds to its environment (MODEL is the model's id)."""
    node = shutil.which("node")
    assert node, "Node.js is needed to run LM Studio's JavaScript SDK"
    run = subprocess.run(
        [node, str(script)],
        env={
            **os.environ,
            "NODE_PATH": str(node_modules),
            "LMS_URL": f"ws://127.0.0.1:{server.port}",
            "MODEL": MODEL_ID,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["step"] == "failed"]
    assert not failed, failed[0]["error"] + run.stderr
    assert run.returncode == 0 and lines and lines[-1]["step"] == "done", run.stdout + run.stderr
    # The SDK warns (on stderr) of every packet it could not parse.
    assert "invalid message" not in run.stderr.lower(), run.stderr
    return lines


@pytest.fixture(scope="module")
def steps(node_modules: Path, server: Server) -> dict[str, dict[str, Any]]:
    return {line["step"]: line for line in run_script(SCRIPT, node_modules, server)}


def test_lists_models(steps: dict[str, dict[str, Any]]) -> None:
    assert steps["listDownloaded"]["models"] == [{"key": MODEL_ID, "type": "llm"}]
    assert steps["listLoaded"]["identifiers"] == [MODEL_ID]
    assert steps["model"] == {"step": "model", "identifier": MODEL_ID, "contextLength": 4096}


def test_respond_answers_as_the_rest_api_does(
    steps: dict[str, dict[str, Any]], server: Server
) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "temperature": 0,
        "max_tokens": 12,
    }
    rest = httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=120).json()
    respond = steps["respond"]
    assert respond["content"] == rest["choices"][0]["message"]["content"]
    assert respond["stats"]["promptTokensCount"] == rest["usage"]["prompt_tokens"]
    assert respond["stats"]["predictedTokensCount"] == rest["usage"]["completion_tokens"]


def test_a_stream_comes_in_fragments(steps: dict[str, dict[str, Any]]) -> None:
    stream = steps["stream"]
    assert len(stream["fragments"]) > 3
    assert "".join(stream["fragments"]) == stream["content"]
    assert stream["stats"]["stopReason"] == "maxPredictedTokensReached"
    assert stream["stats"]["predictedTokensCount"] == 16


def test_complete_continues_the_raw_prompt(
    steps: dict[str, dict[str, Any]], server: Server
) -> None:
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8}
    rest = httpx.post(
        f"{server.api_url}/completions", json={**body, "temperature": 0}, timeout=120
    ).json()
    assert steps["complete"]["content"] == rest["choices"][0]["text"]


def test_structured_output_parses(steps: dict[str, dict[str, Any]]) -> None:
    person = json.loads(steps["structured"]["content"])
    jsonschema.validate(
        person,
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    )


def test_cancel_stops_the_prediction(steps: dict[str, dict[str, Any]]) -> None:
    cancel = steps["cancel"]
    assert cancel["stats"]["stopReason"] == "userStopped"
    assert cancel["stats"]["predictedTokensCount"] < 100


def test_embeddings_are_the_rest_apis(steps: dict[str, dict[str, Any]], server: Server) -> None:
    body = {"model": MODEL_ID, "input": "The cat sat on the mat."}
    rest = httpx.post(f"{server.api_url}/embeddings", json=body, timeout=120).json()
    assert np.allclose(steps["embed"]["embedding"], rest["data"][0]["embedding"], atol=1e-6)


def test_an_unknown_model_is_reported(steps: dict[str, dict[str, Any]]) -> None:
    unknown = steps["unknownModel"]
    assert unknown["title"] == "No model matches the query ('no-such-model')."
    # The SDK's own words for generic.noModelMatchingQuery: it read the displayData.
    assert "No loaded model satisfies all requirements" in unknown["message"]
    assert "no-such-model" in unknown["message"]
