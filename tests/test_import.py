"""``lmserve import``: the real CLI, in a subprocess, on the real default model file."""

from __future__ import annotations

import filecmp
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmserve.models.catalog import Catalog
from lmserve.models.default import DEFAULT_MODEL
from lmserve.models.importer import ModelImportError, plan_import
from lmserve.models.importer import run_import as carry_out
from tests.vision_assets import write_projector

NAME = DEFAULT_MODEL.file_name  # SmolLM2-135M-Instruct.Q4_1.gguf
KEY = "smollm2-135m-instruct"
DEFAULT_FOLDER = Path("local") / f"{KEY}-GGUF"


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture()
def models(home: Path) -> Path:
    return home / "models"


@pytest.fixture()
def source(tmp_path: Path, default_model_file: Path) -> Path:
    """A file of its own to import (a hard link to the cached model where possible: nothing
    here writes into a file, so the cache is safe, and moving a link moves only that name)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    path = incoming / NAME
    try:
        os.link(default_model_file, path)
    except OSError:
        shutil.copyfile(default_model_file, path)
    return path


def run_import(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserve", "import", *args],
        env={**os.environ, "LMSERVE_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() or path.is_symlink())


def catalog_path(models: Path) -> Path | None:
    entry = Catalog.scan(models).resolve(KEY)
    return entry.path if entry else None


def test_the_default_is_to_move(home: Path, models: Path, source: Path) -> None:
    inode = source.stat().st_ino

    result = run_import(home, str(source))

    assert result.returncode == 0, result.stderr
    target = models / DEFAULT_FOLDER / NAME
    assert not source.exists()
    assert target.is_file() and not target.is_symlink()
    assert target.stat().st_ino == inode  # the same file, renamed
    assert files_under(models) == [target]
    assert catalog_path(models) == target
    assert str(target) in result.stdout


def test_copy_leaves_the_original(home: Path, models: Path, source: Path) -> None:
    result = run_import(home, str(source), "--copy")

    assert result.returncode == 0, result.stderr
    target = models / DEFAULT_FOLDER / NAME
    assert source.is_file()
    assert not target.is_symlink() and target.stat().st_ino != source.stat().st_ino
    assert filecmp.cmp(source, target, shallow=False)
    assert files_under(models) == [target]  # no temporary file left behind
    assert catalog_path(models) == target


def test_symlink_points_at_the_original(home: Path, models: Path, source: Path) -> None:
    result = run_import(home, str(source), "--symlink")

    assert result.returncode == 0, result.stderr
    target = models / DEFAULT_FOLDER / NAME
    assert source.is_file()
    assert target.is_symlink()
    assert Path(os.readlink(target)) == source.resolve()
    assert catalog_path(models) == target


def test_hardlink_shares_the_file(home: Path, models: Path, source: Path) -> None:
    links = source.stat().st_nlink

    result = run_import(home, str(source), "--hardlink")

    assert result.returncode == 0, result.stderr
    target = models / DEFAULT_FOLDER / NAME
    assert source.is_file()
    assert not target.is_symlink()
    assert target.stat().st_ino == source.stat().st_ino
    assert source.stat().st_nlink == links + 1
    assert catalog_path(models) == target


@pytest.mark.parametrize("mode", [[], ["--copy"], ["--symlink"], ["--hardlink"]])
def test_dry_run_changes_nothing(home: Path, models: Path, source: Path, mode: list[str]) -> None:
    before = source.stat()

    result = run_import(home, str(source), "--dry-run", *mode)

    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert str(models / DEFAULT_FOLDER / NAME) in result.stdout
    assert not models.exists()
    after = source.stat()
    assert (after.st_ino, after.st_nlink, after.st_mtime_ns) == (
        before.st_ino,
        before.st_nlink,
        before.st_mtime_ns,
    )


def test_user_repo_names_the_folder(home: Path, models: Path, source: Path) -> None:
    result = run_import(home, str(source), "--user-repo", "me/My_Model-v1.5-GGUF")

    assert result.returncode == 0, result.stderr
    target = models / "me" / "My_Model-v1.5-GGUF" / NAME
    assert files_under(models) == [target]
    entry = Catalog.scan(models).resolve(KEY)
    assert entry is not None and (entry.publisher, entry.repo) == ("me", "My_Model-v1.5-GGUF")


def test_at_a_terminal_the_folder_can_be_changed(home: Path, models: Path, source: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"typed/At-The-Prompt\n")
        result = subprocess.run(
            [sys.executable, "-m", "lmserve", "import", str(source), "--copy"],
            env={**os.environ, "LMSERVE_HOME": str(home)},
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == 0, result.stderr
    assert f"local/{KEY}-GGUF" in result.stderr  # the default was offered
    assert files_under(models) == [models / "typed" / "At-The-Prompt" / NAME]


@pytest.mark.parametrize(
    "user_repo",
    ["../x", "/abs", "/abs/path", "a/b/c", "a", "a/..", "../..", "a//b", "a/", "a b/c", "a/.c", ""],
)
def test_bad_user_repo_is_refused(
    home: Path, models: Path, source: Path, user_repo: str, tmp_path: Path
) -> None:
    result = run_import(home, str(source), "--user-repo", user_repo)

    assert_clean_error(result)
    assert source.is_file()
    assert not models.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["incoming"]


def test_a_file_that_is_not_gguf_is_refused(home: Path, models: Path, tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model at all\n")

    result = run_import(home, str(fake), "--copy")

    assert "not a valid GGUF" in assert_clean_error(result)
    assert fake.exists()
    assert not models.exists()


def test_a_gguf_without_the_extension_is_refused(home: Path, models: Path, source: Path) -> None:
    renamed = source.with_suffix(".bin")
    source.rename(renamed)

    result = run_import(home, str(renamed))

    assert ".gguf" in assert_clean_error(result)
    assert renamed.exists() and not models.exists()


def test_a_missing_file_is_refused(home: Path, models: Path, tmp_path: Path) -> None:
    result = run_import(home, str(tmp_path / "absent.gguf"))

    assert "does not exist" in assert_clean_error(result)
    assert not models.exists()


def test_an_existing_target_is_not_overwritten(home: Path, models: Path, source: Path) -> None:
    target = models / DEFAULT_FOLDER / NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"already here")

    result = run_import(home, str(source))

    assert "already exists" in assert_clean_error(result)
    assert target.read_bytes() == b"already here"
    assert source.is_file()


def test_only_one_way_of_importing_at_a_time(home: Path, source: Path) -> None:
    result = run_import(home, str(source), "--copy", "--symlink")

    assert result.returncode == 2
    assert "at most one" in result.stderr
    assert source.is_file() and not (home / "models").exists()


# -- a vision model's projector -----------------------------------------------------------------

PROJECTOR = "mmproj-SmolLM2-135M-Instruct-F16.gguf"


@pytest.fixture()
def projector(tmp_path: Path) -> Path:
    return write_projector(tmp_path / "projectors" / PROJECTOR)


@pytest.mark.parametrize("mode", ["move", "copy", "symlink", "hardlink"])
def test_mmproj_comes_with_the_model_the_same_way(
    home: Path, models: Path, source: Path, projector: Path, mode: str
) -> None:
    inode = projector.stat().st_ino
    flag = [] if mode == "move" else [f"--{mode}"]

    result = run_import(home, str(source), "--mmproj", str(projector), *flag)

    assert result.returncode == 0, result.stderr
    folder = models / DEFAULT_FOLDER
    target = folder / PROJECTOR
    assert files_under(models) == sorted([folder / NAME, target])
    assert str(target) in result.stdout
    assert projector.exists() == (mode != "move")
    assert target.is_symlink() == (mode == "symlink")
    if mode == "symlink":
        assert Path(os.readlink(target)) == projector.resolve()
    else:
        assert (target.stat().st_ino == inode) == (mode in ("move", "hardlink"))
    entry = Catalog.scan(models).resolve(KEY)
    assert entry is not None and entry.mmproj == target
    assert [e.path for e in Catalog.scan(models).entries] == [folder / NAME]


def test_a_projector_is_not_imported_as_a_model(home: Path, models: Path, projector: Path) -> None:
    result = run_import(home, str(projector))

    assert "is a vision projector, not a model" in assert_clean_error(result)
    assert "--mmproj" in result.stderr
    assert projector.is_file() and not models.exists()


def test_an_mmproj_that_is_no_projector_is_refused(
    home: Path, models: Path, source: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.gguf"
    shutil.copyfile(source, other)  # a model, not a projector

    result = run_import(home, str(source), "--mmproj", str(other))

    assert "is not a vision projector" in assert_clean_error(result)
    assert source.is_file() and other.is_file() and not models.exists()


def test_a_failed_model_import_takes_its_projector_back(
    models: Path, source: Path, projector: Path
) -> None:
    plan = plan_import(source, models_root=models, mmproj=projector)
    plan.target.parent.mkdir(parents=True)
    plan.target.write_bytes(b"in the way")  # there by the time the model's turn comes

    with pytest.raises(ModelImportError, match="already exists"):
        carry_out(plan)

    assert projector.is_file() and source.is_file()  # the projector moved back
    assert files_under(models) == [plan.target]
