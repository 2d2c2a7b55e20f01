"""The container backend's orphan sweep, on real containers: run by every reconcile (start-up and periodic),
it removes this instance's containers that no live job owns, and never another instance's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backends.workflow.base import RunPhase
from backends.workflow.host.container.backend import ContainerWorkflowBackend
from backends.workflow.host.container.cli import INSTANCE_LABEL, MANAGED_BY
from tests.backends.workflow.conftest import PODMAN, make_container_backend, make_docker_backend

IMAGE = "localhost/wml/dummy-job:1"


async def _leftover(name: str, instance: str) -> None:
    """A running container labelled as ours, as a crashed or forgetful service would leave it."""
    await PODMAN.run(
        "run", "--detach", "--pull=never", "--name", name, "--label", MANAGED_BY,
        "--label", f"{INSTANCE_LABEL}={instance}", "--entrypoint", "sleep", IMAGE, "60",
    )  # fmt: skip


async def _exists(name: str) -> bool:
    return await PODMAN.inspect(name) is not None


@pytest.fixture(params=["podman", "docker"])
def make_backend(request: pytest.FixtureRequest, storage):
    if request.param == "docker":
        host = request.getfixturevalue("docker_host")
        return lambda work_dir: make_docker_backend(work_dir, storage, host)
    return lambda work_dir: make_container_backend(work_dir, storage)


async def test_a_leftover_container_of_this_instance_is_removed_and_another_instance_kept(
    container_work_dir: Path, make_backend, storage
) -> None:
    backend: ContainerWorkflowBackend = make_backend(container_work_dir)
    other = make_container_backend(container_work_dir.parent / "other", storage)
    mine, theirs = f"wml-{backend.instance}-job-gone", f"wml-{other.instance}-job-theirs"
    await _leftover(mine, backend.instance)
    await _leftover(theirs, other.instance)
    await backend.start()
    try:
        assert await backend.reconcile([]) == []  # what the supervisor does at start-up with no live job

        assert not await _exists(mine)
        assert await _exists(theirs)
    finally:
        await backend.close()
        await PODMAN.remove(theirs)


async def test_the_container_of_a_finished_job_is_swept_and_its_log_kept(
    container_work_dir: Path, make_backend, make_run, updates_of
) -> None:
    backend: ContainerWorkflowBackend = make_backend(container_work_dir)
    await backend.start()
    try:
        done = await backend.submit(make_run(env={"SLEEPTIME": "1"}))
        final = await updates_of(backend).terminal(done)
        running = await backend.submit(make_run(env={"SLEEPTIME": "30"}))
        await updates_of(backend).next_for(running, {RunPhase.RUNNING})

        await backend.reconcile([running])  # the finished job is no longer live for the supervisor

        assert not await _exists(f"wml-{backend.instance}-{done}")
        assert await _exists(f"wml-{backend.instance}-{running}")
        assert final.log_tail is not None
        assert [line async for line in backend.logs(done, follow=False)][-1:] == final.log_tail.splitlines()[
            -1:
        ]
        await backend.cancel(running)
        await updates_of(backend).terminal(running)
    finally:
        await backend.close()


async def test_a_running_container_whose_job_directory_is_gone_is_swept_after_a_restart(
    container_work_dir: Path, make_backend, make_run, updates_of
) -> None:
    first: ContainerWorkflowBackend = make_backend(container_work_dir)
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "30"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()  # the service stops; then its job directory is lost
    shutil.rmtree(container_work_dir / ref)

    second: ContainerWorkflowBackend = make_backend(container_work_dir)
    await second.start()
    try:
        [update] = await second.reconcile([ref])

        assert (update.phase, update.reason) == (RunPhase.ERROR, "BACKEND_LOST")
        assert not await _exists(f"wml-{second.instance}-{ref}")
    finally:
        await second.close()
