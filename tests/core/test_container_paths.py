"""Absolute container paths in assets: inputs placed at ``mountPath``, outputs read from ``outputDirectory``;
hostile paths are refused when the asset loads, with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.assets import Asset, InputSlotKind


def asset(**overrides: Any) -> Asset:
    spec: dict[str, Any] = {"id": "placed", "name": "Placed", "image": "localhost/wml/dummy-job:1"}
    spec.update(overrides)
    return Asset.model_validate(spec)


def test_a_file_lands_under_its_mount_path_and_an_archive_is_extracted_at_it() -> None:
    placed = asset(
        inputs=[
            {"name": "data", "kind": "file", "mountPath": "/data/", "path": "input.csv"},
            {"name": "plain", "kind": "file", "mountPath": "/data"},
            {"name": "maps", "kind": "archive", "mountPath": "/opt/maps"},
            {"name": "config", "kind": "env", "keys": ["A"]},
        ],
        outputDirectory="/home/carla/rosbag/",
        outputs=[{"name": "rosbag", "path": "rosbag"}],
    )

    by_name = {s.name: s for s in placed.inputs}
    assert by_name["data"].worker_path == "/data/input.csv"
    assert by_name["plain"].worker_path == "/data/plain"
    assert by_name["maps"].kind == InputSlotKind.ARCHIVE and by_name["maps"].worker_path == "/opt/maps"
    assert by_name["config"].worker_path is None
    assert placed.output_directory == "/home/carla/rosbag"


def test_relative_paths_keep_working_as_before() -> None:
    plain = asset(inputs=[{"name": "data", "path": "sub/data"}], outputs=[{"name": "r", "path": "r.txt"}])

    assert plain.inputs[0].worker_path is None and plain.output_directory is None


@pytest.mark.parametrize(
    "path",
    [
        "data",  # relative
        "/",
        "",
        "/data/../etc",
        "/..",
        "/data/./x",
        "/a//b",
        "/proc",
        "/proc/self",
        "/dev/shm",
        "/sys/fs",
        "/etc",
        "/etc/ssl/certs",
        "/usr/local/bin",
        "/var",  # above /var/run
        "/var/run/docker.sock",
        "/run/secrets",
        "/tmp/x",
        "/wml/inputs",
        "/bin",
        "/lib64",
        "/data x",
        "/data:/host",
        "/data,rw",
        "/data\n",
        "/da\x00ta",
        "/" + "a" * 300,
        "/data/$HOME",
    ],
)
@pytest.mark.parametrize("where", ["mountPath", "outputDirectory"])
def test_hostile_container_paths_are_refused(path: str, where: str) -> None:
    spec: dict[str, Any] = (
        {"inputs": [{"name": "data", "mountPath": path}]}
        if where == "mountPath"
        else {"outputDirectory": path}
    )
    with pytest.raises(ValidationError) as refused:
        asset(**spec)

    assert where in str(refused.value)


def test_a_placed_file_path_is_checked_whole() -> None:
    with pytest.raises(ValidationError, match="stay inside"):
        asset(inputs=[{"name": "x", "mountPath": "/opt", "path": "../etc/passwd"}])
    with pytest.raises(ValidationError, match="only letters"):
        asset(inputs=[{"name": "x", "mountPath": "/opt", "path": "a b:/etc"}])


@pytest.mark.parametrize(
    ("inputs", "output_directory", "problem"),
    [
        ([{"name": "a", "mountPath": "/output"}], "/output", "overlaps the outputDirectory"),
        ([{"name": "a", "kind": "archive", "mountPath": "/"}], None, "cannot be mounted over"),
        (
            [{"name": "a", "kind": "archive", "mountPath": "/work/out"}],
            "/work",
            "overlaps the outputDirectory",
        ),
        (
            [{"name": "a", "kind": "archive", "mountPath": "/data"}, {"name": "b", "mountPath": "/data"}],
            None,
            "overlap",
        ),
        (
            [
                {"name": "a", "mountPath": "/data", "path": "x"},
                {"name": "b", "mountPath": "/data", "path": "x"},
            ],
            None,
            "overlap",
        ),
    ],
)
def test_placements_never_overlap(
    inputs: list[dict[str, Any]], output_directory: str | None, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        asset(inputs=inputs, outputDirectory=output_directory, outputs=[{"name": "r", "path": "r"}])


def test_two_files_side_by_side_in_one_directory_are_fine() -> None:
    placed = asset(inputs=[{"name": "a", "mountPath": "/data"}, {"name": "b", "mountPath": "/data"}])

    assert [s.worker_path for s in placed.inputs] == ["/data/a", "/data/b"]


def test_an_input_may_replace_the_commands_script_only_where_the_asset_allows_it() -> None:
    slot = {"name": "script", "mountPath": "/app", "path": "entrypoint.sh"}
    with pytest.raises(ValidationError, match="replacesImageFile"):
        asset(command=["/bin/sh", "/app/entrypoint.sh"], inputs=[slot])
    with pytest.raises(ValidationError, match="replacesImageFile"):
        asset(command=["sh", "-c"], args=["cd /app && /app/run.sh"], inputs=[{**slot, "kind": "archive"}])

    allowed = asset(command=["/bin/sh", "/app/entrypoint.sh"], inputs=[{**slot, "replacesImageFile": True}])

    assert allowed.inputs[0].worker_path == "/app/entrypoint.sh"


def test_an_env_slot_takes_no_mount_path() -> None:
    with pytest.raises(ValidationError, match="no mountPath"):
        asset(inputs=[{"name": "config", "kind": "env", "keys": ["A"], "mountPath": "/config"}])
