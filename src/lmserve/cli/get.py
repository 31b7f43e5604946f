"""``lmserve get``: download a GGUF model from Hugging Face, like ``lms get``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import httpx

from lmserve.models.catalog import Catalog
from lmserve.models.download import download
from lmserve.models.hub import DownloadPlan, preferred_quantization, resolve_plan
from lmserve.models.references import DownloadError
from lmserve.models.search import is_search_term, search_models
from lmserve.paths import downloads_dir, models_dir


@click.command()
@click.argument("ref")
@click.option(
    "--quant",
    "quantization",
    metavar="QUANT",
    help="Quantization to download, e.g. Q4_K_M (the same as REF@q4_k_m).",
)
@click.option(
    "-y",
    "--yes",
    is_flag=True,
    help="Ask nothing: with several quantizations, take the preferred one.",
)
def get(ref: str, quantization: str | None, yes: bool) -> None:
    """Download a GGUF model from Hugging Face into the models folder.

    REF is publisher/repo, publisher/repo@quant (e.g. @q4_k_m), a huggingface.co URL of a
    repository or of one .gguf file in it, or a search (e.g. smollm2-135m): the hub's GGUF
    repositories whose names contain it, most downloaded first, to choose from (with -y or
    when not run from a terminal, the first is taken).

    When the repository holds several quantizations, @quant or --quant picks one; otherwise
    you choose from a list, or, with -y or when not run from a terminal, the preferred one is
    taken (Q4_K_M, then Q4_K_S, Q5_K_M, Q4_0, Q8_0, ...).  Split models come whole.  A
    repository with vision projectors (mmproj files) gives one with the model, into its
    folder: the one of the model's quantization, else F16, BF16, F32, else the first by name.

    The files are staged under downloads/ in the lmserve home, resume where they broke off when
    the command is run again, and move to models/<publisher>/<repo>/ once their sha256 matches
    the hub's.  HF_TOKEN and HF_ENDPOINT are honoured.
    """
    interactive = sys.stdin.isatty() and not yes
    chooser = _ask if interactive else _take_preferred
    try:
        if is_search_term(ref):
            ref = _pick_repository(ref, interactive)
        plan = resolve_plan(
            ref, models_root=models_dir(), quantization=quantization, choose=chooser
        )
        if plan.already_present():
            click.echo(f"{_title(plan)}: already downloaded", err=True)
        else:
            _announce(plan)
            _download_with_bar(plan)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    except (httpx.HTTPError, OSError) as exc:
        raise click.ClickException(f"download failed: {exc}") from None
    except KeyboardInterrupt:
        raise click.ClickException(
            "interrupted; run the same command again to resume the download"
        ) from None
    for path in plan.targets:
        click.echo(str(path))
    click.echo(f"Model key: {Catalog.scan(models_dir()).key_of(plan.targets[0])}", err=True)


def _pick_repository(terms: str, interactive: bool) -> str:
    hits = search_models(terms)
    if not hits:
        raise DownloadError(
            f"no GGUF models on the hub match {terms.strip()!r}; try fewer or other words"
        )
    if not interactive:
        click.echo(f"Searching for {terms.strip()!r}: taking {hits[0].repo_id}", err=True)
        return hits[0].repo_id
    click.echo(f"GGUF models matching {terms.strip()!r}, most downloaded first:", err=True)
    for number, hit in enumerate(hits, start=1):
        downloads = f"  ({hit.downloads:,} downloads)" if hit.downloads is not None else ""
        click.echo(f"  {number}. {hit.repo_id}{downloads}", err=True)
    number = click.prompt("Download which", type=click.IntRange(1, len(hits)), default=1, err=True)
    return hits[number - 1].repo_id


def _ask(labels: list[str]) -> str:
    preferred = preferred_quantization(labels)
    click.echo("This repository has several quantizations:", err=True)
    for number, label in enumerate(labels, start=1):
        click.echo(f"  {number}. {label}", err=True)
    number = click.prompt(
        "Download which",
        type=click.IntRange(1, len(labels)),
        default=labels.index(preferred) + 1,
        err=True,
    )
    return labels[number - 1]


def _take_preferred(labels: list[str]) -> str:
    choice = preferred_quantization(labels)
    click.echo(
        f"Available: {', '.join(labels)}; taking {choice} (choose another with --quant)",
        err=True,
    )
    return choice


def _title(plan: DownloadPlan) -> str:
    return f"{plan.repo_id} {plan.quantization or plan.files[0].name}"


def _announce(plan: DownloadPlan) -> None:
    count = f"{len(plan.files)} files, " if len(plan.files) > 1 else ""
    click.echo(
        f"Downloading {_title(plan)} ({count}{plan.total_bytes / 1e6:.1f} MB) "
        f"at revision {plan.revision[:12]}",
        err=True,
    )
    if plan.projector is not None:
        click.echo(f"With its vision projector: {plan.projector.path}", err=True)
    for file in plan.files:
        if file.sha256 is None:
            click.echo(
                f"Note: the hub lists no sha256 for {file.path}; only its size will be checked",
                err=True,
            )


def _download_with_bar(plan: DownloadPlan) -> list[Path]:
    with click.progressbar(
        length=plan.total_bytes,
        file=sys.stderr,
        item_show_func=lambda done: f"{done / 1e6:.1f} MB" if done is not None else None,
    ) as bar:

        def on_progress(done: int, total: int) -> None:
            bar.update(done - bar.pos, done)

        return download(plan, staging_root=downloads_dir(), progress=on_progress)
