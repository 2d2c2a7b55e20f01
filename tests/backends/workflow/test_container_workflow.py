"""The container backend beyond the shared contract: real podman runs (OOM, restart, cleanup) and its CLI;
the OOM case also through the docker CLI (against podman's Docker-compatible service).

The image and containers.conf come from scripts/podman-setup (run by `make test`). On this kind of host
(cgroup v1, runc) podman applies the memory limit but does not record ``State.OOMKilled``: the OOM test
checks the kill and its mapping, which the backend infers from a SIGKILL exit it did not send.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from backends.workflow.base import InputKind, JobRun, Resources, RunPhase
from backends.workflow.host.container.backend import ContainerWorkflowBackend
from backends.workflow.host.container.cli import INPUTS_MOUNT, run_args
from backends.workflow.host.uids import job_uid
from backends.workflow.registry import WorkflowConfigurationError, create_workflow_backend
from tests.backends.workflow.conftest import (
    PODMAN,
    make_container_backend,
    make_docker_backend,
    placed_inputs,
)
from tests.backends.workflow.test_local_workflow import StalledStorage
from wml.demo import pick_workflow


async def _container_ids(backend: ContainerWorkflowBackend) -> list[str]:
    _, out, _ = await PODMAN.run("ps", "-aq", "--filter", f"label=wml/instance={backend.instance}")
    return out.split()


@pytest.mark.parametrize("engine", ["podman", "docker"])
async def test_a_memory_hungry_worker_ends_oom_killed(
    container_work_dir: Path, storage, make_run, updates_of, engine, request
) -> None:
    backend = (
        make_docker_backend(container_work_dir, storage, request.getfixturevalue("docker_host"))
        if engine == "docker"
        else make_container_backend(container_work_dir, storage)
    )
    await backend.start()
    # A shell variable of 200 MB in a container limited to 32 MiB (no swap).
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    run = make_run(command=["/bin/sh", "-c", hog], resources=Resources(cpu=1.0, memory=32 * 1024 * 1024))
    try:
        ref = await backend.submit(run)
        final = await updates_of(backend).terminal(ref, timeout=30)
    finally:
        await backend.close()

    assert (final.phase, final.reason, final.exit_code) == (RunPhase.FAILED, "OOM_KILLED", 137)
    assert final.log_tail is not None
    assert "survived" not in final.log_tail
    await backend.cleanup(ref)


async def test_a_restarted_backend_reattaches_to_the_running_container(
    container_work_dir: Path, storage, make_run, updates_of, read_object
) -> None:
    first = make_container_backend(container_work_dir, storage)
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "3"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()  # the server stops; the container keeps running

    second = make_container_backend(container_work_dir, storage)
    await second.start()
    try:
        [now] = await second.reconcile([ref])
        assert now.phase == RunPhase.RUNNING
        final = await updates_of(second).terminal(ref, timeout=30)
        assert (final.phase, final.exit_code) == (RunPhase.SUCCEEDED, 0)
        [output] = final.outputs
        assert b"dummy-job: SLEEPTIME=3" in await read_object(output.key)
        assert final.log is not None
        assert b"progress 3/3" in await read_object(final.log.key)

        await second.cleanup(ref)
        assert await _container_ids(second) == []
        assert not (container_work_dir / ref).exists()
    finally:
        await second.close()


async def test_the_run_timeout_counts_across_a_restart(
    container_work_dir: Path, storage, make_run, updates_of
) -> None:
    first = make_container_backend(container_work_dir, storage)
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "30"}, run_timeout=1))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()
    await asyncio.sleep(1.2)  # the deadline passes while no server runs

    second = make_container_backend(container_work_dir, storage)
    await second.start()
    try:
        [now] = await second.reconcile([ref])
        assert now.phase == RunPhase.RUNNING
        final = await updates_of(second).terminal(ref, timeout=30)
    finally:
        await second.close()

    assert (final.phase, final.reason) == (RunPhase.FAILED, "RUN_TIMEOUT")
    await second.cleanup(ref)
    assert await _container_ids(second) == []


async def test_the_worker_container_is_labelled_unprivileged_and_offline(
    container_work_dir: Path, storage, make_run, updates_of, monkeypatch
) -> None:
    monkeypatch.setenv("WML_SERVER_SECRET", "must-not-reach-the-engine")
    backend = make_container_backend(container_work_dir, storage)
    await backend.start()
    run = make_run(env={"SLEEPTIME": "0", "TOKEN": "value-not-on-a-command-line"})
    try:
        ref = await backend.submit(run)
        await updates_of(backend).terminal(ref)
        [container] = await _container_ids(backend)
        _, out, _ = await PODMAN.run("container", "inspect", "--format", "json", container)
        [info] = json.loads(out)
        other = make_run(job_id="job-2", env={"SLEEPTIME": "0"})
        await updates_of(backend).terminal(await backend.submit(other))
        [second] = [c for c in await _container_ids(backend) if c != container]
        _, out, _ = await PODMAN.run("container", "inspect", "--format", "json", second)
        [info_2] = json.loads(out)
    finally:
        await backend.close()

    labels = info["Config"]["Labels"]
    assert labels["app.kubernetes.io/managed-by"] == "workflow-middlelayer"
    assert (labels["wml/job-id"], labels["wml/consumer-id"], labels["wml/asset-id"]) == (
        ref,
        "c1",
        "dummy-job",
    )
    host = info["HostConfig"]
    # A uid of the job's own (the tests run as root), another for another job; never root.
    uid = job_uid(ref)
    assert info["Config"]["User"] == f"{uid}:{uid}"
    assert info_2["Config"]["User"] != info["Config"]["User"]
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == run.resources.memory
    assert host["CapDrop"] and not host["CapAdd"]  # every capability dropped, none added
    assert not set(info["EffectiveCaps"] or [])
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 1024
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in host["Tmpfs"]
    # The environment came from an env file: in the container, on no command line, and nothing of ours.
    assert "TOKEN=value-not-on-a-command-line" in info["Config"]["Env"]
    assert not any("value-not-on-a-command-line" in arg for arg in info["Config"]["CreateCommand"])
    assert not any("WML_SERVER_SECRET" in e for e in info["Config"]["Env"])
    await backend.cleanup(ref)
    await backend.cleanup("job-2")
    assert await _container_ids(backend) == []


def test_run_arguments_never_pull_and_carry_limits_and_ulimits(make_run) -> None:
    run: JobRun = make_run(args=["--flag"], labels={"team": "a"})
    args = run_args(
        run,
        name="wml-x-job",
        instance="x",
        env_file="/jobs/j/worker.env",
        inputs="/jobs/j/inputs",
        outputs="/jobs/j/outputs",
        user="1000:1000",
        ulimits=["nofile=1024:1024"],
        network="none",
    )

    assert args[:3] == ["run", "--detach", "--pull=never"]
    assert "--network=none" in args
    assert f"/jobs/j/inputs:{INPUTS_MOUNT}:ro" in args
    for flag, value in [("--cpus", "1"), ("--memory", str(run.resources.memory)), ("--user", "1000:1000")]:
        assert args[args.index(flag) + 1] == value
    assert args[args.index("--ulimit") + 1] == "nofile=1024:1024"
    assert args[args.index("--env-file") + 1] == "/jobs/j/worker.env"
    assert "--env" not in args  # no value of the worker's environment on the command line
    assert "team=a" in args
    assert args[args.index("--entrypoint") + 1] == json.dumps(list(run.command))
    assert args[-2:] == [run.image, "--flag"]


def test_the_registry_builds_the_container_backend_from_its_url(storage, tmp_path) -> None:
    url = "container://podman?conf=/etc/wml/containers.conf&ulimit=nofile=512:512&user=1000"
    backend = create_workflow_backend(url, storage=storage, work_dir=tmp_path)

    assert isinstance(backend, ContainerWorkflowBackend)
    assert backend.name == "container"
    docker = create_workflow_backend(
        "container://docker?host=unix:///x.sock", storage=storage, work_dir=tmp_path
    )
    assert isinstance(docker, ContainerWorkflowBackend)


@pytest.mark.parametrize(
    "url",
    [
        "container://",
        "container://docker?conf=/etc/wml/containers.conf",
        "container://lxc",
        "container://podman/x",
        "container://podman?a=b",
    ],
)
def test_invalid_container_urls_are_refused(storage, tmp_path, url) -> None:
    with pytest.raises(WorkflowConfigurationError, match="invalid container workflow URL"):
        create_workflow_backend(url, storage=storage, work_dir=tmp_path)


def test_the_demo_falls_back_to_docker_when_podman_is_missing(
    docker_host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a docker CLI on the PATH, talking to podman's Docker-compatible service (same image store).
    only_docker = tmp_path / "bin"
    only_docker.mkdir()
    docker = shutil.which("docker")
    assert docker is not None  # scripts/podman-setup installs it when missing
    (only_docker / "docker").symlink_to(docker)
    monkeypatch.setenv("PATH", str(only_docker))
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    assert pick_workflow("auto")[0] == "container://docker"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")  # docker without an engine
    assert pick_workflow("auto")[0] == "local://"


async def test_a_cancel_during_stage_in_ends_the_run_before_any_container_exists(
    container_work_dir: Path, storage, make_run, updates_of, upload
) -> None:
    data = await upload("consumers/c1/files/slow", b"slow bytes", "data", InputKind.FILE, "data")
    backend = make_container_backend(container_work_dir, StalledStorage(storage))
    await backend.start()
    try:
        updates = updates_of(backend)
        ref = await backend.submit(make_run(inputs=(data,)))
        await asyncio.sleep(0.2)  # stage-in is now waiting on the storage
        await backend.cancel(ref)
        final = await updates.terminal(ref, timeout=30)

        assert final.phase == RunPhase.CANCELED
        assert updates.phases(ref) == [RunPhase.INITIALIZING, RunPhase.CANCELED]
        assert await _container_ids(backend) == []  # the worker was never created
        await backend.cleanup(ref)
        assert not (container_work_dir / ref).exists()
    finally:
        await backend.close()


PLACED = """
{
  echo "outputs at $WML_OUTPUTS_DIR"
  cat /data/in.txt
  ls /opt/maps
  ls /app
  (echo replaced > /data/in.txt) 2>/dev/null && echo "wrote the input"
  true
} > "$WML_OUTPUT_RESULT"
"""


@pytest.mark.parametrize("sidecar", [False, True], ids=["in-process", "side-car-image"])
async def test_inputs_and_outputs_are_mounted_at_the_absolute_paths_the_asset_chose(
    container_work_dir: Path, storage, make_run, updates_of, upload, read_object, sidecar: bool
) -> None:
    data, maps = await placed_inputs(upload)
    backend = make_container_backend(container_work_dir, storage, sidecar=sidecar)
    await backend.start()
    run = make_run(
        command=["/bin/sh", "-c", PLACED],
        inputs=(replace(data, worker_path="/data/in.txt"), replace(maps, worker_path="/opt/maps")),
        output_dir="/results",
    )
    try:
        ref = await backend.submit(run)
        final = await updates_of(backend).terminal(ref, timeout=30)
    finally:
        await backend.close()

    assert (final.phase, final.exit_code) == (RunPhase.SUCCEEDED, 0), final
    assert (await read_object(final.outputs[0].key)).decode().splitlines() == [
        "outputs at /results",
        "input text",
        "town01.xodr",
        "entrypoint.sh",  # a file placed beside the image's own leaves them in place
    ]
    await backend.cleanup(ref)
