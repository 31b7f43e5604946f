"""``lmserve rerank``: documents scored against a query by a reranker on the running server."""

from __future__ import annotations

import click

from lmserve.cli.common import ServerClient, connection_options, echo_json, table


@click.command("rerank")
@click.argument("query")
@click.argument("documents", nargs=-1, required=True)
@click.option("-m", "--model", default=None, help="The reranker (default: the one loaded).")
@click.option("--top-n", type=click.IntRange(min=1), default=None, help="Show the best N only.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")
@connection_options
def rerank(
    query: str,
    documents: tuple[str, ...],
    model: str | None,
    top_n: int | None,
    as_json: bool,
    host: str | None,
    port: int | None,
    api_key: str | None,
) -> None:
    """Score DOCUMENTS against QUERY with a reranker model; print them best first.

    Example: lmserve rerank "Which is about the sea?" "The tide came in." "Bread rises."
    """
    body = {"model": model, "query": query, "documents": list(documents), "top_n": top_n}
    with ServerClient(host, port, api_key=api_key) as client:
        answer = client.post("/v1/rerank", body)
    if as_json:
        echo_json(answer)
        return
    rows = [
        [f"{result['relevance_score']:.4f}", str(result["index"]), documents[result["index"]]]
        for result in answer["results"]
    ]
    click.echo(table(rows, ["score", "#", "document"]))
