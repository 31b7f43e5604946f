"""The GGUF header reader on the real default model, and on broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmserve.models.catalog import Catalog, model_key
from lmserve.models.gguf import GGUFError, read_header


def test_reads_the_default_model(default_model_file: Path) -> None:
    header = read_header(default_model_file)
    assert header.architecture == "llama"
    assert header.context_length == 8192
    assert header.quantization == "Q4_1"
    assert 130e6 < header.parameter_count < 140e6
    assert header.chat_template and "<|im_start|>" in header.chat_template
    assert not header.is_embedding_model


def test_truncated_file_is_refused(tmp_path: Path, default_model_file: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(default_model_file.read_bytes()[:5000])
    with pytest.raises(GGUFError):
        read_header(cut)


def test_not_gguf_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"PK\3\4 not a model")
    with pytest.raises(GGUFError):
        read_header(bogus)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
        ("gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m"),
        ("Qwen2.5-7B-Instruct-Q8_0-00001-of-00003.gguf", "qwen2.5-7b-instruct"),
        ("model-f16.gguf", "model"),
    ],
)
def test_model_keys(name: str, key: str) -> None:
    assert model_key(name) == key


def test_catalog_skips_broken_files_and_later_shards(
    tmp_path: Path, default_model_file: Path
) -> None:
    repo = tmp_path / "pub" / "repo"
    repo.mkdir(parents=True)
    (repo / "good.Q4_1.gguf").symlink_to(default_model_file)
    (repo / "broken.gguf").write_bytes(b"nope")
    (repo / "big-00002-of-00002.gguf").symlink_to(default_model_file)
    catalog = Catalog.scan(tmp_path)
    assert [entry.key for entry in catalog.entries] == ["good"]
    assert catalog.resolve("GOOD") is catalog.entries[0]
    assert catalog.resolve("pub/repo/good.Q4_1.gguf") is catalog.entries[0]
