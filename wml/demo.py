"""``wml demo``: the whole consumer flow on a throw-away embedded server, printing every step.

Starts the embedded default (SQLite, local disk, local processes) on a free loopback port, plays the
provider's EDC connector (provision request, callback, details pull) to obtain a consumer token the way a
real consumer does, uploads an input, runs the dummy job, follows it live over the
jobEvents and jobLogs subscriptions (no polling), and downloads and prints
the result. Exits non-zero if any step fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from core.settings import Settings
from wml.client.api import ApiError, Client
from wml.client.connector import NEWEST, ConnectorEmulator, running_connector
from wml.logs import configure_logging
from wml.server import embedded_server
from wml.watch import describe, follow_job

DEMO_ASSET = "dummy-job"
DEMO_IMAGE = "localhost/wml/dummy-job:1"  # the asset's image, as scripts/podman-setup builds it


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def pick_workflow(choice: str) -> tuple[str, str]:
    """The backend the demo runs on: containers of the asset's image when podman (else docker) works here
    and has the dummy-job image (``scripts/podman-setup`` builds it), otherwise local processes."""
    if choice == "local":
        return "local://", "local processes"
    for engine in ("podman", "docker"):
        if _has_demo_image(engine):
            return f"container://{engine}", f"{engine} containers of {DEMO_IMAGE}"
    if choice == "container":
        raise ApiError(f"podman or docker with the image {DEMO_IMAGE} is needed (run scripts/podman-setup)")
    return "local://", "local processes (no podman or docker with the dummy-job image here)"


def _has_demo_image(engine: str) -> bool:
    """Whether ``engine``'s CLI is installed, reaches its engine, and that engine has the demo image."""
    executable = shutil.which(engine)
    if executable is None:
        return False
    try:
        found = subprocess.run(
            [executable, "image", "inspect", DEMO_IMAGE], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


async def run_demo(
    settings: Settings,
    *,
    data_dir: Path | None,
    sleep: int,
    dialect: str = NEWEST,
    verbose: bool = False,
    workflow: str = "auto",
) -> int:
    if not verbose:
        configure_logging("WARNING", settings.log_format)  # the steps are the demo's output
    with tempfile.TemporaryDirectory(prefix="wml-demo-") as tmp:
        root = data_dir or Path(tmp)
        try:
            backend_url, backend_text = pick_workflow(workflow)
        except ApiError as e:
            print(f"demo failed: {e}", flush=True)
            return 1
        demo_settings = settings.model_copy(
            update={
                "data_dir": root,
                "host": "127.0.0.1",
                "port": 0,
                "public_url": None,
                "database_url": None,
                "storage": None,
                "workflow": backend_url,
                "tick_interval": 0.2,
            }
        )
        try:
            return await _demo(demo_settings, root, sleep, dialect, backend_text)
        except (ApiError, OSError, TimeoutError) as e:
            print(f"demo failed: {e}", flush=True)
            return 1


async def _demo(settings: Settings, root: Path, sleep: int, dialect: str, backend: str) -> int:
    step(f"data directory {root} (SQLite, local disk); jobs run as {backend}")
    async with running_connector() as edc:
        edc_settings = settings.edc.model_copy(
            update={
                "api_key": SecretStr(edc.api_key),
                "provision_secret": SecretStr(edc.provision_secret),
                "callback_origins": edc.callback_base,
            }
        )
        settings = settings.model_copy(update={"edc": edc_settings})
        async with embedded_server(settings) as server:
            step(f"server listening at {server.url}/graphql")
            token = await _provision(edc, server.url, dialect)
            return await _consume(server.url, token, root, sleep)


async def _provision(edc: ConnectorEmulator, url: str, dialect: str) -> str:
    """Play the provider's connector: provision, take the callback, pull the details."""
    transfer = f"demo-transfer-{int(time.time())}"
    body = edc.request_body(DEMO_ASSET, transfer, kind="provision", dialect=dialect)
    resp = await edc.post(edc.endpoint(url, DEMO_ASSET, dialect), body)
    if resp.status_code != 200:
        raise ApiError(f"provision request answered {resp.status_code}: {resp.text[:200]}")
    step(f"connector ({dialect} dialect) asked to provision {DEMO_ASSET!r} for transfer {transfer}: 200")
    callback = await edc.wait_for_callback(transfer)
    step(f"connector received the callback; data address {callback.address['baseUrl']}")
    details = await edc.pull_details(callback)
    step(f"consumer pulled the details: API {details['graphqlUrl']}, grant expires {details['expiresAt']}")
    token: str = details["token"]
    return token


async def _consume(url: str, token: str, root: Path, sleep: int) -> int:
    async with Client(url, token) as client:
        me = await client.query("{ me { id name } assets { id name } }")
        step(f"authenticated as {me['me']['name']!r}; granted assets: {[a['id'] for a in me['assets']]}")

        source = root / "demo-input.txt"
        source.write_text("hello from the workflow middle-layer demo\nsecond line\n", encoding="utf-8")
        uploaded = await client.upload(source)
        step(f"uploaded {uploaded['name']} ({uploaded['size']} bytes, sha256 {uploaded['sha256'][:12]}...)")

        job = await client.create_job(DEMO_ASSET, {"data": uploaded["id"]}, {"SLEEPTIME": sleep})
        step(f"created job {job['id']} ({job['state']}); following it live over the subscriptions:")
        async with asyncio.timeout(sleep + 120):
            await follow_job(
                client, job["id"], lambda e: step(describe(e)), lambda line: print(f"    | {line}")
            )
        final = await client.job(job["id"])
        if final is None:
            raise ApiError(f"job {job['id']} disappeared")
        if final["state"] != "COMPLETE":
            step(f"job ended {final['state']} ({final['reason']}): {final['message']}")
            return 1
        result = next(o for o in final["outputs"] if o["name"] == "result.txt")
        content = await client.download(result["downloadUrl"])
        if hashlib.sha256(content).hexdigest() != result["sha256"]:
            step("downloaded result does not match its sha256")
            return 1
        step(f"downloaded {result['name']} ({len(content)} bytes, sha256 verified):")
        for line in content.decode(errors="replace").splitlines():
            print(f"    {line}")
    step("demo finished: the job is COMPLETE and its result downloaded")
    return 0
