"""The README's two set-up commands are the ones CI runs and the server starts with."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opens_with_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", section, flags=re.S)
    assert len(commands) == 2
    serve, tests = (command.strip() for command in commands)
    assert serve.endswith("lmserve serve")
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()
