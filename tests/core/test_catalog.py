"""Asset catalogue: the shipped catalogue loads, and an invalid file is refused naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.assets import CatalogError, load_catalog
from core.settings import Settings
from core.units import parse_cpu, parse_size

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_catalogue_loads_and_its_local_command_is_absolute() -> None:
    [asset] = load_catalog(ROOT / "assets")
    assert asset.id == "dummy-job"
    assert {p.name: p.default for p in asset.parameters} == {"SLEEPTIME": 2, "FAIL": 0}
    assert asset.local is not None
    script = Path(asset.local.command[-1])
    assert script.is_absolute() and script.exists()


def test_default_settings_find_the_shipped_catalogue_from_any_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert [a.id for a in load_catalog(Settings().catalog_dir)] == ["dummy-job"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("id: Bad Id\nname: x\nimage: i\n", "id"),
        ("id: ok\nname: x\nimage: i\nresources: {memory: lots}\n", "resources.memory"),
        ("id: ok\nname: x\nimage: i\ninputs: [{name: a, path: ../../etc}]\n", "<root>"),
        ("id: ok\nname: x\nimage: i\nparameters: [{name: P, type: float}]\n", "parameters.0.type"),
        ("id: ok\nname: x\nimage: i\nsurprise: 1\n", "surprise"),
        ("id: ok\nimage: i\n", "name"),
    ],
)
def test_an_invalid_asset_file_is_refused_naming_file_and_field(
    tmp_path: Path, body: str, field: str
) -> None:
    (tmp_path / "broken.yaml").write_text(body)
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    assert "broken.yaml" in str(caught.value)
    assert f"field '{field}'" in str(caught.value)


def test_duplicate_asset_ids_are_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("id: same\nname: x\nimage: i\n")
    with pytest.raises(CatalogError, match="already defined"):
        load_catalog(tmp_path)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(CatalogError, match=r"list\.yaml: an asset file must be a YAML mapping"):
        load_catalog(tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("1KiB", 1024), ("256Mi", 256 * 1024**2), ("1G", 10**9), ("1.5GiB", 3 * 1024**3 // 2)],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_cpu_parses_cores_and_millicores() -> None:
    assert parse_cpu("500m") == 0.5
    assert parse_cpu(2) == 2.0
    with pytest.raises(ValueError, match="positive"):
        parse_cpu("0")
