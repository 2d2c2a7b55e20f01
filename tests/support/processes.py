"""``wml serve`` as a real child process, as an operator runs it (several of them: replicas)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.catalog import standard_assets, write_catalog

ADMIN = "process-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, **settings: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "WML_DATA_DIR": str(data_dir),
            "WML_PORT": str(self.port),
            "WML_CATALOG_DIR": str(write_catalog(data_dir / "catalog", standard_assets())),
            "WML_ADMIN_TOKEN": ADMIN,
            "WML_TICK_INTERVAL": "0.1",
            "WML_RECONCILE_INTERVAL": "1",
            **{f"WML_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "wml.cli", *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return done.stdout.decode()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wml.cli", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 90  # start-up on a loaded 2-core machine took over 30 s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    def gql(self, token: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """A GraphQL request with ``token``; its data (no errors allowed)."""
        resp = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def token_from(cli_output: str) -> str:
    """The token ``wml consumers create`` printed."""
    return next(line.split(": ", 1)[1].strip() for line in cli_output.splitlines() if "token" in line)


def serve_once(data_dir: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`wml serve` with a bare environment plus ``variables`` (full names), for settings it must refuse at
    start: its exit code and output."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("wml")), "serve"],
        env={"PATH": "/usr/bin:/bin", "WML_DATA_DIR": str(data_dir), **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )
