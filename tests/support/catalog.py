"""Test asset catalogues: the real dummy job plus variants with short timeouts, written to a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "dummy-job" / "entrypoint.sh"


def dummy_asset(asset_id: str = "dummy-job", **overrides: Any) -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "assets" / "dummy-job.yaml").read_text())
    spec["id"] = asset_id
    spec["local"] = {"command": ["sh", str(ENTRYPOINT)]}
    spec.update(overrides)
    return spec


def write_catalog(directory: Path, assets: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for spec in assets:
        (directory / f"{spec['id']}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return directory


def standard_assets() -> list[dict[str, Any]]:
    """The dummy job, a second asset for tenancy tests, and short-timeout variants."""
    return [
        dummy_asset(),
        dummy_asset("other-job", name="Another job"),
        dummy_asset("quick-timeout", timeouts={"queue": 2, "start": 30, "run": 1}),
        dummy_asset("no-output", local={"command": ["sh", "-c", "echo nothing here"]}),
        # A TES task may bring its own commands (up to three, run in order) for this one.
        dummy_asset("shell-job", name="Shell job", consumerCommands=True, maxCommands=3),
        dummy_asset(
            "small-input",
            inputs=[{"name": "data", "kind": "file", "path": "data", "required": True, "maxSize": 1024}],
        ),
    ]


# Like the original middle-layer's CARLA service description: an absolute output directory, command and
# args, a GPU; plus inputs placed at absolute paths (a file and an archive).
CARLA: dict[str, Any] = {
    "service_id": "carla",
    "inputs": [
        {"resource_name": "env", "type": 1, "description": "List of environment variables for CARLA"},
        {
            "resource_name": "scenario.xosc",
            "type": 2,
            "mount_path": "/home/carla/scenarios/",
            "description": "",
        },
        {"resource_name": "maps", "type": 3, "mount_path": "/opt/maps", "description": "Extra maps"},
    ],
    "outputs": [{"resource_name": "rosbag", "type": 2, "description": "Generated rosbag file"}],
    "workflow_resource": {
        "worker_image": "harbor.example.org/gx4ki/carla:latest",
        "worker_image_output_directory": "/home/carla/rosbag",
        "worker_image_command": ["/bin/bash", "-c"],
        "worker_image_args": ["./run-scenario.sh --record /home/carla/rosbag"],
        "gpu": True,
    },
}
