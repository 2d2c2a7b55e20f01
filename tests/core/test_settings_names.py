"""Nested settings keep every name a deployment sets: the flat ``WML_*`` variable of each nested setting
still sets it, the nested ``WML_<GROUP>__<NAME>`` form works too and wins, and an invalid value is reported
under the flat name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import SecretStr

from core.settings import FLAT_NAMES, NESTED, Settings
from tests.support.processes import serve_once

# Values that pass the constrained settings (patterns, pairs); any other setting takes one by its type.
SAMPLES = {
    "image_pull_policy": "Never",
    "deprovision_retention": "keep",
    "callback_origins": "https://connector.example:8443",
    "sandbox": "off",
    "job_volume": "pvc",
    "management_url": "http://provider-edc:8181/management",
}
PAIRED = {"s3_access_key_id": "s3_secret_access_key", "s3_secret_access_key": "s3_access_key_id"}


def _sample(concern: str, name: str) -> tuple[str, Any]:
    """A value for the setting, as its variable's text and as the parsed value it must become."""
    if name in SAMPLES:
        return str(SAMPLES[name]), SAMPLES[name]
    field = Settings.model_fields[concern].annotation.model_fields[name]  # type: ignore[union-attr]
    kind = next(t for t in (get_args(field.annotation) or (field.annotation,)) if t is not type(None))
    if kind is bool:
        return ("false", False) if field.default else ("true", True)
    if kind is int:
        return "7", 7
    if kind is float:
        return "2.5", 2.5
    if kind is Path:
        return "/srv/kube/config", Path("/srv/kube/config")
    return "chosen-value", "chosen-value"


def _read(settings: Settings, concern: str, name: str) -> Any:
    value = getattr(getattr(settings, concern), name)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize("flat", sorted(FLAT_NAMES))
def test_each_flat_variable_still_sets_its_nested_setting(flat: str, monkeypatch: pytest.MonkeyPatch) -> None:
    concern, name = FLAT_NAMES[flat]
    text, expected = _sample(concern, name)
    given = {flat: text, **({PAIRED[flat]: "the-other-key"} if flat in PAIRED else {})}
    for variable, value in given.items():
        monkeypatch.setenv(f"WML_{variable.upper()}", value)
    assert _read(Settings(), concern, name) == expected
    for variable in given:
        monkeypatch.delenv(f"WML_{variable.upper()}")
    assert _read(Settings(**given), concern, name) == expected  # and as a keyword


@pytest.mark.parametrize(
    ("flat", "concern", "name"),
    [
        ("k8s_context", "kubernetes", "context"),
        ("edc_api_key", "edc", "api_key"),
        ("s3_access_key_id", "s3", "access_key_id"),
    ],
)
def test_the_nested_form_sets_a_setting_and_wins_over_the_flat_one(
    flat: str, concern: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if concern == "s3":
        monkeypatch.setenv("WML_S3_SECRET_ACCESS_KEY", "the-other-key")  # S3 keys come in pairs
    monkeypatch.setenv(f"WML_{concern.upper()}__{name.upper()}", "nested")
    assert _read(Settings(), concern, name) == "nested"
    monkeypatch.setenv(f"WML_{flat.upper()}", "flat")
    assert _read(Settings(), concern, name) == "nested"
    monkeypatch.delenv(f"WML_{concern.upper()}__{name.upper()}")
    assert _read(Settings(), concern, name) == "flat"


def test_every_group_is_covered() -> None:
    assert set(NESTED) == {concern for concern, _ in FLAT_NAMES.values()}


def test_an_invalid_value_is_reported_under_the_variable_the_user_set(tmp_path: Path) -> None:
    done = serve_once(tmp_path, WML_K8S_BURST="many")
    assert done.returncode == 2
    assert "WML_K8S_BURST" in done.stderr and "many" not in done.stderr


def test_a_keyword_beats_the_environment_in_either_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WML_KUBERNETES__API_URL", "https://from-the-environment:6443")
    monkeypatch.setenv("WML_K8S_BURST", "3")

    settings = Settings(k8s_api_url="https://from-the-keyword:6443", kubernetes={"burst": 9})

    assert settings.kubernetes.api_url == "https://from-the-keyword:6443"
    assert settings.kubernetes.burst == 9
