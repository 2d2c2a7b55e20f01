"""A Docker-compatible engine for the docker CLI: podman's API service on a private unix socket.

No Docker engine runs on the test machines; ``podman system service`` serves the Docker API from the same
podman storage (so the images scripts/podman-setup built are there), and the real ``docker`` CLI
(installed by scripts/podman-setup when missing) talks to it through ``DOCKER_HOST``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONTAINERS_CONF = "/etc/wml/containers.conf"  # written by scripts/podman-setup


def docker_cli() -> str:
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("no docker CLI on PATH: run scripts/podman-setup (it installs one)")
    return found


@contextmanager
def podman_docker_service(directory: Path) -> Iterator[str]:
    """Run ``podman system service`` on ``directory/docker.sock`` and yield its ``DOCKER_HOST`` URL."""
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "docker.sock"
    host = f"unix://{socket_path}"
    env = {**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF}
    log = (directory / "service.log").open("wb")
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", host],
        env=env,
        cwd=directory,  # conmon leaves files (an ``oom`` after an OOM kill) in its working directory
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_serving(docker_cli(), host, proc)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_serving(docker: str, host: str, proc: subprocess.Popen[bytes]) -> None:
    env = {**os.environ, "DOCKER_HOST": host}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"podman system service exited with {proc.returncode}")
        done = subprocess.run([docker, "version"], env=env, capture_output=True, timeout=10, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("podman system service did not answer the docker CLI within 30 s")
