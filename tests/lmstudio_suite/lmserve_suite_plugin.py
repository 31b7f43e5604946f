"""A pytest plugin for LM Studio's SDK test suite against lmserve (test_lmstudio_sdk_suite.py).

It is loaded into the suite's own pytest (``-p lmserve_suite_plugin``), never into lmserve's.
What it does is what LM Studio's maintainers do by hand around a run:

- the SDK finds its server on the discovery ports; here the only one is the port the test
  started lmserve on (``sitecustomize.py`` beside this module, for every process of the run);
- before each test, the models the suite expects are loaded under their identifiers (as
  ``tox -m load-test-models`` does once) and any other instance is unloaded (the suite's
  README: "Additional models should NOT be loaded"), since some of its tests load and unload;
- each test's outcome goes to ``LMSERVE_SUITE_RESULTS`` (JSON: node id to ``passed``,
  ``failed`` or ``skipped``) for the test to check against its list.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

_BASE_URL = os.environ.get("LMSERVE_SUITE_URL", "")
_EXPECTED: dict[str, str] = json.loads(os.environ.get("LMSERVE_SUITE_MODELS", "{}"))
_outcomes: dict[str, str] = {}


def _loaded() -> set[str]:
    models = httpx.get(f"{_BASE_URL}/api/v1/models", timeout=30).json()["models"]
    return {i["id"] for m in models for i in m["loaded_instances"]}


def put_models_back() -> None:
    loaded = _loaded()
    for identifier in sorted(loaded - set(_EXPECTED)):
        body = {"instance_id": identifier}
        httpx.post(f"{_BASE_URL}/api/v1/models/unload", json=body, timeout=60)
    for identifier, model in _EXPECTED.items():
        if identifier not in loaded:
            body = {"model": model, "identifier": identifier}
            answer = httpx.post(f"{_BASE_URL}/api/v1/models/load", json=body, timeout=300)
            answer.raise_for_status()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    put_models_back()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed:
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    path = os.environ.get("LMSERVE_SUITE_RESULTS")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_outcomes, out, indent=1, sort_keys=True)
