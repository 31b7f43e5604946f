"""``lmserve get``: the real CLI, in a subprocess, against a stand-in for the Hugging Face hub.

The stand-in (tests/hf_standin.py) serves the real default model's bytes under various names,
quantizations and as a split model, and can break a connection, lie about a checksum or ignore
``Range``.  ``HF_ENDPOINT`` points huggingface_hub (and so lmserve) at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmserve.models.catalog import Catalog
from lmserve.models.default import DEFAULT_MODEL
from lmserve.models.hub import preferred_quantization, quantization_of
from lmserve.models.references import InvalidModelReference, parse_reference
from tests.hf_standin import HubStandIn
from tests.vision_assets import write_projector

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = DEFAULT_MODEL.sha256


@pytest.fixture(scope="session")
def model_bytes(default_model_file: Path) -> bytes:
    data = default_model_file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256
    return data


@pytest.fixture()
def hub() -> Iterator[HubStandIn]:
    with HubStandIn() as standin:
        yield standin


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def hub_env(hub: HubStandIn, home: Path, **extra: str) -> dict[str, str]:
    # HF_HOME in the home: no token cached on this machine leaks in.
    env = hub.env(home / "hf")
    env.update(LMSERVE_HOME=str(home))
    env.update(extra)
    return env


def run_get(
    hub: HubStandIn, home: Path, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserve", "get", *args],
        env=hub_env(hub, home, **extra_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() or path.is_symlink())


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """A non-zero exit with one 'Error: ...' line and no traceback; returns that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_downloads_into_lm_studio_layout(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    hub.add_file(REPO, "README.md", b"# SmolLM2\n", lfs=False)

    result = run_get(hub, home, REPO)

    assert result.returncode == 0, result.stderr
    target = home / "models" / REPO / FILE
    assert result.stdout.strip() == str(target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == SHA256
    assert files_under(home / "models") == [target]  # the README is not a model
    assert files_under(home / "downloads") == []
    entry = Catalog.scan(home / "models").resolve("smollm2-135m-instruct")
    assert entry is not None and entry.path == target
    # The metadata was asked with files_metadata=True, and no token was sent unasked.
    assert hub.requests[0].path == f"/api/models/{REPO}"
    assert hub.requests[0].query == {"blobs": ["true"]}
    assert all("authorization" not in request.headers for request in hub.requests)


def test_resumes_after_a_broken_connection(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    hub.cut_once(REPO, FILE, 30_000_000)

    first = run_get(hub, home, REPO)

    message = assert_clean_error(first)
    assert "resume" in message
    assert files_under(home / "models") == []
    part = home / "downloads" / REPO / f"{FILE}.part"
    assert files_under(home / "downloads") == [part]
    kept = part.stat().st_size
    assert 0 < kept <= 30_000_000
    assert part.read_bytes() == model_bytes[:kept]

    second = run_get(hub, home, REPO)

    assert second.returncode == 0, second.stderr
    assert hub.range_headers(FILE) == [None, f"bytes={kept}-"]
    assert (home / "models" / REPO / FILE).read_bytes() == model_bytes
    assert not part.exists()


def test_starts_over_when_the_server_ignores_range(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    hub.cut_once(REPO, FILE, 20_000_000)
    assert run_get(hub, home, REPO).returncode != 0
    hub.ignore_range = True  # answers 200 and the whole file to the resuming request

    result = run_get(hub, home, REPO)

    assert result.returncode == 0, result.stderr
    assert hub.range_headers(FILE)[1] is not None  # it did ask for a range
    assert (home / "models" / REPO / FILE).read_bytes() == model_bytes


def test_checksum_mismatch_is_refused_and_cleaned_up(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256, advertise_sha256="0" * 64)

    result = run_get(hub, home, REPO)

    message = assert_clean_error(result)
    assert "sha256 mismatch" in message
    assert hub.file_requests(FILE), "it should have downloaded before refusing"
    assert files_under(home / "models") == []
    assert files_under(home / "downloads") == []  # the part is gone too


def test_without_a_sha256_the_size_is_checked(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256, lfs=False)  # no lfs block: no sha256

    result = run_get(hub, home, REPO)

    assert result.returncode == 0, result.stderr
    assert "no sha256" in result.stderr
    assert (home / "models" / REPO / FILE).read_bytes() == model_bytes


# The repository's vision projector: never a quantization to choose, it comes with each.
PROJECTOR = "mmproj-SmolLM2-F16.gguf"


def add_quantizations(hub: HubStandIn, model_bytes: bytes, *quants: str) -> dict[str, str]:
    names = {quant: f"SmolLM2-135M-Instruct-{quant}.gguf" for quant in quants}
    for name in names.values():
        hub.add_file(REPO, name, model_bytes, sha256=SHA256)
    hub.add_file(REPO, PROJECTOR, b"GGUF projector", lfs=False)
    return names


def with_projector(home: Path, name: str) -> list[Path]:
    """What a download of the model ``name`` leaves in the models folder."""
    return sorted([home / "models" / REPO / name, home / "models" / REPO / PROJECTOR])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((f"{REPO}@q8_0",), "Q8_0"),
        ((REPO, "--quant", "f16"), "F16"),
        ((REPO, "--quant", "IQ4_XS"), "IQ4_XS"),
    ],
)
def test_a_named_quantization_is_the_one_downloaded(
    hub: HubStandIn, home: Path, model_bytes: bytes, args: tuple[str, ...], expected: str
) -> None:
    names = add_quantizations(hub, model_bytes, "Q4_K_M", "Q8_0", "F16", "IQ4_XS")

    result = run_get(hub, home, *args)

    assert result.returncode == 0, result.stderr
    assert files_under(home / "models") == with_projector(home, names[expected])
    fetched = [request.path.rsplit("/", 1)[1] for request in hub.file_requests()]
    assert fetched == [names[expected], PROJECTOR]


def test_with_yes_the_preferred_quantization_is_taken(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    names = add_quantizations(hub, model_bytes, "Q8_0", "Q4_K_M", "F16")

    result = run_get(hub, home, REPO, "-y")

    assert result.returncode == 0, result.stderr
    assert "taking Q4_K_M" in result.stderr
    assert files_under(home / "models") == with_projector(home, names["Q4_K_M"])


def test_without_a_terminal_the_preference_order_decides(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    names = add_quantizations(hub, model_bytes, "F16", "Q8_0", "Q5_K_M", "Q4_K_S")

    result = run_get(hub, home, REPO)  # stdin is not a terminal: nobody to ask

    assert result.returncode == 0, result.stderr
    assert "taking Q4_K_S" in result.stderr
    assert files_under(home / "models") == with_projector(home, names["Q4_K_S"])


def test_at_a_terminal_the_user_chooses(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    names = add_quantizations(hub, model_bytes, "Q8_0", "Q4_K_M", "F16")
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"2\n")  # the list comes in preference order: Q4_K_M, Q8_0, F16
        result = subprocess.run(
            [sys.executable, "-m", "lmserve", "get", REPO],
            env=hub_env(hub, home),
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == 0, result.stderr
    assert "1. Q4_K_M" in result.stderr and "2. Q8_0" in result.stderr
    assert files_under(home / "models") == with_projector(home, names["Q8_0"])


OTHER = "someone/SmolLM2-Tiny-GGUF"


def add_search_targets(hub: HubStandIn, model_bytes: bytes) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    hub.add_file(OTHER, "smollm2-tiny.Q4_1.gguf", model_bytes, sha256=SHA256)
    # More downloaded, but no GGUF file: a search for GGUF models must not offer it.
    hub.add_file("HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors", b"weights")
    hub.downloads.update({REPO: 500, OTHER: 20, "HuggingFaceTB/SmolLM2-135M-Instruct": 9000})


def test_a_search_takes_the_most_downloaded_gguf_match(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    add_search_targets(hub, model_bytes)

    result = run_get(hub, home, "SMOLLM2")

    assert result.returncode == 0, result.stderr
    assert f"taking {REPO}" in result.stderr
    assert files_under(home / "models") == [home / "models" / REPO / FILE]
    search = hub.requests[0]
    assert search.path == "/api/models"
    assert search.query["search"] == ["SMOLLM2"] and search.query["filter"] == ["gguf"]


def test_at_a_terminal_the_user_chooses_a_search_hit(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    add_search_targets(hub, model_bytes)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"2\n")  # the second most downloaded
        result = subprocess.run(
            [sys.executable, "-m", "lmserve", "get", "smollm2"],
            env=hub_env(hub, home),
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == 0, result.stderr
    assert f"1. {REPO}  (500 downloads)" in result.stderr
    assert f"2. {OTHER}  (20 downloads)" in result.stderr
    assert "SmolLM2-135M-Instruct " not in result.stderr  # the repository without GGUF files
    assert files_under(home / "models") == [home / "models" / OTHER / "smollm2-tiny.Q4_1.gguf"]


def test_a_search_without_matches_is_a_clean_error(hub: HubStandIn, home: Path) -> None:
    result = run_get(hub, home, "no-such-model")

    assert "no GGUF models on the hub match 'no-such-model'" in assert_clean_error(result)
    assert not home.exists() or files_under(home) == []


def test_an_unknown_quantization_lists_those_available(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    add_quantizations(hub, model_bytes, "Q4_K_M", "Q8_0")

    result = run_get(hub, home, f"{REPO}@q2_k")

    message = assert_clean_error(result)
    assert "Q2_K" in message and "Q4_K_M" in message and "Q8_0" in message
    assert "mmproj" not in message.lower()
    assert hub.download_requests() == []
    assert not (home / "models").exists()


def test_a_split_model_comes_whole(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    third = len(model_bytes) // 3
    pieces = [model_bytes[:third], model_bytes[third : 2 * third], model_bytes[2 * third :]]
    shards = [f"SmolLM2-135M-Instruct-Q4_K_M-{n:05d}-of-00003.gguf" for n in (1, 2, 3)]
    for name, piece in zip(shards, pieces, strict=True):
        hub.add_file(REPO, name, piece)
    hub.add_file(REPO, "SmolLM2-135M-Instruct-Q8_0.gguf", model_bytes, sha256=SHA256)

    result = run_get(hub, home, f"{REPO}@Q4_K_M")

    assert result.returncode == 0, result.stderr
    folder = home / "models" / REPO
    assert files_under(home / "models") == [folder / name for name in shards]
    assert b"".join((folder / name).read_bytes() for name in shards) == model_bytes
    assert result.stdout.split() == [str(folder / name) for name in shards]
    entries = Catalog.scan(home / "models").entries
    assert [entry.path for entry in entries] == [folder / shards[0]]


def test_a_broken_split_model_stays_out_of_models_until_whole(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    half = len(model_bytes) // 2
    shards = [f"SmolLM2-135M-Instruct-Q4_K_M-{n:05d}-of-00002.gguf" for n in (1, 2)]
    hub.add_file(REPO, shards[0], model_bytes[:half])
    hub.add_file(REPO, shards[1], model_bytes[half:])
    hub.cut_once(REPO, shards[1], 10_000_000)

    first = run_get(hub, home, REPO)

    assert_clean_error(first)
    assert files_under(home / "models") == []  # shard 1 is complete, but waits for shard 2
    staged = home / "downloads" / REPO
    assert (staged / f"{shards[0]}.part").stat().st_size == half

    second = run_get(hub, home, REPO)

    assert second.returncode == 0, second.stderr
    assert hub.range_headers(shards[0]) == [None]  # the complete part was not fetched again
    kept = hub.range_headers(shards[1])[1]
    assert kept is not None and kept != "bytes=0-"
    folder = home / "models" / REPO
    assert b"".join((folder / name).read_bytes() for name in shards) == model_bytes


def test_a_file_url_selects_that_file(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    names = add_quantizations(hub, model_bytes, "Q4_K_M", "Q8_0")

    result = run_get(hub, home, f"https://huggingface.co/{REPO}/blob/main/{names['Q8_0']}")

    assert result.returncode == 0, result.stderr
    assert "taking" not in result.stderr  # no choice was needed
    assert files_under(home / "models") == with_projector(home, names["Q8_0"])


def test_a_vision_models_projector_comes_with_it(
    hub: HubStandIn, home: Path, model_bytes: bytes, tmp_path: Path
) -> None:
    model = "SmolLM2-135M-Instruct-Q8_0.gguf"
    hub.add_file(REPO, model, model_bytes, sha256=SHA256)
    projector = write_projector(tmp_path / "projector.gguf").read_bytes()
    for name in ("mmproj-SmolLM2-F16.gguf", "mmproj-SmolLM2-Q8_0.gguf", "mmproj-SmolLM2-F32.gguf"):
        hub.add_file(REPO, name, projector)

    result = run_get(hub, home, REPO)

    assert result.returncode == 0, result.stderr
    folder = home / "models" / REPO
    chosen = folder / "mmproj-SmolLM2-Q8_0.gguf"  # the one of the model's quantization
    assert result.stdout.split() == [str(folder / model), str(chosen)]
    assert files_under(home / "models") == sorted([folder / model, chosen])
    assert chosen.read_bytes() == projector
    assert "vision projector: mmproj-SmolLM2-Q8_0.gguf" in result.stderr
    catalog = Catalog.scan(home / "models")
    assert [(entry.path, entry.mmproj) for entry in catalog.entries] == [(folder / model, chosen)]


def test_a_projector_alone_is_refused(hub: HubStandIn, home: Path, model_bytes: bytes) -> None:
    add_quantizations(hub, model_bytes, "Q4_K_M")

    result = run_get(hub, home, f"https://huggingface.co/{REPO}/blob/main/{PROJECTOR}")

    assert "is a vision projector, not a model" in assert_clean_error(result)
    assert hub.download_requests() == []


@pytest.mark.parametrize("prefix", ["https://huggingface.co/", "hf.co/"])
def test_a_repository_url_works(
    hub: HubStandIn, home: Path, model_bytes: bytes, prefix: str
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)

    result = run_get(hub, home, f"{prefix}{REPO}")

    assert result.returncode == 0, result.stderr
    assert (home / "models" / REPO / FILE).is_file()


def test_an_existing_download_is_not_fetched_again(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    assert run_get(hub, home, REPO).returncode == 0
    fetched = len(hub.download_requests())
    target = home / "models" / REPO / FILE
    inode = target.stat().st_ino

    result = run_get(hub, home, REPO)

    assert result.returncode == 0, result.stderr
    assert "already downloaded" in result.stderr
    assert result.stdout.strip() == str(target)
    assert len(hub.download_requests()) == fetched
    assert target.stat().st_ino == inode


def test_a_different_file_in_the_way_is_not_overwritten(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    target = home / "models" / REPO / FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's file")

    result = run_get(hub, home, REPO)

    assert "already exists" in assert_clean_error(result)
    assert target.read_bytes() == b"someone else's file"
    assert hub.download_requests() == []


@pytest.mark.parametrize(
    "ref",
    [
        "../evil",
        "/abs/path",
        "a/b/c/d",
        "bad name/x",
        "publisher/",
        "publisher/repo@",
        "pub/..",
        "https://example.com/publisher/repo",
        "https://huggingface.co/publisher/repo/blob/main/../../x.gguf",
        "https://huggingface.co/publisher/repo/blob/main/README.md",
    ],
)
def test_bad_references_are_refused(hub: HubStandIn, home: Path, ref: str) -> None:
    result = run_get(hub, home, ref)

    assert_clean_error(result)
    assert hub.requests == []  # refused before asking the hub anything
    assert not home.exists() or files_under(home) == []


def test_an_unknown_repository_is_a_clean_error(hub: HubStandIn, home: Path) -> None:
    result = run_get(hub, home, "nobody/nothing-GGUF")

    message = assert_clean_error(result)
    assert "nobody/nothing-GGUF" in message


def test_an_unreachable_hub_is_a_clean_error(hub: HubStandIn, home: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening

        result = run_get(hub, home, REPO, HF_ENDPOINT=url)

    assert "cannot reach the hub" in assert_clean_error(result)


def test_hf_token_is_sent_as_a_bearer_token(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)

    result = run_get(hub, home, REPO, HF_TOKEN="hf_standin_secret")

    assert result.returncode == 0, result.stderr
    api = [request for request in hub.requests if request.path.startswith("/api/")]
    files = hub.download_requests()
    assert api and files
    for request in api + files:
        assert request.headers.get("authorization") == "Bearer hf_standin_secret", request.path


CANCEL_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    from lmserve.models.download import DownloadCancelled, download
    from lmserve.models.hub import resolve_plan

    models, staging = Path(sys.argv[1]), Path(sys.argv[2])
    plan = resolve_plan(sys.argv[3], models_root=models)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done > 0:
            cancel.set()

    try:
        download(plan, staging_root=staging, progress=progress, cancel=cancel)
        outcome = "finished"
    except DownloadCancelled:
        outcome = "cancelled"
    part = staging / plan.repo_id / (plan.files[0].name + ".part")
    kept = part.stat().st_size if part.exists() else -1
    in_models = [str(p) for p in models.rglob("*") if p.is_file()]
    paths = download(plan, staging_root=staging, progress=lambda *done: seen.append(done))
    print(json.dumps({
        "outcome": outcome, "kept": kept, "in_models": in_models,
        "paths": [str(p) for p in paths], "last": seen[-1], "total": plan.total_bytes,
    }))
    """
)


def test_the_api_cancels_keeps_the_part_and_resumes(
    hub: HubStandIn, home: Path, model_bytes: bytes
) -> None:
    hub.add_file(REPO, FILE, model_bytes, sha256=SHA256)
    hub.chunk_delay_s = 0.005  # about half a second for the whole file: time to cancel

    result = subprocess.run(
        [sys.executable, "-c", CANCEL_SCRIPT, str(home / "models"), str(home / "dl"), REPO],
        env=hub_env(hub, home),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "cancelled"
    assert 0 < report["kept"] < len(model_bytes)
    assert report["in_models"] == []
    assert hub.range_headers(FILE) == [None, f"bytes={report['kept']}-"]
    assert report["paths"] == [str(home / "models" / REPO / FILE)]
    assert report["last"] == [len(model_bytes), len(model_bytes)] == [report["total"]] * 2
    assert (home / "models" / REPO / FILE).read_bytes() == model_bytes


# --- the pieces, directly ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("p/r", ("p/r", None, None)),
        ("p/r@q4_k_m", ("p/r", "Q4_K_M", None)),
        ("https://huggingface.co/p/r", ("p/r", None, None)),
        ("https://huggingface.co/p/r/", ("p/r", None, None)),
        ("hf.co/p/r", ("p/r", None, None)),
        ("https://hf.co/p/r@Q8_0", ("p/r", "Q8_0", None)),
        ("https://huggingface.co/p/r/blob/main/x.Q4_K_M.gguf", ("p/r", None, "x.Q4_K_M.gguf")),
        (
            "https://huggingface.co/p/r/resolve/main/sub/x.gguf?download=true",
            ("p/r", None, "sub/x.gguf"),
        ),
    ],
)
def test_parse_reference_accepts(ref: str, expected: tuple[str, str | None, str | None]) -> None:
    assert parse_reference(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "p",
        "p/r/x",
        "../evil",
        "/abs/path",
        "a/b/c/d",
        "bad name/x",
        "p/r@q4 k",
        "p//r",
        "p/r\\x",
        "ftp://huggingface.co/p/r",
        "https://evil.example/p/r",
        "p/.hidden",
        "https://huggingface.co/p/r/blob/main/x.gguf@q4_0",
        "https://huggingface.co/p/r/tree",
    ],
)
def test_parse_reference_refuses(ref: str) -> None:
    with pytest.raises(InvalidModelReference):
        parse_reference(ref)


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-0.5b-instruct-q8_0.gguf", "Q8_0"),
        ("gemma-2-2b-it-IQ4_XS.gguf", "IQ4_XS"),
        ("model-bf16.gguf", "BF16"),
        ("model.fp16.gguf", "F16"),
        ("Big-Q5_K_M-00002-of-00004.gguf", "Q5_K_M"),
        ("Qwen2-7B.gguf", None),
    ],
)
def test_quantization_is_read_from_file_names(name: str, quant: str | None) -> None:
    assert quantization_of(name) == quant


def test_preference_order() -> None:
    assert preferred_quantization(["F16", "Q8_0", "Q4_0", "Q5_K_M"]) == "Q5_K_M"
    assert preferred_quantization(["F16", "Q8_0", "Q4_0"]) == "Q4_0"
    assert preferred_quantization(["BF16", "Q3_K_XL"]) == "Q3_K_XL"  # floats come last
