"""The ``lmserve`` command line.  Each command's docstring is its ``--help``.

Commands live in their own modules and are registered here.
"""

from __future__ import annotations

import click

from lmserve import __version__
from lmserve.cli.cache import cache
from lmserve.cli.chat import chat
from lmserve.cli.get import get
from lmserve.cli.importing import import_model
from lmserve.cli.log import log
from lmserve.cli.mcp import mcp
from lmserve.cli.models import list_loaded, list_models, load_model, unload_model
from lmserve.cli.rerank import rerank
from lmserve.cli.rpc import rpc_worker
from lmserve.cli.serve import serve
from lmserve.cli.server import server
from lmserve.cli.server import status as server_status


@click.group()
@click.version_option(__version__, prog_name="lmserve")
def cli() -> None:
    """lmserve: a local, OpenAI-compatible LLM server on llama.cpp.

    Start it with `lmserve serve`, then point any OpenAI client at
    http://127.0.0.1:1234/v1 with any API key.
    """


@cli.command()
def version() -> None:
    """Print the versions of lmserve and llama.cpp's binding, whether a GPU is there to
    offload to, and whether the build has llama.cpp's RPC backend (lmserve rpc-worker)."""
    # Imported here: loading llama.cpp takes a moment that other commands need not wait for.
    from importlib.metadata import version as package_version

    from lmserve.engine.llama import gpu_offload_supported
    from lmserve.rpc.ggml import rpc_library_path

    click.echo(f"lmserve {__version__}")
    click.echo(f"llama-cpp-python {package_version('llama-cpp-python')}")
    click.echo(f"GPU offload: {'available' if gpu_offload_supported() else 'no GPU found'}")
    rpc = "available" if rpc_library_path() else 'not in this build (CMAKE_ARGS="-DGGML_RPC=on")'
    click.echo(f"llama.cpp RPC: {rpc}")


cli.add_command(serve)
cli.add_command(server)
# LM Studio's `lms status`: the same report as `server status`.
cli.add_command(server_status, name="status")
cli.add_command(list_models)
cli.add_command(list_loaded)
cli.add_command(load_model)
cli.add_command(unload_model)
cli.add_command(chat)
cli.add_command(log)
cli.add_command(get)
cli.add_command(import_model, name="import")
cli.add_command(cache)
cli.add_command(rerank)
cli.add_command(mcp)
cli.add_command(rpc_worker)
