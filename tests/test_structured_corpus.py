"""llama.cpp's own JSON-schema corpus (``tests/test-json-schema-to-grammar.cpp`` of the llama.cpp
that llama-cpp-python vendors, read from its sdist) as ``response_format`` on the real server.

Each schema llama.cpp expects to convert is served, and the answer validates (or is cut by
``max_tokens``); each it expects to refuse is a 400; none is a 5xx.  The one schema served by
neither llama.cpp's grammar nor lmserve's: a look-ahead in a ``pattern``, which llama.cpp
drops (its grammar then ignores the pattern) and lmserve refuses, naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from lmserve.api.common.structured import standard_form
from tests.conftest import MODEL_ID, Server, running_server
from tests.llama_cpp_source import vendored_file

# test({ STATUS, "name", R"""(schema)""", R"""(grammar)""" }) in llama.cpp's test source.
_CASE = re.compile(r'test\(\{\s*(SUCCESS|FAILURE),\s*"((?:[^"\\]|\\.)*)",\s*R"""\((.*?)\)"""', re.S)
REFUSED_HERE = {"unsupported regexp in a property": "look-around"}
MAX_TOKENS = 160


def corpus() -> list[tuple[bool, str, Any]]:
    """(llama.cpp expects a grammar, name, schema) for every case of its test."""
    source = vendored_file("tests/test-json-schema-to-grammar.cpp")
    cases = [
        (status == "SUCCESS", name, json.loads(schema))
        for status, name, schema in _CASE.findall(source)
    ]
    assert len(cases) >= 80, "llama.cpp's corpus was not read whole"
    return cases


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, default_model_file: Path) -> Iterator[Server]:
    """Eight slots: the 80 schemas are asked eight at a time."""
    with running_server(tmp_path_factory, default_model_file, "--parallel", "8") as started:
        yield started


def ask(server: Server, schema: Any) -> httpx.Response:
    body = {
        "model": MODEL_ID,
        "messages": [
            {"role": "user", "content": f"Reply with JSON valid against: {json.dumps(schema)}"}
        ],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    }
    return httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=300)


def test_llama_cpps_schema_corpus(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    cases = corpus()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda case: ask(server, case[2]), cases))
    tally = {"valid": 0, "cut by max_tokens": 0, "refused (400)": 0, "5xx": 0}
    for (expected, name, schema), answer in zip(cases, answers, strict=True):
        assert answer.status_code < 500, (name, answer.text)
        if answer.status_code == 400:
            tally["refused (400)"] += 1
            error = answer.json()["error"]
            assert error["code"] == "unsupported_schema", (name, error)
            assert not expected or name in REFUSED_HERE, (name, error["message"])
            if name in REFUSED_HERE:
                assert REFUSED_HERE[name] in error["message"], error["message"]
            continue
        assert answer.status_code == 200 and expected, (name, answer.text)
        choice = answer.json()["choices"][0]
        if choice["finish_reason"] == "length":
            tally["cut by max_tokens"] += 1
            continue
        # As JSON Schema spells llama.cpp's forms (prefixItems given one schema).
        jsonschema.validate(json.loads(choice["message"]["content"]), standard_form(schema))
        tally["valid"] += 1
    with capsys.disabled():
        print(f"\nllama.cpp's schema corpus ({len(cases)} cases): {tally}")
    assert tally["valid"] + tally["cut by max_tokens"] == sum(e for e, _, _ in cases) - 1
