"""On S3, a Kubernetes job's side-cars get no storage credentials at all: the service mints presigned URLs
for the job's own objects (GET for its inputs, PUT for its declared outputs) and the side-cars stage
through those. Real S3 protocol (moto's server), the fake API server, and the fake kubelet running the
side-car's staging code in-process as ``wml sidecar`` does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from backends.storage.s3.backend import S3StorageBackend
from backends.workflow.base import InputKind, RunPhase, StagedInput, StagedOutput
from tests.support.kube_backend import fake_kube
from tests.support.s3 import CREDENTIALS, S3Server

SHOW = (
    'cat "$WML_INPUT_DATA" > "$WML_OUTPUT_RESULT"; '
    'mkdir -p "$WML_OUTPUTS_DIR/tree"; echo b > "$WML_OUTPUTS_DIR/tree/b"'
)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_side_cars_stage_through_the_jobs_own_presigned_urls_and_hold_no_storage_settings(
    tmp_path: Path, s3: S3Server, make_run
) -> None:
    storage = S3StorageBackend.from_url(s3.url(), credentials=CREDENTIALS)
    payload = b"input through a presigned GET\n"
    await storage.put("consumers/c1/files/in-1", _chunks(payload))
    data = StagedInput(
        "data",
        InputKind.FILE,
        "data.txt",
        "consumers/c1/files/in-1",
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )
    outputs = (
        StagedOutput("result", "result.txt", True, "consumers/c1/files/out-1"),
        StagedOutput("tree", "tree", True, "consumers/c1/files/out-2"),
    )
    run = make_run(inputs=(data,), outputs=outputs, command=["/bin/sh", "-c", SHOW])
    try:
        async with fake_kube(tmp_path, s3.url(), run_pods=True) as kube:
            # The side-cars could reach the storage with these: they must not get them.
            backend = kube.backend(storage, storage_env={"WML_S3_SECRET_ACCESS_KEY": "bucket-wide-secret"})
            await backend.start()
            try:
                stream = backend.updates()
                await backend.submit(run)
                async with asyncio.timeout(20):
                    while (final := await anext(stream)).phase not in (
                        RunPhase.SUCCEEDED,
                        RunPhase.FAILED,
                        RunPhase.ERROR,
                    ):
                        pass
                [secret] = kube.api.state.created("secrets")
                [job] = kube.api.state.created("jobs")
            finally:
                await backend.close()

        assert final.phase == RunPhase.SUCCEEDED, final
        by_key = {o.key: o for o in final.outputs}
        result = b"".join([c async for c in storage.get("consumers/c1/files/out-1")])
        assert result == payload and by_key["consumers/c1/files/out-1"].size == len(payload)
        tree = b"".join([c async for c in storage.get("consumers/c1/files/out-2")])
        assert by_key["consumers/c1/files/out-2"].size == len(tree) > 0  # the directory, as a tar

        data_of = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        data_of.update(secret.get("stringData", {}))
        assert not {"WML_STORAGE", "WML_S3_ACCESS_KEY_ID", "WML_S3_SECRET_ACCESS_KEY"} & set(data_of)
        assert "bucket-wide-secret" not in json.dumps(secret)
        stage_in = json.loads(data_of["stage-in.json"])
        stage_out = json.loads(data_of["stage-out.json"])
        assert set(stage_in["urls"]) == {"consumers/c1/files/in-1"}
        assert set(stage_out["urls"]) == {"consumers/c1/files/out-1", "consumers/c1/files/out-2"}
        assert "X-Amz-Signature" in stage_out["urls"]["consumers/c1/files/out-1"]
        pod = job["spec"]["template"]["spec"]
        for sidecar in (pod["initContainers"][0], pod["containers"][0]):
            assert "envFrom" not in sidecar
            names = {e["name"] for e in sidecar["env"]}
            assert not {n for n in names if n.startswith(("WML_STORAGE", "WML_S3", "AWS_"))}, names
    finally:
        await storage.close()
