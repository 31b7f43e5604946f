"""``lmserve import``: add a GGUF file from disk to the models folder, like ``lms import``.

(The module is not called ``import``: that is a Python keyword.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lmserve.models.catalog import Catalog
from lmserve.models.importer import (
    ImportMode,
    ModelImportError,
    default_user_repo,
    parse_user_repo,
    plan_import,
    run_import,
)
from lmserve.paths import models_dir


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--copy", is_flag=True, help="Copy the file instead of moving it.")
@click.option("--symlink", is_flag=True, help="Leave the file where it is; link to it.")
@click.option("--hardlink", is_flag=True, help="Hard-link the file (same file system only).")
@click.option(
    "--user-repo",
    metavar="PUBLISHER/REPO",
    help="Folder to file it under. Default: local/<model key>-GGUF.",
)
@click.option(
    "--mmproj",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=True),
    help="The model's vision projector (mmproj GGUF), brought in beside it the same way.",
)
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Ask nothing; take the default folder.")
def import_model(
    file: Path,
    copy: bool,
    symlink: bool,
    hardlink: bool,
    user_repo: str | None,
    mmproj: Path | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Add a GGUF model file from disk to the models folder.

    The file moves to models/<publisher>/<repo>/ in the lmserve home (--copy, --symlink or
    --hardlink leave it where it is).  --user-repo names the publisher/repo folder; without it
    the folder is local/<model key>-GGUF, which you may change when asked at a terminal.  An
    existing file is never overwritten.  A vision model's projector comes with --mmproj, into
    the same folder.
    """
    flags = {"copy": copy, "symlink": symlink, "hardlink": hardlink}
    chosen = [name for name, given in flags.items() if given]
    if len(chosen) > 1:
        raise click.UsageError("choose at most one of --copy, --symlink and --hardlink")
    mode: ImportMode = chosen[0] if chosen else "move"  # type: ignore[assignment]
    try:
        if user_repo is None and sys.stdin.isatty() and not yes:
            user_repo = click.prompt(
                "Publisher/repo to file it under",
                default=default_user_repo(file.name),
                value_proc=_checked_user_repo,
                err=True,
            )
        plan = plan_import(
            file, models_root=models_dir(), mode=mode, user_repo=user_repo, mmproj=mmproj
        )
        if dry_run:
            click.echo(f"{plan.describe()} (dry run: nothing changed)")
            return
        target = run_import(plan)
    except ModelImportError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"import failed: {exc}") from None
    click.echo(plan.describe(done=True))
    click.echo(f"Model key: {Catalog.scan(models_dir()).key_of(target)}", err=True)


def _checked_user_repo(value: str) -> str:
    try:
        parse_user_repo(value)
    except ModelImportError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip()
