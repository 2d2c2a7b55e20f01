"""``env`` inputs on Kubernetes: their values reach the worker's environment through the job's Secret (the
Pod cannot change a container's environment), checked at submit like stage-in checks them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backends.storage.file import FileStorageBackend
from backends.workflow.base import InputKind, RunPhase
from tests.support.kube_backend import fake_kube


async def test_env_input_values_reach_the_worker_environment(
    tmp_path: Path, storage: FileStorageBackend, make_run, upload, read_object
) -> None:
    dotenv = b"# an example\nSOURCE=s3://in/data\nexport DESTINATION='out dir'\n"
    # The worker reads nothing but its environment.
    show = 'echo "SOURCE=$SOURCE DESTINATION=$DESTINATION INPUTS=$WML_INPUTS_DIR" > "$WML_OUTPUT_RESULT"'
    config = await upload("consumers/c1/files/env-1", dotenv, "config", InputKind.ENV, "config.env")
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}", run_pods=True) as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run(inputs=(config,), command=["/bin/sh", "-c", show]))
            async with asyncio.timeout(15):
                while (final := await anext(stream)).phase not in (
                    RunPhase.SUCCEEDED,
                    RunPhase.FAILED,
                    RunPhase.ERROR,
                ):
                    pass

            assert final.phase == RunPhase.SUCCEEDED, final
            result = await read_object(final.outputs[0].key)
            assert result.startswith(b"SOURCE=s3://in/data DESTINATION=out dir INPUTS=")
            assert result.endswith(b"/inputs\n")  # the fake kubelet's /wml/inputs, not the file's /etc
            [job] = kube.api.state.created("jobs")
            worker = job["spec"]["template"]["spec"]["initContainers"][1]
            from_secret = {e["name"] for e in worker["env"] if "valueFrom" in e}
            assert from_secret == {"SOURCE", "DESTINATION"}
            assert {e["value"] for e in worker["env"] if e["name"] == "WML_INPUTS_DIR"} == {"/wml/inputs"}
            assert ref.startswith("wml-jobs/")
        finally:
            await backend.close()


async def test_an_invalid_env_input_fails_staging_without_creating_anything(
    tmp_path: Path, storage: FileStorageBackend, make_run, upload
) -> None:
    config = await upload(
        "consumers/c1/files/env-2", b"GOOD=1\nnot a dotenv line\n", "config", InputKind.ENV, "c.env"
    )
    corrupt = await upload("consumers/c1/files/env-3", b"SOURCE=1\n", "config", InputKind.ENV, "c.env")
    corrupt = type(corrupt)(corrupt.slot, corrupt.kind, corrupt.path, corrupt.key, corrupt.size, "0" * 64)
    # A key the slot does not accept (the contract's own, here) is refused before anything is created.
    refused = await upload(
        "consumers/c1/files/env-4", b"SOURCE=1\nWML_INPUTS_DIR=/etc\n", "config", InputKind.ENV, "c.env"
    )
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            stream = backend.updates()
            for staged, expected in ((config, "line 2"), (corrupt, "sha256"), (refused, "WML_INPUTS_DIR")):
                ref = await backend.submit(make_run(inputs=(staged,)))
                assert (await anext(stream)).phase == RunPhase.INITIALIZING
                final = await anext(stream)
                assert (final.ref, final.phase, final.reason) == (ref, RunPhase.ERROR, "INPUT_STAGING_FAILED")
                assert final.message is not None and expected in final.message
                assert "GOOD" not in final.message  # never the file's content
                assert await backend.reconcile([ref]) == [final]
            assert kube.api.requests == [c for c in kube.api.requests if c.method in ("GET", "WATCH")]
            assert kube.leftovers() == []
        finally:
            await backend.close()
