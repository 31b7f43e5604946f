"""Every Python process of an LM Studio SDK suite run finds the test's lmserve, and only it.

LM Studio's SDK looks for its server on five discovery ports.  The suite's pytest, and the
plugin runners its plugin test starts (``python -m lmstudio.plugin --dev``, which starts the
plugin in a process of its own), all import this module at start-up (this folder is on their
``PYTHONPATH``): when the SDK's ``json_api`` module loads, its only discovery port becomes the
one the test started lmserve on (``LMSERVE_SUITE_SDK_PORT``), so the suite never reaches
another server and two runs never share a port.  The SDK itself is not imported here: pytest
must import it (and anyio) after its own start, or it warns, which the suite makes an error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

_MODULE = "lmstudio.json_api"


class _OnlyTheTestPort(importlib.abc.MetaPathFinder):
    def __init__(self, port: int) -> None:
        self.port = port

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        load = loader.exec_module
        port = self.port

        def exec_module(module: ModuleType) -> None:
            load(module)
            module.ClientBase._DEFAULT_API_PORTS = (port,)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("LMSERVE_SUITE_SDK_PORT"):
    sys.meta_path.insert(0, _OnlyTheTestPort(int(os.environ["LMSERVE_SUITE_SDK_PORT"])))
