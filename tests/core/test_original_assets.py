"""The original middle-layer's service description JSON as a catalogue format, and ``wml assets convert``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.assets import CatalogError, InputSlotKind, load_asset_file, load_catalog
from sidecar.dotenv import accepted, parse_dotenv
from tests.support.catalog import CARLA

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted([*(ROOT / "assets").glob("*.yaml"), *(ROOT / "dummy-job").glob("*.json")])


def convert(path: Path) -> subprocess.CompletedProcess[str]:
    """``wml assets convert PATH``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "wml.cli", "assets", "convert", str(path)],
        env={"PATH": "/usr/bin:/bin", "WML_LOG_LEVEL": "WARNING"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_json(directory: Path, name: str, document: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_the_original_dummy_asset_json_loads_from_the_catalogue(tmp_path: Path) -> None:
    (tmp_path / "original-asset.json").write_bytes((ROOT / "dummy-job" / "original-asset.json").read_bytes())

    [asset] = load_catalog(tmp_path)

    assert (asset.id, asset.image, asset.output_directory) == (
        "dummy-job-original",
        "localhost/wml/dummy-job:1",
        "/output",
    )
    [env] = asset.inputs
    assert (env.name, env.kind, env.keys, env.required) == ("env", InputSlotKind.ENV, ["*"], True)
    [result] = asset.outputs
    assert (result.name, result.path, result.required) == ("result", "result", True)
    # The defaults for what the original did not describe (stated in the README).
    assert (asset.resources.cpu, asset.resources.memory, asset.resources.gpu) == (1.0, 2 * 1024**3, 0)
    assert (asset.timeouts.queue, asset.timeouts.start, asset.timeouts.run) == (86400, 1800, 86400)


def test_a_carla_like_description_maps_every_field(tmp_path: Path) -> None:
    asset = load_asset_file(write_json(tmp_path, "carla.json", CARLA))

    assert asset.command == ["/bin/bash", "-c"]
    assert asset.args == ["./run-scenario.sh --record /home/carla/rosbag"]
    assert (asset.resources.gpu, asset.output_directory) == (1, "/home/carla/rosbag")
    env, scenario, maps = asset.inputs
    assert (env.kind, env.worker_path) == (InputSlotKind.ENV, None)
    assert (scenario.name, scenario.kind, scenario.worker_path) == (
        "scenario_xosc",
        InputSlotKind.FILE,
        "/home/carla/scenarios/scenario.xosc",
    )
    assert (maps.kind, maps.worker_path) == (InputSlotKind.ARCHIVE, "/opt/maps")
    assert [(o.name, o.path) for o in asset.outputs] == [("rosbag", "rosbag")]


def test_an_original_env_input_accepts_any_key_but_the_reserved_ones(tmp_path: Path) -> None:
    asset = load_asset_file(write_json(tmp_path, "carla.json", CARLA))
    keys = asset.inputs[0].keys or []
    original_env = (ROOT / "dummy-job" / "original.env").read_bytes()

    assert accepted(parse_dotenv(original_env), keys) == {
        "SOURCE": "/etc/os-release",
        "DESTINATION": "/output/result",
        "SLEEPTIME": "10",
    }
    for reserved in ("LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "PATH", "WML_OUTPUTS_DIR"):
        with pytest.raises(ValueError, match=reserved):
            accepted({"TOWN": "Town01", reserved: "x"}, keys)


def test_an_input_replacing_the_images_script_needs_the_extension_flag(tmp_path: Path) -> None:
    entrypoint = {"resource_name": "entrypoint.sh", "type": 2, "mount_path": "/app/", "description": ""}
    document = {
        "service_id": "scripted",
        "inputs": [entrypoint],
        "outputs": [],
        "workflow_resource": {
            "worker_image": "localhost/wml/dummy-job:1",
            "worker_image_command": ["/bin/sh", "/app/entrypoint.sh"],
            "worker_image_output_directory": "/output/",
            "gpu": False,
        },
    }
    with pytest.raises(CatalogError, match="replacesImageFile"):
        load_asset_file(write_json(tmp_path, "scripted.json", document))

    document["inputs"] = [{**entrypoint, "replaces_image_file": True}]
    asset = load_asset_file(write_json(tmp_path, "scripted.json", document))

    assert asset.inputs[0].worker_path == "/app/entrypoint.sh"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"service_id": "Not An Id"}, "id"),
        ({"inputs": [{"resource_name": "x", "type": 4, "description": ""}]}, "inputs.0.type"),
        ({"workflow_resource": {"gpu": False}}, "workflow_resource.worker_image"),
        ({"workflow_resource": {**CARLA["workflow_resource"], "worker_image_output_directory": "/etc"}},
         "outputDirectory"),
        ({"inputs": [{"resource_name": "d", "type": 2, "mount_path": "/proc/1", "description": ""}]},
         "mountPath"),
    ],
)  # fmt: skip
def test_an_invalid_description_names_the_file_and_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    path = write_json(tmp_path, "bad.json", {**CARLA, **change})

    with pytest.raises(CatalogError) as refused:
        load_asset_file(path)

    assert str(path) in str(refused.value) and field in str(refused.value)


def test_an_unreadable_json_file_is_a_catalogue_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")

    with pytest.raises(CatalogError, match="cannot read"):
        load_asset_file(tmp_path / "broken.json")
    with pytest.raises(CatalogError, match="JSON object"):
        load_asset_file(tmp_path / "list.json")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_convert_round_trips_every_example_asset(example: Path, tmp_path: Path) -> None:
    done = convert(example)
    converted = tmp_path / "converted.yaml"
    converted.write_text(done.stdout, encoding="utf-8")

    assert done.returncode == 0, done.stderr
    assert load_asset_file(converted) == load_asset_file(example)
    assert "timeouts:" in done.stdout and "resources:" in done.stdout  # every field explicit


def test_convert_round_trips_a_carla_like_description(tmp_path: Path) -> None:
    source = write_json(tmp_path, "carla.json", CARLA)

    done = convert(source)
    (tmp_path / "carla.yaml").write_text(done.stdout, encoding="utf-8")

    assert done.returncode == 0, done.stderr
    assert load_asset_file(tmp_path / "carla.yaml") == load_asset_file(source)


def test_convert_of_an_invalid_file_says_why(tmp_path: Path) -> None:
    done = convert(write_json(tmp_path, "bad.json", {"service_id": "x"}))

    assert done.returncode == 2
    assert "workflow_resource" in done.stderr
