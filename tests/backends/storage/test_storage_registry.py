"""Choosing a storage backend by URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.storage import registry
from backends.storage.base import StorageCredentials
from backends.storage.file import FileStorageBackend
from backends.storage.registry import StorageConfigurationError, create_storage
from backends.storage.s3.backend import S3StorageBackend
from backends.storage.s3.url import S3Location


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


def test_s3_url_builds_the_s3_backend_with_the_credentials_handed_in() -> None:
    keys = StorageCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI")

    storage = create_storage("s3://bucket/pre/fix?endpoint=http://minio:9000&region=eu-1", credentials=keys)

    assert isinstance(storage, S3StorageBackend)
    assert storage.location == S3Location(
        bucket="bucket", endpoint="http://minio:9000", region="eu-1", prefix="pre/fix/"
    )
    assert "wJalrXUtnFEMI" not in repr(keys)


def test_invalid_s3_url_is_a_configuration_error_that_does_not_repeat_the_url() -> None:
    with pytest.raises(StorageConfigurationError) as caught:
        create_storage("s3://bucket?endpoint=http://minio:9000&secret=hunter2")

    assert "unknown parameter 'secret'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_file_storage_ignores_credentials(tmp_path: Path) -> None:
    storage = create_storage(f"file://{tmp_path}", credentials=StorageCredentials("id", "secret"))

    assert isinstance(storage, FileStorageBackend)


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
