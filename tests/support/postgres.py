"""A throwaway PostgreSQL server on loopback for the test session, and a fresh database per test.

Debian's ``initdb``/``pg_ctl`` (from the ``postgresql`` package that ``scripts/system-deps`` installs)
create a cluster under a temporary directory, owned by the ``postgres`` user when we run as root
(PostgreSQL refuses to run as root). Durability is switched off: it is thrown away anyway. The
schema is migrated once into a template database; each test gets ``CREATE DATABASE ... TEMPLATE``,
which copies it in a fraction of a second, and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from core.store.engine import migrate

TEMPLATE = "wml_template"
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found: run scripts/system-deps "
    "(it installs Debian's postgresql package), or `make test`, which runs it"
)


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    raise RuntimeError(MISSING)


def _version(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (IndexError, ValueError):
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    port: int
    root: Path

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, *, empty: bool = False) -> str:
        """A database of the migrated schema (a copy of the template), or ``empty``: no table at all."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.url("postgres", "postgresql"))
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {"template0" if empty else TEMPLATE}')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.url("postgres", "postgresql"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class _Cluster:
    bin_dir: Path
    root: Path
    port: int

    def run(self, *argv: str) -> None:
        done = subprocess.run(
            _as_owner([str(self.bin_dir / argv[0]), *argv[1:]]), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        data = self.root / "data"
        self.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-k {self.root} -h 127.0.0.1 -p {self.port} -F -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB"
        )
        self.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def postgres_server() -> Iterator[PostgresServer]:
    """The session's server (see the fixture in tests/conftest.py)."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="wml-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = _Cluster(bin_dir, root, _free_port())
    try:
        cluster.start()
        server = PostgresServer(port=cluster.port, root=root)
        # The fixture may be set up from inside a running event loop: prepare in a thread of its own.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _prepare_template(server)).result()
        yield server
    finally:
        with contextlib.suppress(RuntimeError):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _prepare_template(server: PostgresServer) -> None:
    conn = await asyncpg.connect(server.url("postgres", "postgresql"))
    try:
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await conn.close()
    await migrate(server.url(TEMPLATE))
