"""The storage settings: S3 keys come in pairs, reach the backend as credentials, and never show."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backends.storage.base import StorageCredentials
from core.settings import Settings


def test_both_keys_become_explicit_credentials() -> None:
    settings = Settings(s3_access_key_id="AKID", s3_secret_access_key="hunter2")

    assert settings.storage_credentials() == StorageCredentials("AKID", "hunter2")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(settings.storage_credentials())


def test_no_keys_leave_the_standard_chain_to_the_backend() -> None:
    assert Settings().storage_credentials() is None


@pytest.mark.parametrize("given", [{"s3_access_key_id": "AKID"}, {"s3_secret_access_key": "hunter2"}])
def test_one_key_alone_is_refused(given: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="set both WML_S3_ACCESS_KEY_ID and WML_S3_SECRET_ACCESS_KEY"):
        Settings(**given)
