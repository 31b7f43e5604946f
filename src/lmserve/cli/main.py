"""The ``lmserve`` command line.  Each command's docstring is its ``--help``.

Commands live in their own modules and are registered here.
"""

from __future__ import annotations

import click

from lmserve import __version__
from lmserve.cli.log import log
from lmserve.cli.serve import serve


@click.group()
@click.version_option(__version__, prog_name="lmserve")
def cli() -> None:
    """lmserve: a local, OpenAI-compatible LLM server on llama.cpp.

    Start it with `lmserve serve`, then point any OpenAI client at
    http://127.0.0.1:1234/v1 with any API key.
    """


cli.add_command(serve)
cli.add_command(log)
