"""Choosing a storage backend by URL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backends.storage import registry
from backends.storage.file import FileStorageBackend
from backends.storage.registry import StorageConfigurationError, create_storage


def test_file_url_builds_the_file_backend(tmp_path: Path) -> None:
    storage = create_storage(f"file://{tmp_path}/files")

    assert isinstance(storage, FileStorageBackend)
    assert storage.root == tmp_path / "files"


@pytest.mark.parametrize("relative", ["file://data", "data", "./data"])
def test_relative_urls_and_plain_paths_are_file_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    monkeypatch.chdir(tmp_path)

    storage = create_storage(relative)

    assert isinstance(storage, FileStorageBackend)
    assert storage.root == tmp_path / "data"


def test_plain_absolute_path_is_file_storage(tmp_path: Path) -> None:
    storage = create_storage(str(tmp_path / "odd%name"))

    assert isinstance(storage, FileStorageBackend)
    assert storage.root == tmp_path / "odd%name"


def test_s3_is_reported_as_not_available_in_this_build() -> None:
    if "backends.storage.s3" in sys.modules or _s3_exists():
        pytest.skip("the s3 backend exists in this build")

    with pytest.raises(ValueError, match="s3 storage backend is not available in this build"):
        create_storage("s3://bucket?endpoint=http://minio:9000&region=eu-1")


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(StorageConfigurationError, match=r"unknown storage scheme 'ftp'.*file://, s3://"):
        create_storage("ftp://example.org/x")


@pytest.mark.parametrize("url", ["", "   ", "file:///x?mode=fast"])
def test_unusable_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(StorageConfigurationError):
        create_storage(url)


def test_backend_missing_a_dependency_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wml_test_fake_backend.py").write_text("import wml_test_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BACKENDS, "fake", "wml_test_fake_backend:FakeBackend")

    with pytest.raises(StorageConfigurationError, match="'wml_test_missing_dependency'"):
        create_storage("fake://x")


def test_backend_module_without_the_class_is_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "fake", "json:NoSuchBackend")

    with pytest.raises(StorageConfigurationError, match="not available"):
        create_storage("fake://x")


def _s3_exists() -> bool:
    return (Path(registry.__file__).parent / "s3.py").exists()
