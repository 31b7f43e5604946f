"""The ``lmserve`` command line.  Each command's docstring is its ``--help``.

Commands live in their own modules and are registered here.
"""

from __future__ import annotations

import click

from lmserve import __version__
from lmserve.cli.chat import chat
from lmserve.cli.get import get
from lmserve.cli.importing import import_model
from lmserve.cli.log import log
from lmserve.cli.models import list_loaded, list_models, load_model, unload_model
from lmserve.cli.serve import serve
from lmserve.cli.server import server


@click.group()
@click.version_option(__version__, prog_name="lmserve")
def cli() -> None:
    """lmserve: a local, OpenAI-compatible LLM server on llama.cpp.

    Start it with `lmserve serve`, then point any OpenAI client at
    http://127.0.0.1:1234/v1 with any API key.
    """


cli.add_command(serve)
cli.add_command(server)
cli.add_command(list_models)
cli.add_command(list_loaded)
cli.add_command(load_model)
cli.add_command(unload_model)
cli.add_command(chat)
cli.add_command(log)
cli.add_command(get)
cli.add_command(import_model, name="import")
