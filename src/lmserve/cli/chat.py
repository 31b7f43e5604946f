"""``lmserve chat``: talk to a model from the terminal, streaming."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from lmserve.cli.common import ServerClient, connection_options

_HELP = "Type a message and press Enter. /clear forgets the conversation, /exit or Ctrl-D quits."


def _default_model(client: ServerClient) -> str:
    """The first loaded model, else the first downloaded one (the server loads it JIT)."""
    models = client.get("/api/v1/models")["models"]
    for model in models:
        if model["loaded_instances"]:
            return model["loaded_instances"][0]["id"]
    llms = [model["key"] for model in models if model["type"] == "llm"]
    if not llms:
        raise click.ClickException("no model is downloaded. Get one with: lmserve get <repo>")
    return llms[0]


def _answer(client: ServerClient, model: str, messages: list[dict[str, str]], stats: bool) -> str:
    """Stream one answer to stdout; return its text."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    started = time.perf_counter()
    parts: list[str] = []
    final: dict[str, Any] = {}
    for event in client.stream_lines("/api/v0/chat/completions", body):
        if "error" in event:
            raise click.ClickException(event["error"].get("message", "generation failed"))
        if event.get("object") == "stats":
            final = event.get("stats", {})
            continue
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                parts.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
    click.echo()
    if stats and final:
        figures = [f"{final.get('completion_tokens')} tokens"]
        if final.get("tokens_per_second"):
            figures.append(f"{final['tokens_per_second']:.1f} tok/s")
        if final.get("time_to_first_token") is not None:
            figures.append(f"first token {final['time_to_first_token']:.2f} s")
        figures.append(f"total {time.perf_counter() - started:.2f} s")
        figures.append(f"stop: {final.get('stop_reason')}")
        click.echo("[" + ", ".join(figures) + "]", err=True)
    return "".join(parts)


@click.command("chat")
@click.argument("model", required=False)
@click.option("-p", "--prompt", default=None, help="Send this prompt, print the answer, exit.")
@click.option("-s", "--system", "system_prompt", default=None, help="A system prompt.")
@click.option("--stats", is_flag=True, help="After each answer, print tokens/s and timings.")
@connection_options
def chat(
    model: str | None,
    prompt: str | None,
    system_prompt: str | None,
    stats: bool,
    host: str | None,
    port: int | None,
    api_key: str | None,
) -> None:
    """Chat with a model in the terminal; answers stream as they are generated.

    With -p, or with a prompt piped on stdin, answers once and exits.  Otherwise starts an
    interactive conversation that keeps its history.  MODEL defaults to the first loaded
    model.
    """
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip() or None
        if prompt is None:
            raise click.UsageError("stdin was empty: nothing to ask")
    with ServerClient(host, port, api_key=api_key) as client:
        model = model or _default_model(client)
        history: list[dict[str, str]] = []
        if system_prompt:
            history.append({"role": "system", "content": system_prompt})
        if prompt is not None:
            _answer(client, model, [*history, {"role": "user", "content": prompt}], stats)
            return
        click.echo(f"Chatting with {model}. {_HELP}", err=True)
        while True:
            try:
                line = input("> ")
            except EOFError:
                click.echo(err=True)
                return
            text = line.strip()
            if not text:
                continue
            if text in {"/exit", "/quit"}:
                return
            if text == "/clear":
                history = history[:1] if system_prompt else []
                click.echo("(conversation cleared)", err=True)
                continue
            history.append({"role": "user", "content": text})
            history.append({"role": "assistant", "content": _answer(client, model, history, stats)})
