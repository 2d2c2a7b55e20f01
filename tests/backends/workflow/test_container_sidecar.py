"""The container backend in side-car-image mode beyond the shared contract: the same failure mapping as
in-process staging, and a restart during the worker step. Real podman runs of the side-car image that
scripts/sidecar-image builds (run by `make test` through scripts/podman-setup).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.workflow.base import InputKind, RunPhase
from backends.workflow.host.container.backend import ContainerWorkflowBackend
from backends.workflow.host.container.sidecar import SidecarStorage
from backends.workflow.registry import WorkflowConfigurationError, create_workflow_backend
from core.settings import Settings
from tests.backends.workflow.conftest import PODMAN, make_container_backend


async def _container_names(backend: ContainerWorkflowBackend) -> list[str]:
    _, out, _ = await PODMAN.run(
        "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=wml/instance={backend.instance}"
    )
    return out.split()


@pytest.mark.parametrize("sidecar", [False, True], ids=["in-process", "sidecar-image"])
async def test_a_missing_input_object_fails_staging_alike_in_both_modes(
    container_work_dir: Path, storage, make_run, updates_of, upload, sidecar: bool
) -> None:
    data = await upload("consumers/c1/files/in-1", b"payload", "data", InputKind.FILE, "data")
    gone = type(data)(data.slot, data.kind, data.path, "consumers/c1/files/never-uploaded", 7, data.sha256)
    backend = make_container_backend(container_work_dir, storage, sidecar=sidecar)
    await backend.start()
    try:
        ref = await backend.submit(make_run(inputs=(data, gone)))
        updates = updates_of(backend)
        final = await updates.terminal(ref, timeout=30)
        assert (final.phase, final.reason) == (RunPhase.ERROR, "INPUT_STAGING_FAILED")
        assert final.message is not None
        assert "never-uploaded" in final.message
        assert RunPhase.RUNNING not in updates.phases(ref)
        assert await _container_names(backend) == []  # neither a worker nor a side-car container is left
    finally:
        await backend.close()


async def test_a_restart_during_the_worker_step_reattaches_and_stages_out_with_the_side_car(
    container_work_dir: Path, storage, make_run, updates_of, upload, read_object
) -> None:
    data = await upload("consumers/c1/files/in-2", b"payload", "data", InputKind.FILE, "data.txt")
    first = make_container_backend(container_work_dir, storage, sidecar=True)
    await first.start()
    ref = await first.submit(make_run(inputs=(data,), env={"SLEEPTIME": "2", "FAIL": "0"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING}, timeout=30)
    assert (container_work_dir / ref / "inputs" / "data.txt").read_bytes() == b"payload"
    await first.close()  # the server stops during the worker step; the worker keeps running

    second = make_container_backend(container_work_dir, storage, sidecar=True)
    await second.start()
    try:
        [now] = await second.reconcile([ref])
        assert now.phase == RunPhase.RUNNING
        final = await updates_of(second).terminal(ref, timeout=30)
        assert (final.phase, final.exit_code) == (RunPhase.SUCCEEDED, 0)
        [output] = final.outputs
        assert b"dummy-job: SLEEPTIME=2" in await read_object(output.key)
        assert final.log is not None
        assert b"progress 2/2" in await read_object(final.log.key)
        assert (container_work_dir / ref / "sidecar" / "output-manifest.json").exists()  # by the side-car

        await second.cleanup(ref)
        assert await _container_names(second) == []
    finally:
        await second.close()


def test_the_registry_gives_the_side_car_the_service_storage_settings(storage, tmp_path: Path) -> None:
    url = "container://podman?sidecar_image=localhost/wml/sidecar:0.1.0"
    with pytest.raises(WorkflowConfigurationError, match="storage settings"):
        create_workflow_backend(url, storage=storage, work_dir=tmp_path)  # no settings to take them from

    settings = Settings(storage="file:///srv/files", s3_access_key_id="id", s3_secret_access_key="s3cr3t")
    backend = create_workflow_backend(url, storage=storage, work_dir=tmp_path, settings=settings)
    sidecar = SidecarStorage.from_settings(settings)

    assert isinstance(backend, ContainerWorkflowBackend)
    assert sidecar is not None
    assert sidecar.cli_env() == {
        "WML_STORAGE": "file:///srv/files",
        "WML_S3_ACCESS_KEY_ID": "id",
        "WML_S3_SECRET_ACCESS_KEY": "s3cr3t",
    }
    assert "s3cr3t" not in repr(sidecar)
    assert sidecar.root == "/srv/files"
    assert {"WML_STORAGE", "WML_S3_SECRET_ACCESS_KEY"} <= set(sidecar.names())  # passed by name only
