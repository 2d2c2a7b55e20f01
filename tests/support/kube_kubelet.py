"""A fake kubelet that really runs each Pod of the fake cluster: the workflow contract suite runs real jobs.

For every Pod the controller creates it does what a node would, in order, reporting each container's state
through :class:`tests.support.kube_cluster.FakeCluster` (so the backend sees it on its watch):

- volumes are host directories (emptyDirs; the Secret's items written as files), mounted (``subPath``
  too) by rewriting the container paths in the command, args and environment;
- ``stage-in`` / ``stage-out`` (the side-car image) run the side-car's staging code in-process through the
  presigned URLs of their manifest, or else against the storage named by ``WML_STORAGE`` in their
  environment (resolved from the job's Secret), with the
  side-car program's exit codes, error text as the last log line and the output manifest printed last and
  written to the termination message file, as ``wml sidecar`` does;
- each container gets its own termination message file (a host file standing for its
  ``terminationMessagePath``, created empty before it starts); when it ends, the file's last 4096 bytes
  become ``state.terminated.message``, or, if it is empty and the container failed under
  ``FallbackToLogsOnError``, the last 80 lines (2048 bytes at most) of its log, as a kubelet does;
- ``worker`` runs the container's command as a host process (images map container paths to host
  directories: the dummy job's ``/app`` is ``dummy-job/``); its output is the container log;
- ``activeDeadlineSeconds`` is enforced (SIGTERM, then SIGKILL), a deleted Pod's processes are killed,
  and an unknown image leaves its container waiting in ``ErrImagePull``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from backends.storage.base import StorageError
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.main import (
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_OUTPUT_MISSING,
    EXIT_STORAGE,
    storage_for,
)
from sidecar.manifest import StageInManifest, StageOutManifest
from sidecar.staging import RetryPolicy, stage_in, stage_out
from sidecar.termination import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    MAX_TERMINATION_MESSAGE_BYTES,
    TerminationMessage,
    publish_output_manifest,
)
from tests.support.kube_cluster import (
    STAGE_IN,
    STAGE_OUT,
    WORKER,
    FakeCluster,
    running,
    status,
    terminated,
    waiting,
)
from tests.support.kube_state import Obj

SIDECAR_IMAGE = "localhost/wml/sidecar:0.1.0"
# The ENTRYPOINT of images whose container gives no command (as dummy-job/Containerfile declares it).
ENTRYPOINTS = {"localhost/wml/dummy-job:1": ["sh", "/app/entrypoint.sh"]}
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # what FallbackToLogsOnError takes from the log


class ProcessKubelet:
    def __init__(self, cluster: FakeCluster, work_dir: Path, images: dict[str, dict[str, Path]]) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.work_dir = work_dir
        self.images = images  # image -> {container path prefix: host directory}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        cluster.on_pod.append(self._start)
        cluster.on_pod_deleted.append(self._stop)

    def _start(self, namespace: str, name: str) -> None:
        self._tasks[(namespace, name)] = asyncio.get_running_loop().create_task(self._run(namespace, name))

    def _stop(self, namespace: str, name: str) -> None:
        task = self._tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one Pod ---------------------------------------------------------------------------------------

    async def _run(self, namespace: str, name: str) -> None:
        pod = self.state.get("pods", namespace, name)
        assert pod is not None
        spec, ref = pod["spec"], f"{namespace}/{pod['metadata']['ownerReferences'][0]['name']}"
        secret = await self._secret(namespace, spec)
        volumes = self._volumes(namespace, name, spec, secret)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(spec.get("activeDeadlineSeconds") or 3600)
        containers = {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}
        missing = [
            c for c in containers.values() if c["image"] != SIDECAR_IMAGE and c["image"] not in self.images
        ]
        if missing:
            pull = waiting("ErrImagePull", f"pull access denied for {missing[0]['image']}")
            states = [pull if c["name"] == missing[0]["name"] else waiting() for c in containers.values()]
            await self.cluster.set_status(ref, status("Pending", *states))
            return
        done: list[Obj] = []
        for step in (STAGE_IN, WORKER, STAGE_OUT):
            later = [waiting() for _ in range(2 - len(done))]
            phase = "Running" if step == STAGE_OUT else "Pending"
            states = [*done, running(), *later]  # stage-in, worker, stage-out
            await self.cluster.set_status(ref, status(phase, states[0], states[1], states[2]))
            mounts = {
                m["mountPath"]: _sub_path(volumes[m["name"]], m) for m in containers[step]["volumeMounts"]
            }
            message_file = self._termination_file(namespace, name, containers[step], mounts)
            env = _environment(containers[step], secret)
            remaining = deadline - loop.time()
            if step == WORKER:
                code, timed_out = await self._worker(
                    namespace, name, containers[step], mounts, env, remaining
                )
            else:
                code = await self._sidecar(namespace, name, step, mounts, env, message_file)
                timed_out = False
            message = self._termination_message(namespace, name, containers[step], code, message_file)
            done.append(terminated(code, message=message))
            if timed_out:
                text = "Pod was active on the node longer than the specified deadline"
                rest = [waiting() for _ in range(3 - len(done))]
                new = status("Failed", *done, *rest, reason="DeadlineExceeded", message=text)
                await self.cluster.set_status(ref, new)
                return
            if code != 0:
                rest = [waiting() for _ in range(3 - len(done))]
                await self.cluster.set_status(ref, status("Failed", *done, *rest))
                return
        await self.cluster.set_status(ref, status("Succeeded", *done))

    async def _secret(self, namespace: str, spec: Obj) -> dict[str, str]:
        """The decoded data of the Pod's Secret (created just after the Job: wait for it, like a kubelet)."""
        name = next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
        for _ in range(500):
            secret = self.state.get("secrets", namespace, name)
            if secret is not None:
                return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            await asyncio.sleep(0.01)
        raise AssertionError(f"the Secret {name} never came")

    def _volumes(self, namespace: str, name: str, spec: Obj, secret: dict[str, str]) -> dict[str, Path]:
        root = self.work_dir / namespace / name
        volumes = {}
        for volume in spec["volumes"]:
            path = root / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                for item in volume["secret"].get("items", []):
                    (path / item["path"]).write_text(secret[item["key"]])
            volumes[volume["name"]] = path
        return volumes

    def _termination_file(self, namespace: str, pod: str, container: Obj, mounts: dict[str, Path]) -> Path:
        """A new empty host file for the container's ``terminationMessagePath``, mounted there."""
        path: Path = self.work_dir / namespace / pod / "termination" / str(container["name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        mounts[container.get("terminationMessagePath") or str(DEFAULT_TERMINATION_MESSAGE_PATH)] = path
        return path

    def _termination_message(
        self, namespace: str, pod: str, container: Obj, code: int, message_file: Path
    ) -> str | None:
        """What a kubelet reports as the ended container's ``state.terminated.message``."""
        data = message_file.read_bytes()[-MAX_TERMINATION_MESSAGE_BYTES:]
        fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not data and code != 0 and fallback:
            log = self.state.logs.get((namespace, pod, container["name"]))
            lines = bytes(log.data).splitlines(keepends=True)[-FALLBACK_LOG_LINES:] if log else []
            data = b"".join(lines)[-FALLBACK_LOG_BYTES:]
        return data.decode(errors="replace") or None

    # -- containers ------------------------------------------------------------------------------------

    async def _sidecar(
        self,
        namespace: str,
        pod: str,
        step: str,
        mounts: dict[str, Path],
        env: dict[str, str],
        message_file: Path,
    ) -> int:
        def say(text: str) -> None:
            self.state.append_log(namespace, pod, step, text + "\n")

        manifest_dir = mounts["/wml/manifest"]
        manifest: StageInManifest | StageOutManifest
        if step == STAGE_IN:
            manifest = StageInManifest.model_validate_json((manifest_dir / "stage-in.json").read_text())
        else:
            manifest = StageOutManifest.model_validate_json((manifest_dir / "stage-out.json").read_text())
        # As `wml sidecar` does: the manifest's presigned URLs, else the storage WML_STORAGE names.
        storage = storage_for(manifest, env.get("WML_STORAGE"))
        try:
            if isinstance(manifest, StageInManifest):
                await stage_in(storage, manifest, mounts["/wml/inputs"], retry=RetryPolicy(attempts=1))
                say('{"event": "inputs_staged"}')
                return EXIT_OK
            out = manifest
            out.result_path = str(_rewrite(out.result_path, mounts))
            result = await stage_out(storage, out, mounts["/wml/outputs"], retry=RetryPolicy(attempts=1))
            publish_output_manifest(result, TerminationMessage(message_file), say)
            required = {o.name for o in out.outputs if o.required}
            missing = [m for m in result.missing if m in required]
            return EXIT_OUTPUT_MISSING if missing else EXIT_OK
        except InputStagingError as e:
            say(f'{{"event": "sidecar_failed", "error": "{e}"}}')
            return EXIT_INPUT
        except (OutputUploadError, StorageError) as e:
            say(f'{{"event": "sidecar_failed", "error": "{e}"}}')
            return EXIT_STORAGE if isinstance(e, StorageError) else EXIT_FAILURE
        finally:
            await storage.close()

    async def _worker(
        self,
        namespace: str,
        pod: str,
        container: Obj,
        mounts: dict[str, Path],
        env: dict[str, str],
        remaining: float,
    ) -> tuple[int, bool]:
        paths = {**mounts, **self.images[container["image"]]}
        command = container.get("command") or ENTRYPOINTS.get(container["image"], [])  # else the image's
        argv = [str(_rewrite(a, paths)) for a in [*command, *container.get("args", [])]]
        env = {k: str(_rewrite(v, paths)) for k, v in env.items()}
        env["PATH"] = "/usr/bin:/bin"
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        pump = asyncio.create_task(self._pump(process, namespace, pod))
        timed_out = False
        try:
            try:
                async with asyncio.timeout(max(0.0, remaining)):  # not wait_for: see core/waiting.py
                    await asyncio.shield(process.wait())
            except TimeoutError:
                timed_out = True
                _signal(process.pid, signal.SIGTERM)
                try:
                    async with asyncio.timeout(2):
                        await asyncio.shield(process.wait())
                except TimeoutError:
                    _signal(process.pid, signal.SIGKILL)
                    await process.wait()
            await pump
        finally:
            if process.returncode is None:  # the Pod was deleted: kill it, as a kubelet would
                _signal(process.pid, signal.SIGKILL)
                await process.wait()
            pump.cancel()
        code = process.returncode or 0
        return (128 - code if code < 0 else code), timed_out

    async def _pump(self, process: asyncio.subprocess.Process, namespace: str, pod: str) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.state.append_log(namespace, pod, WORKER, line.decode(errors="replace"))


def _environment(container: Obj, secret: dict[str, str]) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        raise AssertionError(f"envFrom is not served by the fake kubelet: {source}")
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def _sub_path(volume: Path, mount: Obj) -> Path:
    """The host path of a mount: its volume, or its ``subPath`` of it (made a directory when missing, as a
    kubelet does)."""
    if not mount.get("subPath"):
        return volume
    path: Path = volume / mount["subPath"]
    if not path.exists():
        path.mkdir(parents=True)
    return path


def _rewrite(value: str, paths: dict[str, Path]) -> Any:
    for prefix in sorted(paths, key=len, reverse=True):
        if value == prefix or value.startswith(prefix + "/"):
            return str(paths[prefix]) + value[len(prefix) :]
    return value


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
